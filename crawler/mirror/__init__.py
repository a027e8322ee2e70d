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

Modules: ``catalog`` (the directory format: ``write_catalog``, ``MirrorCatalog``), ``server``
(``make_app`` and its module-level handlers), ``running`` (``BackgroundServer`` serves an app on
loopback from a thread, ``serve`` is the blocking ``mirror serve``), ``export`` (``export_mirror``: registry → directory)
and ``fixtures`` (``model_entry``, ``version_entry``, ``file_entry``, ``tiny_lora``: catalogs
built in code for tests, the demo and benchmarks).
"""

from crawler.mirror.catalog import MirrorCatalog, MirrorError, write_catalog
from crawler.mirror.export import export_mirror
from crawler.mirror.fixtures import file_entry, model_entry, tiny_lora, version_entry
from crawler.mirror.running import BackgroundServer, serve
from crawler.mirror.server import CATALOG, _file_url_key, make_app, sign_file_url

__all__ = [
    "CATALOG",
    "BackgroundServer",
    "MirrorCatalog",
    "MirrorError",
    "_file_url_key",
    "export_mirror",
    "file_entry",
    "make_app",
    "model_entry",
    "serve",
    "sign_file_url",
    "tiny_lora",
    "version_entry",
    "write_catalog",
]
