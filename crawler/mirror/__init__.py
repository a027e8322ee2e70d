"""A Civitai-compatible API served from a directory (offline mirrors, shared mirrors, tests, demo)."""
from crawler.mirror.catalog import (
    CATALOG,
    BackgroundServer,
    MirrorCatalog,
    MirrorError,
    _file_url_key,
    export_mirror,
    file_entry,
    make_app,
    model_entry,
    serve,
    sign_file_url,
    tiny_lora,
    version_entry,
    write_catalog,
)

__all__ = [
    "CATALOG", "BackgroundServer", "MirrorCatalog", "MirrorError", "_file_url_key", "export_mirror",
    "file_entry", "make_app", "model_entry", "serve", "sign_file_url", "tiny_lora", "version_entry",
    "write_catalog",
]
