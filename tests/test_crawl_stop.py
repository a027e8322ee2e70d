"""Stopping a crawl mid-download, as users and service managers do (real subprocesses).

- ``carlos-reg crawl`` and Ctrl-C (SIGINT): exit 130, the run recorded ``interrupted`` at once.
- ``carlos-reg crawl`` and SIGTERM (a service manager, ``kill``): stopped as by Ctrl-C, exit 143,
  the run recorded ``interrupted`` at once.
- ``carlos-reg serve`` and SIGTERM during the nightly crawl (README, *The nightly run*): the crawl
  stops at a safe point, the crawl run and the service run are recorded ``interrupted``, exit 0.

Each time the signal is sent only once the crawl is provably inside a download (the mirror has sent
half a file and stalls; that half is on disk), no verified file appears for the unfinished
download, the partial file is kept, and the next crawl resumes it with ``Range`` and verifies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from registry.db import Database
from registry.models import CrawlRun, File
from tests.conftest import REPO, run_cli
from tests.crawler_helpers import FILES, Faults, broken_body, serve
from tests.service_support import Server
from tests.test_crawler_cli import _big_catalog


class _Download:
    """The stalled download of the big catalog's one file, and where its bytes go."""

    def __init__(self, tmp_path: Path):
        self.data, self.file_id = _big_catalog(tmp_path / "mirror")
        sha = hashlib.sha256(self.data).hexdigest()
        self.home = tmp_path / "home"
        self.partial = self.home / "artifacts" / ".partial" / f"{sha}.part"
        self.final = self.home / "artifacts" / "lora" / sha[:2] / sha[2:4] / f"{sha}.safetensors"
        self.sha, self.half = sha, len(self.data) // 2
        self.cut = threading.Event()
        self.faults = Faults()
        self.faults.add(
            f"{FILES}{self.file_id}",
            broken_body(mode="stall", cut_at=0.5, stall_seconds=600, on_cut=self.cut.set),
        )

    def wait_mid_download(self, proc: subprocess.Popen, describe=lambda: "") -> None:
        """Until the mirror has sent half the file and that half is on disk (no guessed sleep)."""
        deadline = time.monotonic() + 600
        while not self.cut.is_set():
            assert time.monotonic() < deadline and proc.poll() is None, describe()
            self.cut.wait(0.1)
        while not (self.partial.exists() and self.partial.stat().st_size >= self.half):
            assert time.monotonic() < deadline and proc.poll() is None, describe()
            time.sleep(0.02)

    def db(self) -> Database:
        return Database(f"sqlite:///{self.home / 'registry.db'}")

    def file_state(self, db: Database) -> str:
        with db.read() as s:
            return s.execute(
                sa.select(File.state).where(File.civitai_file_id == self.file_id)
            ).scalar_one()

    def assert_stopped_safely(self, db: Database) -> None:
        assert not self.final.exists()  # nothing unverified where a verified file belongs
        assert self.partial.stat().st_size == self.half  # kept for resuming
        assert self.file_state(db) == "pending"

    def resume(self, api_url: str) -> dict:
        """A plain crawl afterwards: it finishes the file from where the stopped one left off."""
        env = {"CARLOS_REG_HOME": str(self.home), "CIVITAI_BASE_URL": api_url}
        proc = run_cli("crawl", "--json", "--timeout", "60", env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["status"] == "ok" and doc["files_verified"] == 1
        assert doc["bytes_downloaded"] == len(self.data) - self.half  # resumed, not restarted
        assert self.faults.requests(FILES)[-1].headers.get("Range") == f"bytes={self.half}-"
        assert hashlib.sha256(self.final.read_bytes()).hexdigest() == self.sha
        assert not self.partial.exists()
        return doc


@contextlib.contextmanager
def sigint_not_ignored():
    """Start children as a terminal starts a foreground crawl, whose Ctrl-C arrives.

    A shell without job control starts background commands (``make test &`` in a script) with
    SIGINT ignored; an ignored signal stays ignored across exec, so the crawl would never see it.
    A handled one is reset to the default in the child."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stacks_of(proc: subprocess.Popen) -> str:
    """What a stuck process is doing: faulthandler's dump of its threads on SIGABRT."""
    proc.send_signal(signal.SIGABRT)
    try:
        return proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        return "(no stack dump within 60 s)"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "sig, code, status_before_rerun",
    [
        (signal.SIGINT, 130, "interrupted"),  # Ctrl-C: the crawl records its own interruption
        (signal.SIGTERM, 128 + signal.SIGTERM, "interrupted"),  # stopped as by Ctrl-C
    ],
    ids=["sigint", "sigterm"],
)
def test_a_crawl_stopped_mid_download_keeps_its_partial_and_the_next_crawl_resumes(
    tmp_path, sig, code, status_before_rerun
):
    dl = _Download(tmp_path)
    with serve(tmp_path / "mirror", dl.faults) as api:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CARLOS_REG_HOME": str(dl.home),
            "CIVITAI_BASE_URL": api.url,
            "PYTHONFAULTHANDLER": "1",  # SIGABRT prints every thread's stack: see _stacks_of
        }
        with sigint_not_ignored():
            proc = subprocess.Popen(
                [sys.executable, "-m", "registry", "crawl", "--timeout", "600"],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            dl.wait_mid_download(proc)
            proc.send_signal(sig)
            # far below the stalled body's 600 s and the 600 s read timeout: the signal ended it
            try:
                _, stderr = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the crawl did not stop within 120 s:\n{_stacks_of(proc)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == code, stderr
        assert "Traceback" not in stderr
        db = dl.db()
        dl.assert_stopped_safely(db)
        with db.read() as s:
            assert s.execute(sa.select(CrawlRun.status)).scalar_one() == status_before_rerun
        dl.resume(api.url)
    with db.read() as s:
        assert s.execute(sa.select(CrawlRun.status).order_by(CrawlRun.id)).scalars().all() == [
            "interrupted",
            "ok",
        ]
    assert dl.file_state(db) == "verified"
    db.dispose()


@pytest.mark.timeout(900)
def test_sigterm_stops_the_nightly_crawl_at_a_safe_point(tmp_path):
    dl = _Download(tmp_path)
    with serve(tmp_path / "mirror", dl.faults) as api:
        env = {
            "CARLOS_REG_HOME": str(dl.home),
            "CIVITAI_BASE_URL": api.url,
            "CARLOS_REG_LOAD_PLUGINS": "serve,crawl",  # the nightly run is the crawl alone
        }
        server = Server.start(serve_args=("--schedule", "off", "--run-now"), env=env)
        try:
            dl.wait_mid_download(server.proc, server.output)
        finally:
            code = server.stop(signal.SIGTERM, timeout=120)
        assert code == 0, server.output()
        db = dl.db()
        dl.assert_stopped_safely(db)
        with db.read() as s:
            assert s.execute(sa.select(CrawlRun.status)).scalar_one() == "interrupted"
            run = s.execute(
                sa.text("SELECT status, finished_at, steps FROM service_run ORDER BY id")
            ).one()
        steps = json.loads(run[2]) if isinstance(run[2], str) else run[2]
        assert run[0] == "interrupted" and run[1] is not None  # not "ok": the crawl was cut short
        assert steps["crawl"]["status"] == "interrupted"
        dl.resume(api.url)
    db.dispose()
