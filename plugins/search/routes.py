"""HTTP routes of the search plugin: ``/api/search`` (GET, or POST with images), ``/api/similar/{ref}``,
``/api/retrievers`` and the search page at ``/``. One warm ``SearchEngine`` per server: models and
matrices stay loaded. Results scoring 0 or less point away from the query: they carry ``weak: true``
and the page folds them away instead of listing them as matches."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from registry.api import (
    MAX_UPLOAD_BYTES,
    SEARCH_ENGINE,
    BadRequest,
    blocking,
    check_params,
    json_error,
    param_bool,
    param_float,
    param_int,
    respond,
)
from signer.query_encoder import ImageTooLarge
from signer.search import SearchEngine, SearchRequest

ENGINE = SEARCH_ENGINE
PAGE = Path(__file__).with_name("page.html")
MAX_IMAGES = 8
MAX_IMAGE_BYTES = 16 * 1024 * 1024


SEARCH_PARAMS = (
    "q",
    "k",
    "profile",
    "no_filter",
    "max_strength",
    "min_consistency",
    "base_model",
    "nsfw",
    "include_archived",
    "retriever",
)


def _request_from(q, images: list[str]) -> SearchRequest:
    check_params(q, SEARCH_PARAMS)
    k = param_int(q, "k", 10, 1, 1000)
    return SearchRequest(
        text=q.get("q") or None,
        images=images,
        k=k,
        profile=q.get("profile") or None,
        apply_filters=not bool(param_bool(q, "no_filter")),
        max_strength=param_float(q, "max_strength"),
        min_consistency=param_float(q, "min_consistency"),
        base_model=q.get("base_model") or None,
        nsfw=param_bool(q, "nsfw"),
        include_archived=bool(param_bool(q, "include_archived")),
        retriever=q.get("retriever") or "carlos",
    )


def _search(engine: SearchEngine, req: SearchRequest) -> dict:
    """The engine's answer, plus each result's first kept LoRA-branch image and its ``weak`` mark."""
    from registry.images import first_thumbnails

    doc = engine.search(req)
    profile_id = engine.profile(doc["profile"]).id if doc.get("profile") else None
    with engine.app.db.read() as session:
        thumbs = first_thumbnails(session, [r["version_id"] for r in doc["results"]], profile_id)
    for result in doc["results"]:
        result["weak"] = result["score"] <= 0
        result["thumbnail"] = thumbs.get(result["version_id"])
    doc["weak"] = sum(1 for r in doc["results"] if r["weak"])
    return doc


async def search_get(request: web.Request) -> web.Response:
    req = _request_from(request.query, [])
    return respond(await blocking(request, _search, request.app[ENGINE], req))


async def search_post(request: web.Request) -> web.Response:
    """multipart/form-data: the same fields as the GET parameters, plus one or more ``image`` files."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "POST /api/search takes multipart/form-data with 'image' files (or use GET for text)"
        )
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_UPLOAD_BYTES, actual_size=request.content_length
        )
    fields: dict[str, str] = dict(request.query)
    tmp = Path(tempfile.mkdtemp(prefix="carlos-upload-"))
    try:
        try:
            images = await _save_parts(await request.multipart(), tmp, fields)
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # a broken multipart body
            raise BadRequest(f"malformed multipart body: {exc}") from None
        req = _request_from(fields, images)
        try:
            return respond(await blocking(request, _search, request.app[ENGINE], req))
        except ImageTooLarge as exc:
            return json_error(413, str(exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _save_parts(reader, tmp: Path, fields: dict) -> list[str]:
    """Form fields into ``fields``; image parts into numbered files (never the client's file names)."""
    images: list[str] = []
    while (part := await reader.next()) is not None:
        if part.name != "image":
            if part.name:
                fields[part.name] = (await part.text())[:2000]
            continue
        if len(images) >= MAX_IMAGES:
            raise BadRequest(f"at most {MAX_IMAGES} images per query")
        path = tmp / f"image-{len(images) + 1}"  # errors name it; the folder stays private
        size = 0
        with path.open("wb") as fh:
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise BadRequest(
                        f"image too large (limit {MAX_IMAGE_BYTES // (1024 * 1024)} MiB)"
                    )
                fh.write(chunk)
        images.append(str(path))
    return images


async def similar(request: web.Request) -> web.Response:
    check_params(request.query, ("k", "profile"))
    k = param_int(request.query, "k", 10, 1, 1000)
    doc = await blocking(
        request,
        request.app[ENGINE].similar,
        request.match_info["ref"],
        k,
        request.query.get("profile") or None,
    )
    return respond(doc)


async def retrievers(request: web.Request) -> web.Response:
    from signer.search import get_retrievers

    check_params(request.query, ())
    return respond(
        {
            "retrievers": [
                {"name": r.name, "description": getattr(r, "description", "")}
                for r in get_retrievers().values()
            ]
        }
    )


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")


def add_routes(web_app: web.Application, app) -> None:
    web_app[ENGINE] = SearchEngine(app, warm=True)
    web_app.router.add_get("/", page)
    web_app.router.add_get("/api/search", search_get)
    web_app.router.add_post("/api/search", search_post)
    web_app.router.add_get("/api/similar/{ref}", similar)
    web_app.router.add_get("/api/retrievers", retrievers)
