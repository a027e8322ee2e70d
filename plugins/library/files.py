"""Walking a user's LoRA folders and hashing what is found (the *Walk* part of the contract in
``plugins.library.scan``): symlinks followed, each directory entered once, paths kept as found and
only ever ``stat``-ed or opened as the paths the user's own folders gave."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from signer.validate import PICKLE_SUFFIXES

CHUNK = 1 << 20


def scan_suffixes() -> set[str]:
    return {".safetensors"} | set(PICKLE_SUFFIXES)


@dataclass
class Found:
    path: str
    size: int
    mtime_ns: int


def walk(roots: list[Path], suffixes: set[str], skipped: list[dict]) -> list[Found]:
    """Files under ``roots`` (or the roots themselves), symlinks followed, each directory once."""
    found: dict[str, Found] = {}
    seen_dirs: set[tuple[int, int]] = set()

    def consider(path: str, st: os.stat_result) -> None:
        if Path(path).suffix.lower() in suffixes and stat.S_ISREG(st.st_mode):
            found.setdefault(path, Found(path, st.st_size, st.st_mtime_ns))

    for root in roots:
        top = os.path.abspath(root)
        try:
            st = os.stat(top)
        except OSError as exc:
            skipped.append(
                {"path": top, "reason": f"cannot read ({exc.strerror or type(exc).__name__})"}
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            consider(top, st)
            continue
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                dst = os.stat(d)
            except OSError:
                continue
            key = (dst.st_dev, dst.st_ino)
            if key in seen_dirs:
                continue  # a symlink loop, or the same folder reached twice
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                skipped.append(
                    {"path": d, "reason": f"cannot list ({exc.strerror or type(exc).__name__})"}
                )
                continue
            subdirs = []
            for e in entries:
                try:
                    est = os.stat(e.path)  # follows symlinks
                except OSError:
                    if e.is_symlink() and Path(e.name).suffix.lower() in suffixes:
                        skipped.append({"path": e.path, "reason": "broken symlink"})
                    continue
                if stat.S_ISDIR(est.st_mode):
                    subdirs.append(e.path)
                else:
                    consider(e.path, est)
            stack.extend(reversed(subdirs))
    return sorted(found.values(), key=lambda f: f.path)


def hash_file(path: str, counter: Callable[[int], None]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            counter(len(chunk))
    return h.hexdigest()


def screen(path: str) -> str | None:
    """Why the signer would refuse the file, or None (the signer's own validator decides).

    Structure only (format, keys, SD 1.x, LoHa, DoRA, truncation, …): the tensor values (NaN, alphas)
    need torch and are checked when the file is signed."""
    from signer.errors import LoraRejected
    from signer.validate import inspect_lora_file

    try:
        inspect_lora_file(path, check_values=False)
    except LoraRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read ({exc.strerror or type(exc).__name__})"
    return None
