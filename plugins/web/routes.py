"""HTTP routes of the web plugin: the LoRA page, its API and the kept sample images."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from registry.api import APP, SEARCH_ENGINE, BadRequest, blocking, respond
from registry.images import DIGEST, thumb_relative_path

PAGE = Path(__file__).with_name("lora.html")
CHECKERS = web.AppKey("carlos_web_claim_checkers", dict)
IMMUTABLE = "public, max-age=31536000, immutable"


def _ref(request: web.Request) -> str:
    """The REF from the path; a Civitai URL's own query (``?modelVersionId=…``) belongs to it."""
    ref = request.match_info["ref"]
    if request.query_string:
        if not ref.lower().startswith(("http://", "https://", "civitai.com/")):
            raise BadRequest(
                f"unknown parameter {next(iter(request.query))}; this route takes none"
            )
        ref += "?" + request.query_string
    return ref


def _engine(request: web.Request):
    from signer.search import SearchEngine

    if SEARCH_ENGINE not in request.app:  # the search plugin is not loaded: this page keeps its own
        request.app[SEARCH_ENGINE] = SearchEngine(request.app[APP], warm=True)
    return request.app[SEARCH_ENGINE]


async def lora_api(request: web.Request) -> web.Response:
    from plugins.web.lora import lora_page

    app = request.app[APP]
    return respond(
        await blocking(
            request, lora_page, app, _ref(request), _engine(request), request.app[CHECKERS]
        )
    )


async def lora_html(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")


async def image(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["digest"]
    if not DIGEST.match(digest):
        raise web.HTTPNotFound(reason="no such image")
    path = request.app[APP].settings.artifacts.path(thumb_relative_path(digest))
    if not path.is_file():
        raise web.HTTPNotFound(reason="no such image")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "image/webp",
            "Cache-Control": IMMUTABLE,
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(web_app: web.Application, app) -> None:
    web_app[CHECKERS] = {}
    web_app.router.add_get("/lora/{ref:.+}", lora_html)
    web_app.router.add_get("/api/lora/{ref:.+}", lora_api)
    web_app.router.add_get("/api/images/{digest}.webp", image)
