"""The mirror directory format (docs/mirror.md): writing a catalog, and reading one back.

DIR/mirror.json         {"format": "carlos-reg-mirror", "version": 1, ...}  (required)
DIR/models/<id>.json    one model exactly as /api/v1/models/{id} returns it (modelVersions, files)
DIR/files/<fileId>      the bytes of file <fileId> (optional; absent files answer 404)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from registry.files import write_file

log = logging.getLogger("crawler.mirror")

FORMAT = "carlos-reg-mirror"
FORMAT_VERSION = 1
MAX_LIMIT = 100
PAGE_CAP_MESSAGE = "You've requested too many pages, please use cursors instead"
FILE_URL_SECONDS = 3600  # how long a redirect's signed file URL stays valid


class MirrorError(ValueError):
    """A directory that is not a usable mirror."""


def _json_bytes(doc: Any) -> bytes:
    """UTF-8 JSON; a lone surrogate (valid in JSON, not in UTF-8) is written as a ``\\ud800`` escape."""
    try:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, ensure_ascii=True).encode("ascii")


def write_catalog(
    root: str | os.PathLike,
    models: Iterable[dict],
    blobs: dict[int, bytes | os.PathLike] | None = None,
    *,
    replace: bool = True,
) -> Path:
    """Write models (and file bytes by file id) in the mirror format.

    ``replace`` removes model files not in ``models`` (a model deleted upstream). ``mirror.json``
    is written last, so a running server reloads once everything is in place.
    """
    root = Path(root)
    encoded = {
        int(model["id"]): _json_bytes(model) for model in models
    }  # all of it, before the first write
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
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "nonce": secrets.token_hex(4),
        **extra,
    }
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
            raise MirrorError(
                f"{self.root} is not a mirror directory (no mirror.json; see docs/mirror.md)"
            ) from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        stamp = self._manifest_stamp()
        try:
            manifest = json.loads((self.root / "mirror.json").read_text())
        except (ValueError, OSError) as exc:
            raise MirrorError(
                f"{self.root / 'mirror.json'} is not readable JSON ({type(exc).__name__})"
            ) from None
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
