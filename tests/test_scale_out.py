"""Scale-out on one PostgreSQL registry: a fleet of real ``signer work`` processes (tiny models)
that loses a worker to SIGKILL, rides out a database restart, and runs under the launcher."""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from registry.db import Database
from registry.migrate import ensure_schema
from registry.models import BaseCache, Signature, SignJob
from registry.queue import JobQueue
from registry.settings import Settings
from signer import lorafiles as lf
from signer import queueing
from signer.profiles import load_profile, register
from tests.conftest import REPO
from tests.signer_support import add_local_version

# fleets of CPU workers: bounds sized for a loaded 2-core machine; every wait is for a state, not a time
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(2400)]

PROFILE = (
    "tiny-40"  # tiny with 40 samples: a job lasts a few seconds, long enough to be hit mid-way
)
KILL_SEED = 8
DONE_LINE = re.compile(r"job (\d+) \((?:version -?\d+|base branch of profile [^)]*)\): done:")
BASE_COMPUTED = re.compile(
    r"\(base branch of profile " + re.escape(PROFILE) + r"\): computing \d+ samples"
)


@pytest.fixture
def fleet(pg_url, tmp_path, tiny_models):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "profiles.toml").write_text(
        f'[profiles.{PROFILE}]\nextends = "tiny"\nprompt_subset = 20\n'
    )
    db = Database(pg_url)
    ensure_schema(db)
    settings = Settings.load(home=home, db=pg_url)
    with db.write() as s:
        pid = register(s, load_profile(PROFILE, settings)).id
    ns = SimpleNamespace(
        db=db, settings=settings, pid=pid, url=pg_url, home=home, tmp=tmp_path, logs=[]
    )
    yield ns
    db.dispose()


def _enqueue(fleet, version_ids) -> None:
    with fleet.db.write() as s:
        for vid in version_ids:
            path = lf.write_kohya_lora(fleet.tmp / f"lora{vid}.safetensors", strength=0.4, seed=vid)
            add_local_version(s, fleet.settings.artifacts, vid, path)
            queueing.enqueue_lora(s, JobQueue(fleet.db), fleet.pid, vid)


def _start(fleet, *args: str, env: dict | None = None) -> subprocess.Popen:
    log = fleet.tmp / f"worker{len(fleet.logs)}.log"
    fleet.logs.append(log)
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CARLOS_REG_HOME": str(fleet.home),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    with log.open("w") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "--db",
                fleet.url,
                "signer",
                "work",
                "--profile",
                PROFILE,
                *args,
            ],
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _kill_leftovers(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _jobs(db) -> list[SignJob]:
    with db.read() as s:
        return s.execute(sa.select(SignJob).order_by(SignJob.id)).scalars().all()


def _wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if procs and all(p.poll() is not None for p in procs):
            raise AssertionError(f"every worker exited before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running_loras(db) -> list[SignJob]:
    return [j for j in _jobs(db) if j.kind == "lora" and j.state == "running"]


def _busy_workers(db, n: int) -> list[SignJob] | None:
    """The running LoRA jobs, once ``n`` different workers hold one."""
    running = _running_loras(db)
    return running if len({_owner_pid(j) for j in running}) == n else None


def _leases_expired(db) -> bool:
    """No running job's lease is still valid by the database clock."""
    with db.read() as s:
        return not s.execute(
            sa.text(
                "SELECT count(*) FROM sign_job WHERE state = 'running' "
                "AND lease_expires_at > extract(epoch from clock_timestamp())"
            )
        ).scalar_one()


def _owner_pid(job: SignJob) -> int:
    return int(job.lease_owner.split(":")[1])  # host:pid:random


def _logs(fleet) -> str:
    return "".join(p.read_text() for p in fleet.logs)


def _assert_each_job_done_once(
    fleet, versions, *, max_attempts_seen: int | None = None
) -> list[SignJob]:
    jobs = _jobs(fleet.db)
    loras = [j for j in jobs if j.kind == "lora"]
    assert sorted(j.version_id for j in loras) == sorted(versions)
    assert all(j.state == "done" for j in jobs), [(j.id, j.state, j.last_error) for j in jobs]
    with fleet.db.read() as s:
        sigs = s.execute(
            sa.select(Signature.version_id, Signature.job_id).where(
                Signature.profile_id == fleet.pid
            )
        ).all()
        caches = s.execute(sa.select(sa.func.count()).select_from(BaseCache)).scalar_one()
    assert sorted(sigs) == sorted(
        (j.version_id, j.id) for j in loras
    )  # one signature per version, by its job
    assert caches == 1
    done_lines = collections.Counter(int(m) for m in DONE_LINE.findall(_logs(fleet)))
    assert done_lines == {j.id: 1 for j in jobs}, (
        done_lines
    )  # every job reported done by exactly one worker
    assert len(BASE_COMPUTED.findall(_logs(fleet))) == 1  # the fleet computed the base branch once
    if max_attempts_seen is not None:
        assert max(j.attempts for j in jobs) <= max_attempts_seen
    return jobs


def test_four_workers_drain_the_queue_while_one_is_sigkilled(fleet):
    versions = list(range(1, 13))
    _enqueue(fleet, versions)
    rng = random.Random(KILL_SEED)
    procs = [_start(fleet, "--once", "--lease-seconds", "4") for _ in range(4)]
    by_pid = {p.pid: p for p in procs}
    try:
        _wait_for(lambda: _running_loras(fleet.db), 600, "a LoRA job to start", procs)
        time.sleep(rng.uniform(0.0, 2.0))
        running = sorted(
            (j for j in _running_loras(fleet.db) if _owner_pid(j) in by_pid), key=lambda j: j.id
        )
        if running:
            victim = by_pid[_owner_pid(rng.choice(running))]
        else:  # between two jobs: any live worker
            victim = rng.choice([p for p in procs if p.poll() is None])
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        # the job it died holding, read after its death (it may have finished one and claimed the
        # next since the listing); None if it held none, or if its lease was already taken over
        held = [j.id for j in _running_loras(fleet.db) if _owner_pid(j) == victim.pid]
        killed_job = held[0] if held else None
        for p in procs:
            if p is not victim:
                assert p.wait(timeout=600) == 0, _logs(fleet)
        # `--once` workers exit when nothing is left to claim, which can come before the dead
        # worker's lease runs out; then a worker started after it expired reclaims the job
        if any(j.state != "done" for j in _jobs(fleet.db)):
            _wait_for(lambda: _leases_expired(fleet.db), 120, "the dead worker's lease to expire")
            procs.append(_start(fleet, "--once", "--lease-seconds", "4"))
            assert procs[-1].wait(timeout=600) == 0, _logs(fleet)
    finally:
        _kill_leftovers(procs)
    assert victim.returncode == -signal.SIGKILL
    jobs = _assert_each_job_done_once(fleet, versions)
    (base,) = [j for j in jobs if j.kind == "base"]
    assert base.attempts == 1
    for j in jobs:
        if j.id == killed_job:
            assert (
                j.attempts == 2 and j.last_error is None
            )  # reclaimed after its lease ran out, done once
        else:
            assert j.attempts >= 1
    assert "Traceback" not in _logs(fleet)


def test_workers_ride_out_a_database_restart(fleet, pg_server):
    versions = list(range(1, 7))
    _enqueue(fleet, versions)
    procs = [_start(fleet, "--once", "--lease-seconds", "30") for _ in range(2)]
    try:
        _wait_for(
            lambda: (
                any(j.kind == "lora" and j.state == "done" for j in _jobs(fleet.db))
                and _running_loras(fleet.db)
            ),
            600,
            "the first LoRA job done and another running",
            procs,
        )
        # down until a worker has met the outage for sure (its heartbeat comes every 10 s), then back
        pg_server.stop("fast")
        try:
            _wait_for(
                lambda: "registry database unavailable" in _logs(fleet),
                120,
                "a worker to meet the outage",
                procs,
            )
        finally:
            pg_server.start()
        for p in procs:
            assert p.wait(timeout=600) == 0, _logs(fleet)
    finally:
        _kill_leftovers(procs)
    logs = _logs(fleet)
    # nothing lost, nothing done twice; the 30 s leases outlived the outage, so nothing was reclaimed
    _assert_each_job_done_once(fleet, versions, max_attempts_seen=1)
    assert "registry database unavailable" in logs and "registry database reachable again" in logs
    assert "Traceback" not in logs and not re.search(r"^Error:", logs, re.MULTILINE)


def test_launcher_runs_two_cpu_workers_restarts_a_crash_and_stops_on_sigterm(fleet):
    _enqueue(fleet, range(1, 7))
    log = fleet.tmp / "launcher.log"
    fleet.logs.append(log)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARLOS_REG_HOME": str(fleet.home)}
    env.pop("OMP_NUM_THREADS", None)
    with log.open("w") as err:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "--db",
                fleet.url,
                "signer",
                "work",
                "--device",
                "cpu",
                "--workers",
                "2",
                "--profile",
                PROFILE,
                "--lease-seconds",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # a crash: SIGKILL the child running a LoRA job; the launcher restarts it, the job is redone
        job = _wait_for(lambda: _running_loras(fleet.db), 600, "a LoRA job to start", [launcher])[0]
        child = _owner_pid(job)
        assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
            launcher.pid
        )
        os.kill(child, signal.SIGKILL)
        _wait_for(
            lambda: all(j.state == "done" for j in _jobs(fleet.db)),
            600,
            "the queue to drain",
            [launcher],
        )
        assert [j.attempts for j in _jobs(fleet.db) if j.id == job.id] == [2]
        text = log.read_text()
        assert "was killed by SIGKILL; restarting it in 1 s" in text
        assert len(re.findall(r"launcher: started worker w[12] cpu", text)) == 3
        # SIGTERM with both workers busy: each releases its job and exits; then the launcher exits 0
        _enqueue(fleet, range(7, 11))
        busy = _wait_for(
            lambda: _busy_workers(fleet.db, 2), 120, "both workers running a job", [launcher]
        )
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0, log.read_text()
    finally:
        _kill_leftovers([launcher])
    text = log.read_text()
    jobs = _jobs(fleet.db)
    assert not [j for j in jobs if j.state == "running"]
    for j in jobs:
        if j.id in {
            b.id for b in busy
        }:  # released untried (or finished in the moment before the signal)
            assert (j.state, j.attempts, j.lease_token) == ("queued", 0, None) or j.state == "done"
    assert all(j.attempts == 0 for j in jobs if j.state == "queued")
    for label in ("w1 cpu", "w2 cpu"):
        assert re.search(rf"\[{label}\] worker finished: .*\(SIGTERM\)", text), text
    assert re.search(r"\[w[12] cpu\] job \d+ \(version \d+\): released: received SIGTERM", text)
    assert "Traceback" not in text
