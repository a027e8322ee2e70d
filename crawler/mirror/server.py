"""The Civitai-compatible server over a mirror directory, its routes as module-level handlers.

Each handler finds the mirror it serves in ``request.app[MIRROR]`` (``MirrorConfig``: the catalog,
the token and the URL settings), so one process can serve several mirrors.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from aiohttp import web

from crawler.mirror.catalog import (
    FILE_URL_SECONDS,
    MAX_LIMIT,
    PAGE_CAP_MESSAGE,
    MirrorCatalog,
    _as_list,
)

CATALOG = web.AppKey("catalog", MirrorCatalog)


def _json_error(status: int, error: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=status)


def _origin(request: web.Request) -> str:
    """The address the client connected to; the ``Host`` header is the client's to choose."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return "http://127.0.0.1"
    host, port = sockname[0], sockname[1]
    return f"{request.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _file_url_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"carlos-reg mirror file URL", hashlib.sha256).digest()


def sign_file_url(key: bytes, file_id: int, expires: int) -> str:
    return hmac.new(key, f"{file_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def _safe_filename(name: str, fallback: str) -> str:
    """A file name for ``Content-Disposition``: the last path part, printable, no quotes or dots-only."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable() and c not in '"\\;').strip().lstrip(".")
    return base[:200] or fallback


def _with_urls(version: dict, origin: str, *, explicit_primary: bool = False) -> dict:
    url = f"{origin}/api/download/models/{version['id']}"
    files = []
    for f in _as_list(version.get("files")):
        if not isinstance(f, dict):
            continue
        f = {**f, "downloadUrl": url if f.get("primary") else f"{url}?fileId={f.get('id')}"}
        if explicit_primary:
            f["primary"] = bool(f.get("primary"))
        files.append(f)
    out = {**version, "files": files}
    if files:
        out["downloadUrl"] = url
    return out


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class MirrorConfig:
    """What the handlers of one mirror app serve: its catalog, token (``key`` signs file URLs)
    and the URLs its answers point to."""

    catalog: MirrorCatalog
    token: str | None = None
    key: bytes | None = None
    files_base_url: str | None = None
    public_url: str | None = None


MIRROR = web.AppKey("mirror", MirrorConfig)


def _mirror(request: web.Request) -> MirrorConfig:
    return request.app[MIRROR]


def _origin_of(request: web.Request) -> str:
    """The origin answers' URLs start with (the catalog is reloaded first if it was replaced)."""
    mirror = _mirror(request)
    mirror.catalog.maybe_reload()
    return mirror.public_url.rstrip("/") if mirror.public_url else _origin(request)


def _has_token(request: web.Request) -> bool:
    token = _mirror(request).token or ""
    bearer = request.headers.get("Authorization", "")
    return secrets.compare_digest(
        bearer.encode(), f"Bearer {token}".encode()
    ) or secrets.compare_digest(request.query.get("token", "").encode(), token.encode())


def _int_arg(request: web.Request, name: str) -> int | None:
    try:
        value = int(request.match_info[name])
    except ValueError:
        return None
    return value if 0 < value <= 2**31 - 1 else None


@dataclass(frozen=True)
class _Listing:
    """The query of ``/api/v1/models``, checked."""

    limit: int
    query: str
    start: int
    types: frozenset[str]
    bases: frozenset[str]
    nsfw: bool
    archived: bool


def _listing_query(q) -> _Listing | web.Response:
    """The listing's parameters, or the error Civitai answers for them."""
    try:
        limit = int(q.get("limit", str(MAX_LIMIT)))
    except ValueError:
        return _json_error(400, "limit must be an integer")
    if not 0 <= limit <= MAX_LIMIT:
        return _json_error(400, f"limit must be between 0 and {MAX_LIMIT}")
    limit = limit or MAX_LIMIT
    query = q.get("query", "").casefold()
    if "page" in q:
        if query:
            return _json_error(
                400, "Cannot use page param with query search. Use cursor-based pagination."
            )
        try:
            if int(q["page"]) * limit > 1000:
                return _json_error(429, PAGE_CAP_MESSAGE)
        except ValueError:
            return _json_error(400, "page must be an integer")
    try:
        start = int(q["cursor"]) if q.get("cursor") else 0
    except ValueError:
        return _json_error(400, "Invalid cursor")
    return _Listing(
        limit,
        query,
        start,
        frozenset(q.getall("types", [])),
        frozenset(q.getall("baseModels", [])),
        _truthy(q.get("nsfw")),
        _truthy(q.get("archived")),
    )


def _listed_versions(model: dict, listing: _Listing) -> list[dict] | None:
    """The versions of ``model`` that the listing shows, or None when it leaves the model out."""
    if listing.types and model.get("type") not in listing.types:
        return None
    if model.get("mode") == "Archived" and not listing.archived:
        return None
    level = model.get("nsfwLevel")
    if not listing.nsfw and (not level & 1 if type(level) is int else bool(model.get("nsfw"))):
        return None  # like Civitai: without nsfw=true only models with PG content
    if listing.query and listing.query not in str(model.get("name", "")).casefold():
        return None
    versions = [v for v in _as_list(model.get("modelVersions")) if isinstance(v, dict)]
    if listing.bases:
        versions = [v for v in versions if v.get("baseModel") in listing.bases]
        if not versions:
            return None
    return versions


async def list_models(request: web.Request) -> web.Response:
    origin, catalog = _origin_of(request), _mirror(request).catalog
    listing = _listing_query(request.query)
    if isinstance(listing, web.Response):
        return listing
    items, next_id = [], None
    for model_id in catalog.ids[bisect.bisect_left(catalog.ids, listing.start) :]:
        versions = _listed_versions(catalog.models[model_id], listing)
        if versions is None:
            continue
        if len(items) == listing.limit:
            next_id = model_id
            break
        items.append(
            {**catalog.models[model_id], "modelVersions": [_with_urls(v, origin) for v in versions]}
        )
    metadata = {}
    if next_id is not None:
        metadata = {
            "nextCursor": str(next_id),
            "nextPage": origin + str(request.rel_url.update_query(cursor=str(next_id))),
        }
    return web.json_response({"items": items, "metadata": metadata})


async def get_model(request: web.Request) -> web.Response:
    origin, catalog = _origin_of(request), _mirror(request).catalog
    model_id = _int_arg(request, "id")
    if model_id is None:
        return _json_error(400, "Invalid id")
    model = catalog.models.get(model_id)
    if model is None:
        return _json_error(404, f"No model with id {model_id}")
    versions = [
        _with_urls(v, origin) for v in _as_list(model.get("modelVersions")) if isinstance(v, dict)
    ]
    return web.json_response({**model, "modelVersions": versions})


def _version_doc(catalog: MirrorCatalog, version_id: int, origin: str) -> dict | None:
    found = catalog.versions.get(version_id)
    if found is None:
        return None
    model_id, version = found
    model = catalog.models[model_id]
    summary = {k: model.get(k) for k in ("name", "type", "nsfw", "poi")}
    if model.get("mode"):
        summary["mode"] = model["mode"]
    return {
        **_with_urls(version, origin, explicit_primary=True),
        "modelId": model_id,
        "model": summary,
    }


async def get_version(request: web.Request) -> web.Response:
    origin = _origin_of(request)
    version_id = _int_arg(request, "id")
    if version_id is None:
        return _json_error(400, "Invalid id")
    doc = _version_doc(_mirror(request).catalog, version_id, origin)
    return web.json_response(doc) if doc is not None else _json_error(404, "Model not found")


async def by_hash(request: web.Request) -> web.Response:
    origin, catalog = _origin_of(request), _mirror(request).catalog
    version_id = catalog.hashes.get(request.match_info["hash"].strip().upper())
    doc = _version_doc(catalog, version_id, origin) if version_id is not None else None
    return web.json_response(doc) if doc is not None else _json_error(404, "Model not found")


def _download_refusal(model: dict, version: dict) -> web.Response | None:
    """What Civitai answers instead of a file for an archived, taken-down or early-access version."""
    if model.get("mode") == "Archived":
        return _json_error(410, "Model archived, not available for download")
    if model.get("mode") == "TakenDown":
        return _json_error(404, "File not found")
    if version.get("availability") == "EarlyAccess":  # as Civitai answers a key without access
        return _json_error(
            403,
            "Early Access",
            deadline=version.get("earlyAccessEndsAt"),
            message="This asset is in Early Access. You can use Buzz access it now!",
        )
    return None


async def download(request: web.Request) -> web.Response:
    origin, mirror = _origin_of(request), _mirror(request)
    if mirror.token is not None and not _has_token(request):
        return _json_error(
            401,
            "Unauthorized",
            message="The creator of this asset requires you to be logged in to download it",
        )
    version_id = _int_arg(request, "id")
    found = mirror.catalog.versions.get(version_id) if version_id is not None else None
    if found is None:
        return _json_error(404, "File not found")
    model_id, version = found
    refusal = _download_refusal(mirror.catalog.models[model_id], version)
    if refusal is not None:
        return refusal
    files = [f for f in _as_list(version.get("files")) if isinstance(f, dict)]
    if "fileId" in request.query:
        chosen = [f for f in files if str(f.get("id")) == request.query["fileId"]]
    else:
        chosen = [f for f in files if f.get("primary")] or files[:1]
    path = (
        mirror.catalog.file_path(chosen[0]["id"])
        if chosen and type(chosen[0].get("id")) is int
        else None
    )
    if path is None:
        return _json_error(404, "File not found")
    expires = int(time.time()) + FILE_URL_SECONDS
    signature = (
        sign_file_url(mirror.key, chosen[0]["id"], expires)
        if mirror.key is not None
        else secrets.token_hex(32)
    )
    location = (
        f"{(mirror.files_base_url or origin).rstrip('/')}/mirror-files/{chosen[0]['id']}"
        f"?X-Amz-Expires={expires}&X-Amz-Signature={signature}"
    )
    raise web.HTTPTemporaryRedirect(location, headers={"Cache-Control": "no-store, max-age=0"})


def _signed(request: web.Request, file_id: int) -> bool:
    try:
        expires = int(request.query.get("X-Amz-Expires", ""))
    except ValueError:
        return False
    given = request.query.get("X-Amz-Signature", "").encode()
    expected = sign_file_url(_mirror(request).key, file_id, expires).encode()
    return expires >= time.time() and hmac.compare_digest(given, expected)


async def serve_file(request: web.Request) -> web.StreamResponse:
    mirror = _mirror(request)
    mirror.catalog.maybe_reload()
    try:
        file_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    if mirror.key is not None and not (_has_token(request) or _signed(request, file_id)):
        return _json_error(
            401, "Unauthorized", message="This file URL is not signed, or it has expired"
        )
    path = mirror.catalog.file_path(file_id)
    if path is None:
        raise web.HTTPNotFound()
    name = str((mirror.catalog.files.get(file_id) or (0, {}))[1].get("name") or file_id)
    shown = _safe_filename(name, str(file_id))  # a header, not a path
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{shown}"',
        },
    )


def make_app(
    root: str | os.PathLike,
    *,
    token: str | None = None,
    files_base_url: str | None = None,
    public_url: str | None = None,
    middlewares: Iterable[Callable] = (),
) -> web.Application:
    catalog = MirrorCatalog(root)
    app = web.Application(middlewares=list(middlewares))
    app[CATALOG] = catalog
    app[MIRROR] = MirrorConfig(
        catalog,
        token,
        _file_url_key(token) if token is not None else None,
        files_base_url,
        public_url,
    )
    app.add_routes(
        [
            web.get("/api/v1/models", list_models),
            web.get("/api/v1/models/{id}", get_model),
            web.get("/api/v1/model-versions/by-hash/{hash}", by_hash),
            web.get("/api/v1/model-versions/{id}", get_version),
            web.get("/api/download/models/{id}", download),
            web.get("/mirror-files/{id}", serve_file),
        ]
    )
    return app
