"""A Civitai-compatible API served from a directory (offline mirrors, shared mirrors, tests, demo).

Directory format (documented in ``docs/mirror.md``)::

    DIR/mirror.json         {"format": "carlos-reg-mirror", "version": 1, ...}  (required)
    DIR/models/<id>.json    one model exactly as /api/v1/models/{id} returns it (modelVersions, files)
    DIR/files/<fileId>      the bytes of file <fileId> (optional; absent files answer 404)

Routes: ``/api/v1/models`` (cursor pagination in id order, repeated ``types``/``baseModels`` that
also cut ``modelVersions``, ``nsfw``, ``limit`` ≤ 100, ``query`` substring of the name; archived
models only with ``archived=true``; ``page*limit > 1000`` → the page-cap 429),
``/api/v1/models/{id}``, ``/api/v1/model-versions/{id}``, ``/api/v1/model-versions/by-hash/{hash}``
(any hash type), ``/api/download/models/{versionId}[?fileId=]`` → 307 to
``/mirror-files/{fileId}?X-Amz-Expires=…&X-Amz-Signature=…`` (on ``files_base_url`` when given),
which serves the bytes with ``Range`` support. With a token, downloads need ``Authorization:
Bearer TOKEN`` (or ``?token=``, as Civitai also accepts), and so does the file route unless its
URL carries an unexpired HMAC signature made with a key derived from the token (the redirect's
URL; valid for ``FILE_URL_SECONDS``); the API routes stay public, as on Civitai. Every URL in
answers (``downloadUrl``, ``nextPage``, redirects) starts with ``public_url`` when given, else
with the address the client actually connected to: never with the request's ``Host`` header.
Only regular files directly under ``files/`` are served (no symlinks). A running server reloads
the catalog when ``mirror.json`` is replaced (``write_catalog`` replaces it last).

Also here: helpers that write a catalog (``model_entry``, ``version_entry``, ``file_entry``,
``write_catalog``, ``tiny_lora``), ``BackgroundServer`` (serve an app on loopback from a thread),
``serve`` (the blocking ``mirror serve``) and ``export_mirror`` (registry → directory).
"""
from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import shutil
import stat
import struct
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from crawler import stfile
from registry.files import write_file
from registry.states import FileState

log = logging.getLogger("crawler.mirror")
FORMAT = "carlos-reg-mirror"
FORMAT_VERSION = 1
MAX_LIMIT = 100
PAGE_CAP_MESSAGE = "You've requested too many pages, please use cursors instead"
FILE_URL_SECONDS = 3600  # how long a redirect's signed file URL stays valid


class MirrorError(ValueError):
    """A directory that is not a usable mirror."""


# ---------------------------------------------------------------- writing a catalog


def file_entry(file_id: int, data: bytes | None = None, *, name: str | None = None, primary: bool | None = True,
               format: str | None = "SafeTensor", type: str = "Model", sha256: str | None = None,
               size_kb: float | None = None, fp: str | None = "fp16") -> dict:
    """A Civitai file object; hashes come from ``data`` unless ``sha256`` overrides them."""
    digest = (sha256 or (hashlib.sha256(data).hexdigest() if data is not None else None))
    entry: dict[str, Any] = {
        "id": file_id,
        "name": name if name is not None else f"file_{file_id}.safetensors",
        "sizeKB": size_kb if size_kb is not None else (len(data) / 1024 if data is not None else 0.0),
        "type": type,
        "metadata": {k: v for k, v in (("format", format), ("fp", fp), ("size", "full")) if v},
        "pickleScanResult": "Success", "pickleScanMessage": "No Pickle imports",
        "virusScanResult": "Success", "virusScanMessage": None,
        "scannedAt": "2026-01-01T00:00:00.000Z",
        "hashes": {"AutoV2": digest[:10].upper(), "SHA256": digest.upper()} if digest else {},
    }
    if primary:
        entry["primary"] = True  # Civitai omits the key on non-primary files of list answers
    return entry


def version_entry(version_id: int, *, files: list[dict], base_model: str = "SDXL 1.0", name: str | None = None,
                  trained_words: Iterable[str] = (), published_at: str | None = None, index: int = 0,
                  description: str | None = None) -> dict:
    return {
        "id": version_id, "index": index, "name": name if name is not None else f"v{version_id}",
        "description": description,
        "baseModel": base_model, "baseModelType": "Standard", "trainedWords": list(trained_words),
        "publishedAt": published_at or "2026-01-01T00:00:00.000Z", "availability": "Public", "nsfwLevel": 1,
        "stats": {"downloadCount": 0, "thumbsUpCount": 0, "thumbsDownCount": 0},
        "files": files, "images": [],
    }


def model_entry(model_id: int, *, versions: list[dict], name: str | None = None, type: str = "LORA",
                nsfw: bool = False, nsfw_level: int = 1, tags: Iterable[str] = (), creator: str | None = "mirror",
                description: str | None = None, mode: str | None = None) -> dict:
    entry: dict[str, Any] = {
        "id": model_id, "name": name if name is not None else f"Model {model_id}", "description": description,
        "type": type,
        "nsfw": nsfw, "nsfwLevel": nsfw_level, "minor": False, "poi": False, "sfwOnly": False,
        "availability": "Public", "allowNoCredit": True, "allowCommercialUse": "{Image}",
        "allowDerivatives": True, "allowDifferentLicense": False, "supportsGeneration": False,
        "stats": {"downloadCount": 0, "thumbsUpCount": 0, "thumbsDownCount": 0, "commentCount": 0,
                  "tippedAmountCount": 0},
        "tags": list(tags), "modelVersions": versions,
    }
    if creator is not None:
        entry["creator"] = {"username": creator, "image": None}
    if mode:
        entry["mode"] = mode
    return entry


def tiny_lora(seed: int = 0, rank: int = 2, width: int = 32) -> bytes:
    """A small, structurally valid kohya-format SDXL LoRA file (random weights, no model behind it)."""
    rng = random.Random(seed)

    def floats(n: int) -> bytes:
        return struct.pack(f"<{n}f", *(rng.uniform(-0.1, 0.1) for _ in range(n)))

    base = "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q"
    return stfile.build({
        f"{base}.alpha": ("F32", [], struct.pack("<f", float(rank))),
        f"{base}.lora_down.weight": ("F32", [rank, width], floats(rank * width)),
        f"{base}.lora_up.weight": ("F32", [width, rank], floats(width * rank)),
    }, metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(rank)})


def _json_bytes(doc: Any) -> bytes:
    """UTF-8 JSON; a lone surrogate (valid in JSON, not in UTF-8) is written as a ``\\ud800`` escape."""
    try:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, ensure_ascii=True).encode("ascii")


def write_catalog(root: str | os.PathLike, models: Iterable[dict], blobs: dict[int, bytes | os.PathLike] | None = None,
                  *, replace: bool = True) -> Path:
    """Write models (and file bytes by file id) in the mirror format.

    ``replace`` removes model files not in ``models`` (a model deleted upstream). ``mirror.json``
    is written last, so a running server reloads once everything is in place.
    """
    root = Path(root)
    encoded = {int(model["id"]): _json_bytes(model) for model in models}  # all of it, before the first write
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(parents=True, exist_ok=True)
    written = set()
    for model_id, data in encoded.items():
        write_file(root / "models" / f"{model_id}.json", data)
        written.add(f"{model_id}.json")
    if replace:
        for stale in (root / "models").glob("*.json"):
            if stale.name not in written:
                stale.unlink()
    for file_id, blob in (blobs or {}).items():
        target = root / "files" / str(int(file_id))
        if isinstance(blob, (bytes, bytearray)):
            write_file(target, bytes(blob))
        else:
            shutil.copyfile(blob, target)
    _write_manifest(root, len(written) if replace else None)
    return root


def _write_manifest(root: Path, count: int | None, **extra: Any) -> None:
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": datetime.now(timezone.utc).isoformat(),
           "nonce": secrets.token_hex(4), **extra}
    if count is not None:
        doc["models"] = count
    write_file(root / "mirror.json", json.dumps(doc, indent=2).encode())


# ---------------------------------------------------------------- reading a catalog


class MirrorCatalog:
    """The models of a mirror directory, indexed; reloads when ``mirror.json`` is replaced."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._stamp: tuple | None = None
        self.problems: list[str] = []
        self.reload()

    def _manifest_stamp(self) -> tuple:
        try:
            st = (self.root / "mirror.json").stat()
        except FileNotFoundError:
            raise MirrorError(f"{self.root} is not a mirror directory (no mirror.json; see docs/mirror.md)") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        stamp = self._manifest_stamp()
        try:
            manifest = json.loads((self.root / "mirror.json").read_text())
        except (ValueError, OSError) as exc:
            raise MirrorError(f"{self.root / 'mirror.json'} is not readable JSON ({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MirrorError(f"{self.root / 'mirror.json'} does not declare format {FORMAT!r}")
        models: dict[int, dict] = {}
        problems = []
        for path in sorted((self.root / "models").glob("*.json")):
            try:
                doc = json.loads(path.read_bytes())
                model_id = doc["id"]
                if type(model_id) is not int or str(model_id) != path.stem:
                    raise ValueError("its id does not match the file name")
            except (ValueError, KeyError, TypeError, OSError) as exc:
                problems.append(f"{path.name}: skipped ({type(exc).__name__}: {exc})")
                continue
            models[model_id] = doc
        self.models = models
        self.ids = sorted(models)
        self.versions: dict[int, tuple[int, dict]] = {}
        self.files: dict[int, tuple[int, dict]] = {}
        self.hashes: dict[str, int] = {}
        for model_id in self.ids:
            for version in _as_list(models[model_id].get("modelVersions")):
                if not isinstance(version, dict) or type(version.get("id")) is not int:
                    continue
                self.versions[version["id"]] = (model_id, version)
                for f in _as_list(version.get("files")):
                    if isinstance(f, dict) and type(f.get("id")) is int:
                        self.files[f["id"]] = (version["id"], f)
                        for value in (f.get("hashes") or {}).values():
                            if isinstance(value, str):
                                self.hashes.setdefault(value.upper(), version["id"])
        self.problems = problems
        for p in problems:
            log.warning("mirror %s: %s", self.root, p)
        self._stamp = stamp

    def maybe_reload(self) -> None:
        try:
            if self._manifest_stamp() != self._stamp:
                self.reload()
        except MirrorError as exc:  # mid-rewrite or removed: keep serving what we have
            log.warning("%s", exc)

    def file_path(self, file_id: int) -> Path | None:
        """A regular file directly in ``files/``; a symlink (which could point anywhere) is refused."""
        path = self.root / "files" / str(file_id)
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None
        return path if stat.S_ISREG(st.st_mode) else None


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- the server

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


class _PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without query strings (a client may put a token there)."""

    def log(self, request, response, time):
        self.logger.info("%s %s %s %s %.3fs", request.remote, request.method, request.path, response.status, time)


def make_app(root: str | os.PathLike, *, token: str | None = None, files_base_url: str | None = None,
             public_url: str | None = None, middlewares: Iterable[Callable] = ()) -> web.Application:
    catalog = MirrorCatalog(root)
    app = web.Application(middlewares=list(middlewares))
    app[CATALOG] = catalog
    key = _file_url_key(token) if token is not None else None

    def origin_of(request: web.Request) -> str:
        catalog.maybe_reload()
        return public_url.rstrip("/") if public_url else _origin(request)

    def has_token(request: web.Request) -> bool:
        bearer = request.headers.get("Authorization", "")
        return (secrets.compare_digest(bearer.encode(), f"Bearer {token}".encode())
                or secrets.compare_digest(request.query.get("token", "").encode(), token.encode()))

    async def list_models(request: web.Request) -> web.Response:
        origin, q = origin_of(request), request.query
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
                return _json_error(400, "Cannot use page param with query search. Use cursor-based pagination.")
            try:
                if int(q["page"]) * limit > 1000:
                    return _json_error(429, PAGE_CAP_MESSAGE)
            except ValueError:
                return _json_error(400, "page must be an integer")
        try:
            start = int(q["cursor"]) if q.get("cursor") else 0
        except ValueError:
            return _json_error(400, "Invalid cursor")
        types, bases = set(q.getall("types", [])), set(q.getall("baseModels", []))
        nsfw, archived = _truthy(q.get("nsfw")), _truthy(q.get("archived"))
        items, next_id = [], None
        for model_id in catalog.ids[bisect.bisect_left(catalog.ids, start):]:
            model = catalog.models[model_id]
            if types and model.get("type") not in types:
                continue
            if model.get("mode") == "Archived" and not archived:
                continue
            level = model.get("nsfwLevel")
            if not nsfw and (not level & 1 if type(level) is int else bool(model.get("nsfw"))):
                continue  # like Civitai: without nsfw=true only models with PG content
            if query and query not in str(model.get("name", "")).casefold():
                continue
            versions = [v for v in _as_list(model.get("modelVersions")) if isinstance(v, dict)]
            if bases:
                versions = [v for v in versions if v.get("baseModel") in bases]
                if not versions:
                    continue
            if len(items) == limit:
                next_id = model_id
                break
            items.append({**model, "modelVersions": [_with_urls(v, origin) for v in versions]})
        metadata = {}
        if next_id is not None:
            metadata = {"nextCursor": str(next_id),
                        "nextPage": origin + str(request.rel_url.update_query(cursor=str(next_id)))}
        return web.json_response({"items": items, "metadata": metadata})

    def _int_arg(request: web.Request, name: str) -> int | None:
        try:
            value = int(request.match_info[name])
        except ValueError:
            return None
        return value if 0 < value <= 2**31 - 1 else None

    async def get_model(request: web.Request) -> web.Response:
        origin = origin_of(request)
        model_id = _int_arg(request, "id")
        if model_id is None:
            return _json_error(400, "Invalid id")
        model = catalog.models.get(model_id)
        if model is None:
            return _json_error(404, f"No model with id {model_id}")
        versions = [_with_urls(v, origin) for v in _as_list(model.get("modelVersions")) if isinstance(v, dict)]
        return web.json_response({**model, "modelVersions": versions})

    def _version_doc(version_id: int, origin: str) -> dict | None:
        found = catalog.versions.get(version_id)
        if found is None:
            return None
        model_id, version = found
        model = catalog.models[model_id]
        summary = {k: model.get(k) for k in ("name", "type", "nsfw", "poi")}
        if model.get("mode"):
            summary["mode"] = model["mode"]
        return {**_with_urls(version, origin, explicit_primary=True), "modelId": model_id, "model": summary}

    async def get_version(request: web.Request) -> web.Response:
        origin = origin_of(request)
        version_id = _int_arg(request, "id")
        if version_id is None:
            return _json_error(400, "Invalid id")
        doc = _version_doc(version_id, origin)
        return web.json_response(doc) if doc is not None else _json_error(404, "Model not found")

    async def by_hash(request: web.Request) -> web.Response:
        origin = origin_of(request)
        version_id = catalog.hashes.get(request.match_info["hash"].strip().upper())
        doc = _version_doc(version_id, origin) if version_id is not None else None
        return web.json_response(doc) if doc is not None else _json_error(404, "Model not found")

    async def download(request: web.Request) -> web.Response:
        origin = origin_of(request)
        if token is not None and not has_token(request):
            return _json_error(401, "Unauthorized",
                               message="The creator of this asset requires you to be logged in to download it")
        version_id = _int_arg(request, "id")
        found = catalog.versions.get(version_id) if version_id is not None else None
        if found is None:
            return _json_error(404, "File not found")
        model_id, version = found
        if catalog.models[model_id].get("mode") == "Archived":
            return _json_error(410, "Model archived, not available for download")
        if catalog.models[model_id].get("mode") == "TakenDown":
            return _json_error(404, "File not found")
        if version.get("availability") == "EarlyAccess":  # as Civitai answers a key without access
            return _json_error(403, "Early Access", deadline=version.get("earlyAccessEndsAt"),
                               message="This asset is in Early Access. You can use Buzz access it now!")
        files = [f for f in _as_list(version.get("files")) if isinstance(f, dict)]
        if "fileId" in request.query:
            chosen = [f for f in files if str(f.get("id")) == request.query["fileId"]]
        else:
            chosen = [f for f in files if f.get("primary")] or files[:1]
        path = catalog.file_path(chosen[0]["id"]) if chosen and type(chosen[0].get("id")) is int else None
        if path is None:
            return _json_error(404, "File not found")
        expires = int(time.time()) + FILE_URL_SECONDS
        signature = sign_file_url(key, chosen[0]["id"], expires) if key is not None else secrets.token_hex(32)
        location = (f"{(files_base_url or origin).rstrip('/')}/mirror-files/{chosen[0]['id']}"
                    f"?X-Amz-Expires={expires}&X-Amz-Signature={signature}")
        raise web.HTTPTemporaryRedirect(location, headers={"Cache-Control": "no-store, max-age=0"})

    def signed(request: web.Request, file_id: int) -> bool:
        try:
            expires = int(request.query.get("X-Amz-Expires", ""))
        except ValueError:
            return False
        given = request.query.get("X-Amz-Signature", "").encode()
        return expires >= time.time() and hmac.compare_digest(given, sign_file_url(key, file_id, expires).encode())

    async def serve_file(request: web.Request) -> web.StreamResponse:
        catalog.maybe_reload()
        try:
            file_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if key is not None and not (has_token(request) or signed(request, file_id)):
            return _json_error(401, "Unauthorized", message="This file URL is not signed, or it has expired")
        path = catalog.file_path(file_id)
        if path is None:
            raise web.HTTPNotFound()
        name = str((catalog.files.get(file_id) or (0, {}))[1].get("name") or file_id)
        shown = _safe_filename(name, str(file_id))  # a header, not a path
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                               "Content-Disposition": f'attachment; filename="{shown}"'})

    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/models/{id}", get_model)
    app.router.add_get("/api/v1/model-versions/by-hash/{hash}", by_hash)
    app.router.add_get("/api/v1/model-versions/{id}", get_version)
    app.router.add_get("/api/download/models/{id}", download)
    app.router.add_get("/mirror-files/{id}", serve_file)
    return app


class BackgroundServer:
    """Serve an aiohttp app on loopback from a daemon thread (``with`` it; ``.url`` is the base URL)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="carlos-reg-mirror")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def start(self) -> "BackgroundServer":
        if self._thread.is_alive():
            return self
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the server's loop (e.g. to set an ``asyncio.Event``)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(root: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          public_url: str | None = None,
          announce: Callable[[str, "MirrorCatalog"], None] | None = None) -> None:
    """Serve a mirror until SIGINT/SIGTERM (blocking)."""
    import signal

    app = make_app(root, token=token, public_url=public_url)

    async def main() -> None:
        from registry.api import json_parse_errors

        runner = web.AppRunner(app, handle_signals=False, access_log=log, access_log_class=_PathOnlyAccessLogger)
        await runner.setup()
        json_parse_errors(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if announce:
            announce(f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}",
                     app[CATALOG])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


# ---------------------------------------------------------------- registry → mirror


def export_mirror(db, store, out_dir: str | os.PathLike, *, batch: int = 500) -> dict[str, int]:
    """Write the registry's crawled (not gone) models, versions and verified files as a mirror.

    ``out_dir`` must be empty, absent, or an earlier mirror (it has ``mirror.json``); models no
    longer in the registry's live set are removed from it. File bytes are hard-linked from the
    artifact store when possible, else copied. Everything is written into a temporary sibling
    directory that replaces ``out_dir`` at the end: a failed export leaves ``out_dir`` as it was.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MirrorError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "mirror.json").is_file():
        raise MirrorError(f"{out} is not empty and not a mirror (no mirror.json); nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        counts = _export_into(db, store, out, batch)
        old = {p.name for p in (final / "models").glob("*.json")} if final.is_dir() else set()
        counts["models_removed"] = len(old - {p.name for p in (out / "models").glob("*.json")})
        _swap_in(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return counts


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished directory ``new`` at ``target`` (absent, empty, or an earlier mirror)."""
    os.chmod(new, 0o755)  # mkdtemp makes it private
    if target.is_dir() and any(target.iterdir()):
        retired = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        os.rename(target, retired)
        os.rename(new, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(new, target)  # over an empty directory too


def _export_into(db, store, out: Path, batch: int) -> dict[str, int]:
    import sqlalchemy as sa

    from registry.models import File, Model, Version

    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "files").mkdir(parents=True, exist_ok=True)
    counts = {"models": 0, "versions": 0, "files": 0, "files_linked": 0, "files_copied": 0, "models_removed": 0}
    written: set[str] = set()
    with db.read() as s:
        ids = list(s.execute(sa.select(Model.id).where(Model.source == "civitai", Model.gone_at.is_(None),
                                                       Model.raw.is_not(None)).order_by(Model.id)).scalars())
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            models = {r.id: r.raw for r in s.execute(sa.select(Model.id, Model.raw).where(Model.id.in_(chunk)))}
            versions: dict[int, list] = {}
            for r in s.execute(sa.select(Version.id, Version.model_id, Version.raw)
                               .where(Version.model_id.in_(chunk), Version.gone_at.is_(None),
                                      Version.raw.is_not(None)).order_by(Version.id)):
                versions.setdefault(r.model_id, []).append(r.raw)
            verified = {r.civitai_file_id: r.local_path for r in s.execute(
                sa.select(File.civitai_file_id, File.local_path).join(Version, Version.id == File.version_id)
                .where(Version.model_id.in_(chunk), File.state == FileState.VERIFIED, File.local_path.is_not(None),
                       File.civitai_file_id.is_not(None)))}
            for model_id in chunk:
                raws = versions.get(model_id, [])
                if not raws:
                    continue
                raws.sort(key=lambda v: (v.get("index") if type(v.get("index")) is int else 1 << 30))
                item = {**models[model_id], "modelVersions": raws}
                write_file(out / "models" / f"{model_id}.json", _json_bytes(item))
                written.add(f"{model_id}.json")
                counts["models"] += 1
                counts["versions"] += len(raws)
                for v in raws:
                    for f in _as_list(v.get("files")):
                        fid = f.get("id") if isinstance(f, dict) else None
                        if fid in verified:
                            counts["files"] += 1
                            how = _place_file(store.path(verified[fid]), out / "files" / str(int(fid)))
                            if how:
                                counts[f"files_{how}"] += 1
    _write_manifest(out, counts["models"], source="carlos-reg mirror export")
    return counts


def _place_file(source: Path, target: Path) -> str | None:
    """Hard-link (or copy) a verified file into a mirror; None when it is already there."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return None
    tmp = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    try:
        os.link(source, tmp)
        how = "linked"
    except OSError:
        shutil.copyfile(source, tmp)
        how = "copied"
    os.replace(tmp, target)
    return how
