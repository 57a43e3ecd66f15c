"""Validation errors in the user's words: which key of which section or layer, what is wrong,
what is allowed, and where the value came from (the file, a preset, a variable, a flag).

pydantic's own messages ("Extra inputs are not permitted", a regular expression) name its
internals; a user reads sections, keys and layer names, so each fault is rewritten from its
type and the model it happened in.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from streamconv.config.layers import LAYER_NAME_PATTERN
from streamconv.config.roles import NAME_PATTERN, URL_PATTERN, Settings, SocketSettings

Loc = tuple[str | int, ...]

_PATTERNS = {
    URL_PATTERN: "is not an endpoint: write tcp://HOST:PORT, ipc://PATH or inproc://NAME",
    LAYER_NAME_PATTERN: "is not a layer name: 1 to 64 letters, digits, _ or -",
    NAME_PATTERN: "is not a stream name: 1 to 64 letters, digits, _, . or -",
}


def describe(
    err: ValidationError,
    origin: str,
    raw: Mapping[str, Any],
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> str:
    """One line per fault under a heading naming the file or preset (`origin`)."""
    lines = [f"invalid settings in {origin}:"]
    for e in err.errors():
        loc: Loc = tuple(e["loc"])
        line = _fault(e, loc, raw)
        source = _source(loc, origins or {}, e["type"] == "extra_forbidden")
        lines.append(f"  {line}{source}")
    return "\n".join(lines)


def _fault(e: ErrorDetails, loc: Loc, raw: Mapping[str, Any]) -> str:
    kind, ctx = e["type"], e.get("ctx", {})
    if kind == "extra_forbidden" and loc:
        parent = _models_at(loc[:-1])
        allowed = ", ".join(n for m in parent for n in m.model_fields)
        if not loc[:-1]:
            what = (
                f"section [{loc[-1]}]"
                if isinstance(raw.get(str(loc[-1])), Mapping)
                else (f"top-level key {loc[-1]!r}")
            )
            return f"unknown {what}; allowed: {allowed}"
        return f"unknown key {loc[-1]!r} in {_where(loc[:-1], raw)}; allowed: {allowed}"
    if kind == "missing" and loc:
        if loc == ("layers",):
            return "no [[layers]]: a config needs at least one (`streamconv presets default`)"
        return f"missing key {loc[-1]!r} in {_where(loc[:-1], raw)} (it is required)"
    where = _where(loc, raw)
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERNS:
        return f"{where}: {e['input']!r} {_PATTERNS[ctx['pattern']]}"
    if kind == "union_tag_invalid":
        tags = str(ctx.get("expected_tags", "")).replace("'", "")
        key = str(ctx.get("discriminator")).strip("'")
        return f"{where}: unknown {key} {ctx.get('tag')!r}; allowed: {tags}"
    if kind == "union_tag_not_found":
        return f"{where}: needs a {str(ctx.get('discriminator')).strip(chr(39))!r} key"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}"


def _where(loc: Loc, raw: Mapping[str, Any]) -> str:
    """('worker', 'chunk') -> "[worker] chunk"; ('layers', 1, 'conv', 'dilation') ->
    "[[layers]] 'opl' dilation" (by its name, as the user wrote it)."""
    if not loc:
        return "the config"
    head, keys = f"[{loc[0]}]", [str(p) for p in loc[1:]]
    if loc[0] == "layers" and len(loc) > 1 and isinstance(loc[1], int):
        layers = raw.get("layers")
        entry = layers[loc[1]] if isinstance(layers, list) and loc[1] < len(layers) else None
        name = entry.get("name") if isinstance(entry, Mapping) else None
        head = f"[[layers]] {name!r}" if isinstance(name, str) else f"[[layers]] #{loc[1] + 1}"
        keys = [str(p) for p in _field_parts(loc)[2:]]
    elif keys and keys[-1] == "endpoint" and _is_socket(loc[:-1]):
        keys = keys[:-1]  # `input = "..."` is written without "endpoint"
    return " ".join([head, ".".join(keys)]) if keys else head


def _field_parts(loc: Loc) -> list[str | int]:
    """`loc` without the union tags pydantic puts in it ('conv' in layers.0.conv.tau)."""
    parts: list[str | int] = []
    models: list[Any] = [Settings]
    for part in loc:
        nxt, tag = _step(models, part)
        if not tag:
            parts.append(part)
        models = nxt
    return parts


def _is_socket(loc: Loc) -> bool:
    return any(isinstance(m, type) and issubclass(m, SocketSettings) for m in _models_at(loc))


def _models_at(loc: Loc) -> list[type[BaseModel]]:
    models: list[Any] = [Settings]
    for part in loc:
        models, _ = _step(models, part)
    return [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]


def _step(candidates: Sequence[Any], part: str | int) -> tuple[list[Any], bool]:
    """The types one loc part further down, and whether the part was a union tag."""
    for tp in candidates:
        if isinstance(part, int) and get_origin(tp) in (list, tuple):
            return _unwrap(get_args(tp)[0]), False
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            return _unwrap(tp.model_fields[part].annotation), False
    tagged = [tp for tp in candidates if _has_tag(tp, part)]
    return tagged, bool(tagged)


def _has_tag(tp: Any, tag: str | int) -> bool:
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return False
    return any(
        get_origin(f.annotation) is Literal and tag in get_args(f.annotation)
        for f in tp.model_fields.values()
    )


def _unwrap(tp: Any) -> list[Any]:
    """The types a field may hold, through Annotated, Optional and unions."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(tp) if arg is not type(None) for t in _unwrap(arg)]
    return [tp]


def _source(loc: Loc, origins: Mapping[tuple[str, ...], str], owned: bool) -> str:
    """' (from STREAMCONV_WORKER__CHUNK)' when the faulty value came from outside the file."""
    keys = tuple(str(p) for p in loc)
    exact = [o for path, o in origins.items() if keys[: len(path)] == path]
    if exact:
        return f" (from {exact[0]})"
    below = sorted({o for path, o in origins.items() if path[: len(keys)] == keys})
    if not below:
        return ""
    return f" (from {' and '.join(below)})" if owned else f" (see {' and '.join(below)})"
