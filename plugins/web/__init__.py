"""Built-in plugin: the LoRA page (``/lora/REF``) and its API (``/api/lora/REF``), and the kept
sample images (``/api/images/<sha256>.webp``). The search page itself belongs to the search plugin."""

from __future__ import annotations

from registry import hookimpl


@hookimpl
def register_routes(web_app, app):
    from plugins.web.routes import add_routes

    add_routes(web_app, app)
