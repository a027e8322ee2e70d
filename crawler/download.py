"""Download, verify and store one LoRA file.

Contract for ``download(client, store, task, limits)``:

- The request is ``/api/download/models/{versionId}?fileId=…`` on the API origin; redirects to
  storage are followed by ``CivitaiClient.open`` without the token.
- Bytes go to ``<artifacts>/.partial/<sha256>.part`` (a name made from the expected hash, never
  from a file name), locked with ``flock`` so two crawlers never write one partial file; a lock
  held elsewhere gives the outcome ``busy``. A partial file left by an earlier (killed) run is
  resumed with ``Range``; a 200 answer to a ranged request (the server ignored ``Range``), a
  ``Content-Range`` that does not start where the partial ends, or a 416 start over from byte 0.
- Timeouts (a stalled body), resets and truncated bodies resume after the retry policy's wait; the
  failure budget resets only when the file grows past its previous size.
- Size: a declared size over ``max_file_bytes`` is refused before any byte; free space must cover
  the declared size plus ``min_free_bytes`` (else ``deferred``); a body longer than declared is cut.
- The SHA256 of the bytes must equal the API's ``hashes.SHA256``; a mismatch after a resume is
  retried once from scratch (a spliced file), then the bytes move to ``<artifacts>/quarantine/``
  (``quarantined``). The safetensors header is validated the same way. Only then is the file
  renamed atomically to its content-addressed path ``lora/ab/cd/<sha256>.safetensors``. A final
  path therefore never holds partial or unverified bytes.
- Nothing is unpickled here, and pickle formats never reach this function (``sync`` records them
  as ``unsupported``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp

from crawler import stfile
from crawler.client import CivitaiClient
from crawler.http_errors import CivitaiError, wrap_exception
from registry.artifacts import ArtifactStore
from registry.states import FileState

CHUNK = 1 << 20
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class DownloadTask:
    file_id: int  # the registry's File.id
    version_id: int
    civitai_file_id: int | None
    sha256: str
    size_bytes: int | None


@dataclass
class Outcome:
    state: str  # verified | failed | quarantined | deferred | busy
    error: str | None = None
    local_path: str | None = None  # relative to the artifact store
    bytes: int = 0  # received in this call, kept or not
    status: int | None = None

    @property
    def counts_as_attempt(self) -> bool:
        return self.state in (FileState.FAILED, FileState.QUARANTINED)


@dataclass(frozen=True)
class DownloadLimits:
    max_file_bytes: int = 4 * GiB
    min_free_bytes: int = 1 * GiB


class _Restart(Exception):
    """Discard the partial file and fetch from byte 0."""


def lora_path(store: ArtifactStore, sha256: str) -> str:
    return store.relative_path("lora", sha256, ".safetensors")


def parse_content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    return int(m.group(1)) if m else None


def _hash_file(fh, hasher) -> int:
    fh.seek(0)
    size = 0
    while block := fh.read(CHUNK):
        hasher.update(block)
        size += len(block)
    return size


class _PartialFile:
    """The partial file and the SHA256 of the bytes in it: the resume state, kept in one place so
    that every step of a download sees (and moves) the same offset."""

    def __init__(self, fh):
        self.fh = fh  # unbuffered
        self.hasher = hashlib.sha256()
        self.size = _hash_file(fh, self.hasher)  # where the next byte goes; a resume asks from here

    def restart(self) -> None:
        """Drop every byte received so far: the next one is byte 0."""
        self.fh.truncate(0)
        self.size, self.hasher = 0, hashlib.sha256()

    def append(self, chunk: bytes) -> None:
        written = self.fh.write(chunk)
        if written != len(chunk):  # unbuffered: a short write means the disk is full
            raise OSError(errno.ENOSPC, "short write (disk full?)")
        self.hasher.update(chunk)
        self.size += len(chunk)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def download(
    client: CivitaiClient,
    store: ArtifactStore,
    task: DownloadTask,
    limits: DownloadLimits = DownloadLimits(),
    on_bytes: Callable[[int], None] | None = None,
) -> Outcome:
    rel = lora_path(store, task.sha256)
    final = store.path(rel)
    if final.is_file():  # content-addressed: bytes there were verified when they were put there
        return Outcome("verified", local_path=rel)
    if task.size_bytes is not None and task.size_bytes > limits.max_file_bytes:
        return Outcome(
            "failed",
            error=f"declared size {task.size_bytes} bytes is over the limit of "
            f"{limits.max_file_bytes} bytes; not downloaded",
        )
    free = store.free_bytes()
    if free < (task.size_bytes or 0) + limits.min_free_bytes:
        need = (task.size_bytes or 0) // MiB
        return Outcome(
            "deferred",
            error=f"not enough free space ({free // MiB} MiB free; need the file's {need} MiB "
            f"plus {limits.min_free_bytes // MiB} MiB)",
        )
    partial_dir = store.root / ".partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / f"{task.sha256}.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    fh = os.fdopen(fd, "r+b", buffering=0)  # unbuffered: what was received is on disk for a resume
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Outcome("busy", error="another process is downloading this file")
        if final.is_file():  # finished by another process while we opened the partial
            part.unlink(missing_ok=True)
            return Outcome("verified", local_path=rel)
        outcome = await _fetch_verify_store(
            client, store, task, limits, fh, part, final, rel, on_bytes
        )
        if (
            outcome.state != FileState.VERIFIED
            and part.exists()
            and os.fstat(fh.fileno()).st_size == 0
        ):
            part.unlink()  # nothing to resume: leave no empty partial behind (we still hold its lock)
        return outcome
    finally:
        fh.close()


async def _fetch_verify_store(
    client, store, task, limits, fh, part: Path, final: Path, rel: str, on_bytes
) -> Outcome:
    received = [0]

    def count(n: int) -> None:
        received[0] += n
        if on_bytes:
            on_bytes(n)

    partial = _PartialFile(fh)
    resumed = partial.size > 0
    for round_ in (1, 2):
        try:
            await _fetch(client, task, limits, partial, count)
        except CivitaiError as exc:
            exc = client.redacted(exc)
            return Outcome(
                "failed",
                error=exc.message + (f" ({exc.url})" if exc.url else ""),
                status=exc.status,
                bytes=received[0],
            )
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC: free what we hold
                fh.truncate(0)
            return Outcome(
                "failed",
                error=f"cannot write the download: {exc.strerror or type(exc).__name__}",
                bytes=received[0],
            )
        os.fsync(fh.fileno())
        digest = partial.hasher.hexdigest()
        if digest == task.sha256:
            break
        if (
            resumed and round_ == 1
        ):  # the partial may come from another representation: once from scratch
            partial.restart()
            resumed = False
            continue
        return _quarantine(
            store,
            task,
            part,
            digest,
            f"SHA256 mismatch: the bytes hash to {digest}, the API says {task.sha256}",
            received[0],
        )
    try:
        stfile.validate_file(part)
    except stfile.InvalidSafetensors as exc:
        return _quarantine(
            store, task, part, task.sha256, f"not a valid safetensors file: {exc}", received[0]
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    _fsync_dir(final.parent)
    return Outcome("verified", local_path=rel, bytes=received[0])


def _quarantine(
    store: ArtifactStore, task: DownloadTask, part: Path, digest: str, reason: str, received: int
) -> Outcome:
    qrel = f"quarantine/{task.sha256}-{digest[:16]}.bin"
    target = store.path(qrel)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    return Outcome("quarantined", error=reason, local_path=qrel, bytes=received)


def _body_cap(task: DownloadTask, limits: DownloadLimits) -> int:
    """The most bytes a file may have: the limit, or its declared size with some slack."""
    cap = limits.max_file_bytes
    if task.size_bytes is not None:
        cap = min(cap, task.size_bytes + max(MiB, task.size_bytes // 100))  # sizeKB is approximate
    return cap


async def _fetch(
    client: CivitaiClient,
    task: DownloadTask,
    limits: DownloadLimits,
    partial: _PartialFile,
    count: Callable[[int], None],
) -> None:
    """Fill the partial file to the end of the body, reconnecting (with ``Range``) as the retry
    policy allows; the failure budget resets whenever the file grows past its previous size."""
    url = client.api_url(f"/api/download/models/{task.version_id}")
    params = [("fileId", str(task.civitai_file_id))] if task.civitai_file_id else None
    cap = _body_cap(task, limits)
    failures, connections, high_water = 0, 0, partial.size
    while True:
        connections += 1
        try:
            await _fetch_once(client, url, params, partial, cap, count)
            return
        except _Restart:
            partial.restart()
            error = CivitaiError(
                "the server cannot resume this partial file; starting over",
                kind="range",
                retryable=True,
            )
        except CivitaiError as exc:
            if not exc.retryable:
                raise
            error = exc
        if partial.size > high_water:
            high_water, failures = partial.size, 0
        failures += 1
        if failures >= client.policy.max_attempts or connections >= 20 * client.policy.max_attempts:
            raise CivitaiError(
                f"gave up after {connections} connection(s): {error.message}",
                url=error.url,
                status=error.status,
                kind=error.kind,
            )
        await client.wait_before_retry(failures, error)


async def _fetch_once(
    client: CivitaiClient, url, params, partial: _PartialFile, cap, count
) -> None:
    """One connection: ask for the bytes from the partial file's end and append the body."""
    headers = {"Accept-Encoding": "identity"}
    if partial.size > 0:
        headers["Range"] = f"bytes={partial.size}-"
    async with client.open(url, params=params, headers=headers, ok=(200, 206, 416)) as resp:
        _check_start(resp, partial, cap)
        partial.fh.seek(partial.size)
        try:
            await _receive_body(client, resp, partial, cap, count)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise wrap_exception(exc, resp.url, idle_timeout=client.timeout) from None
    partial.fh.truncate(partial.size)


def _check_start(resp: aiohttp.ClientResponse, partial: _PartialFile, cap: int) -> None:
    """Whether the body continues the partial file (else ``_Restart``) and fits under ``cap``."""
    if resp.status == 416 or (
        resp.status == 206
        and parse_content_range_start(resp.headers.get("Content-Range")) != partial.size
    ):
        raise _Restart()
    if resp.status == 200 and partial.size > 0:  # Range ignored: the body starts at byte 0
        partial.restart()
    length = resp.content_length
    if length is not None and partial.size + length > cap:
        raise CivitaiError(
            f"the body ({partial.size + length} bytes) is larger than the declared size or the "
            f"limit ({cap} bytes)",
            url=resp.url,
            kind="size",
        )


async def _receive_body(
    client: CivitaiClient,
    resp: aiohttp.ClientResponse,
    partial: _PartialFile,
    cap: int,
    count: Callable[[int], None],
) -> None:
    started, body_bytes = time.monotonic(), 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        if client.deadline(body_bytes, started):  # a trickle keeps the idle timeout happy
            raise client.too_slow(resp.url)
        body_bytes += len(chunk)
        if partial.size + len(chunk) > cap:
            raise CivitaiError(
                f"the body is larger than the declared size or the limit ({cap} bytes)",
                url=resp.url,
                kind="size",
            )
        partial.append(chunk)
        count(len(chunk))
