"""`streamconv view`: a live browser page of every stream's layer outputs.

hub (what is known of each stream), render (colour maps, JPEG), page (one open page),
server (starlette: page, assets, WebSocket), role (the subscriber process).
"""
