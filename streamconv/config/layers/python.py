"""Layer type 'python': a `streamconv.layers.Layer` subclass of your own, named by
`class = "package.module:Name"` (or `"file.py:Name"`, relative to the config file) and built
with `kwargs`. It mixes freely with the built-in types; its output channel count is found by
running it once on a small blank chunk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from streamconv.config.layers.base import LayerConfig
from streamconv.usercode import check_spec

if TYPE_CHECKING:
    from streamconv.layers import Layer


class PythonLayer(LayerConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["python"]
    class_: str = Field(alias="class", description="'package.module:Name' or 'file.py:Name'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    root: Path | None = Field(
        default=None, description="folder searched for the module too (the config file's)"
    )

    @field_validator("class_")
    @classmethod
    def _spec(cls, value: str) -> str:
        return check_spec(value)

    def build(self, channels: int) -> tuple[Layer, int]:
        from streamconv.usercode import instantiate, load_object, output_channels

        setting = f"layer {self.name!r} class"
        cls = load_object(self.class_, self.root, setting)
        layer = instantiate(cls, self.kwargs, setting).double()  # as every build: float64
        return layer, output_channels(layer, channels, f"layer {self.name!r}")
