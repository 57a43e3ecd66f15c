"""The view's web side (starlette): the page, its assets, /ws, /healthz and /status.

Every asset ships in the package (importlib.resources): no CDN, the page works offline. Each
WebSocket gets the newest state and images on every tick; the send is awaited, so a slow page
holds at most one message in flight and simply skips frames, and a closed page costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from streamconv.client.view.hub import Hub
from streamconv.client.view.page import Encoder, Key, Page
from streamconv.client.view.render import hex_table

log = logging.getLogger(__name__)

ASSETS = {"view.js": "text/javascript", "view.css": "text/css"}
PROTOCOL_VERSION = 1


def _asset(name: str) -> str:
    return (resources.files("streamconv.client.view") / "static" / name).read_text("utf-8")


@dataclass
class Served:
    """What the server shares with the view role: the hub, the encoder and the page count."""

    hub: Hub
    encoder: Encoder
    endpoint: str
    fps: float
    history_s: float
    pages: int = 0
    pages_total: int = 0
    # JPEG encoding runs off the event loop (OpenCV releases the GIL while it encodes).
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
    )


def image_message(key: Key, version: int, data: bytes) -> bytes:
    """uint32 LE length + JSON {stream, layer, image, mime} + the JPEG bytes."""
    meta = json.dumps({"stream": key[0], "layer": key[1], "image": version,
                       "mime": "image/jpeg"}).encode()  # fmt: skip
    return struct.pack("<I", len(meta)) + meta + data


# Over 50 lines on purpose: the page's whole route table (page, assets, WebSocket with its
# loop) in one place, as starlette apps are read.
def app(served: Served) -> Starlette:
    index = _asset("index.html")
    assets = {name: _asset(name) for name in ASSETS}
    hello = json.dumps({
        "type": "hello",
        "version": PROTOCOL_VERSION,
        "colormaps": {name: hex_table(name) for name in ("diverging", "sequential")},
        "history_s": served.history_s,
        "options": {"scaling": "frame", "plot": "mean"},
    })  # fmt: skip

    async def page(request: Request) -> Response:
        return HTMLResponse(index)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(assets[name], media_type=ASSETS[name])

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def status(request: Request) -> Response:
        hub = served.hub
        with hub.lock:
            streams = {name: sorted(sv.layers) for name, sv in hub.streams.items()}
            body = {"worker": "connected" if hub.connected else "disconnected",
                    "endpoint": served.endpoint, "pages": served.pages,
                    "pages_total": served.pages_total, "streams": streams,
                    "received": hub.received, "evicted_streams": hub.evicted,
                    "encoded": served.encoder.encoded}  # fmt: skip
        return JSONResponse(body)

    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        served.pages += 1
        served.pages_total += 1
        view = Page(served.hub)
        reader = asyncio.create_task(_read(ws, view))
        loop = asyncio.get_running_loop()
        try:
            await ws.send_text(hello)
            while not reader.done():
                state, due = view.tick(served.endpoint)
                await ws.send_text(json.dumps(state))
                for key, shown in due:
                    jpeg = await loop.run_in_executor(
                        served.executor, served.encoder.jpeg, key, view.scaling, shown
                    )
                    await ws.send_bytes(image_message(key, shown.version, jpeg))
                    view.mark_sent(key, shown.version)
                served.encoder.forget(set(view.cursor))  # the layers still there
                await asyncio.wait({reader}, timeout=1.0 / served.fps)
        except (WebSocketDisconnect, OSError, RuntimeError) as e:
            log.debug("page closed: %r", e)
        finally:
            reader.cancel()
            served.pages -= 1

    routes = [
        Route("/", page),
        Route("/static/{name}", asset),
        Route("/healthz", healthz),
        Route("/status", status),
        WebSocketRoute("/ws", socket),
    ]
    return Starlette(routes=routes)


async def _read(ws: WebSocket, view: Page) -> None:
    """Apply the page's option messages until it goes away."""
    while True:
        text = await ws.receive_text()
        try:
            message: Any = json.loads(text)
        except ValueError:
            continue
        if isinstance(message, dict):
            view.options(message)
