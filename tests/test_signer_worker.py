"""The signer worker against a real registry (SQLite and PostgreSQL), tiny models, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from registry.models import BaseCache, Signature, SignJob
from registry.queue import JobQueue
from registry.settings import Settings
from registry.vectors import from_blob
from signer import lorafiles as lf
from signer import queueing, results
from signer.profiles import register
from signer.worker import Worker, get_engine
from tests.conftest import REPO
from tests.signer_support import UnetCalls, add_local_version, tiny_profile


@pytest.fixture
def reg(database, tmp_path, tiny_models):
    settings = Settings.load(home=tmp_path / "home", db=database.url)
    profile = tiny_profile("tiny", home=settings.home)
    with database.write() as s:
        pid = register(s, profile).id
    return database, settings, profile, pid


def _enqueue(db, settings, pid, files: dict[int, Path], trained_words=()):
    with db.write() as s:
        for vid, path in files.items():
            add_local_version(s, settings.artifacts, vid, path, trained_words=trained_words)
            queueing.enqueue_lora(s, JobQueue(db), pid, vid)


def _signatures(db, pid) -> dict[int, Signature]:
    with db.read() as s:
        return {
            r.version_id: r
            for r in s.execute(sa.select(Signature).where(Signature.profile_id == pid)).scalars()
        }


def test_mixed_queue_signs_every_good_lora_and_explains_every_bad_one(reg, tmp_path):
    db, settings, profile, pid = reg
    d = tmp_path / "files"
    files = {
        1: lf.write_kohya_lora(d / "good_a.safetensors", strength=0.5, seed=1),
        2: lf.write_loha(d / "loha.safetensors"),
        3: lf.write_kohya_lora(d / "good_b.safetensors", strength=0.3, seed=2, te=True),
        4: lf.write_sd15_lora(d / "sd15.safetensors"),
        5: lf.write_te_only_lora(d / "te.safetensors"),
        6: lf.write_nan_lora(d / "nan.safetensors"),
        7: lf.write_truncated(d / "trunc.safetensors", seed=3),
        8: lf.write_kohya_lora(d / "zero.safetensors", zero_up=True),
    }
    _enqueue(db, settings, pid, files)
    with db.write() as s:  # a pickle file that reached a verified state must still be refused
        pt = lf.write_pickle_lora(d / "pickle.pt")
        add_local_version(s, settings.artifacts, 9, pt)
        queueing.enqueue_lora(s, JobQueue(db), pid, 9)
    report = Worker(db, settings, profiles=["tiny"], once=True, poll_seconds=0.1).run()
    assert report.done == 4 and report.failed == 6  # base + 3 good; 6 bad
    sigs = _signatures(db, pid)
    assert set(sigs) == {1, 3, 8}
    assert sigs[8].flags == ["no_effect"] and sigs[8].strength == 0.0
    assert all(sigs[v].valid and sigs[v].strength > 0 and sigs[v].n_samples == 20 for v in (1, 3))
    from signer.status import queue_status

    with db.read() as s:
        status = queue_status(s)
    reasons = {d["version_id"]: d["reason"] for d in status["dead"]}
    assert set(reasons) == {2, 4, 5, 6, 7, 9}
    for vid, text in {
        2: "LoHa",
        4: "SD 1.x",
        5: "text-encoder-only",
        6: "NaN",
        7: "truncated",
        9: "pickle/zip archive",
    }.items():
        assert text in reasons[vid], reasons[vid]
    (p,) = status["profiles"]
    assert (
        p["base_cache"]["state"] == "ready"
        and p["jobs"]["lora"]["done"] == 3
        and p["jobs"]["lora"]["dead"] == 6
    )


def test_same_file_under_two_versions_gives_identical_signatures(reg, tmp_path):
    db, settings, profile, pid = reg
    path = lf.write_kohya_lora(tmp_path / "same.safetensors", strength=0.4, seed=7)
    with db.write() as s:
        add_local_version(s, settings.artifacts, 10, path)
    _enqueue(db, settings, pid, {11: path})
    with db.write() as s:
        queueing.enqueue_lora(s, JobQueue(db), pid, 10)
    Worker(db, settings, profiles=["tiny"], once=True, poll_seconds=0.1).run()
    sigs = _signatures(db, pid)
    a, b = sigs[10], sigs[11]
    assert (
        a.direction == b.direction and a.strength == b.strength and a.consistency == b.consistency
    )
    assert (
        a.file_sha256 == b.file_sha256 and a.ensemble_path == b.ensemble_path
    )  # byte-identical ensembles


def test_base_branch_is_one_job_and_never_regenerated(reg, tmp_path):
    db, settings, profile, pid = reg
    files = {
        21: lf.write_kohya_lora(tmp_path / "a.safetensors", seed=21),
        22: lf.write_kohya_lora(tmp_path / "b.safetensors", seed=22),
    }
    _enqueue(db, settings, pid, files)
    with db.read() as s:
        kinds = sorted(s.execute(sa.select(SignJob.kind)).scalars())
    assert kinds == ["base", "lora", "lora"]
    engine = get_engine(profile, "cpu")
    per_branch = (
        -(-len(engine.samples) // engine.batch_size) * profile.steps
    )  # UNet calls for one branch
    with UnetCalls(engine.pipe) as calls:
        Worker(
            db, settings, profiles=["tiny"], max_jobs=2, poll_seconds=0.1
        ).run()  # base + first LoRA
        assert calls.n == 2 * per_branch
        Worker(
            db, settings, profiles=["tiny"], once=True, poll_seconds=0.1
        ).run()  # second LoRA: no base
        assert calls.n == 3 * per_branch
    with db.read() as s:
        cache = s.execute(sa.select(BaseCache)).scalar_one()
        assert cache.n_samples == len(engine.samples) and cache.dim == engine.dim
        mean = results.base_mean_feature(s, pid)
        base = results.load_base(s, settings.artifacts, pid)
    np.testing.assert_allclose(mean, base.features.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert set(_signatures(db, pid)) == {21, 22}


def test_verified_file_hook_queues_the_default_profile(reg, monkeypatch):
    from registry.app import App
    from signer.commands import lora_file_verified

    db, settings, profile, pid = reg
    settings.default_profile = "tiny"
    app = App(settings)
    app.__dict__["db"] = db
    with db.write() as s:
        fid = add_local_version(
            s, settings.artifacts, 31, Path(lf.write_kohya_lora(settings.home / "h.safetensors"))
        )
        lora_file_verified(app=app, session=s, version_id=31, file_id=fid)
        lora_file_verified(app=app, session=s, version_id=31, file_id=fid)  # idempotent
    with db.read() as s:
        jobs = s.execute(sa.select(SignJob.kind, SignJob.version_id, SignJob.profile_id)).all()
    assert sorted(jobs, key=str) == sorted([("base", None, pid), ("lora", 31, pid)], key=str)


def _worker_proc(db_url, home, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARLOS_REG_HOME": str(home)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "registry",
            "--db",
            db_url,
            "signer",
            "work",
            "--profile",
            "tiny-40",
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_running_lora(db, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as s:
            job = s.execute(
                sa.select(SignJob).where(SignJob.kind == "lora", SignJob.state == "running")
            ).scalar()
        if job is not None:
            return job
        time.sleep(0.1)
    raise AssertionError("no LoRA job started running")


@pytest.fixture
def slow_reg(database, tmp_path, tiny_models):
    """A 40-sample profile whose base branch is already cached: a worker process claims the LoRA
    job first thing and holds its lease while it loads the models and generates."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        '[profiles.tiny-40]\nextends = "tiny"\nprompt_subset = 20\n'
    )
    settings = Settings.load(home=home, db=database.url)
    from signer.profiles import load_profile

    profile = load_profile("tiny-40", settings)
    with database.write() as s:
        pid = register(s, profile).id
    _enqueue(
        database, settings, pid, {41: lf.write_kohya_lora(tmp_path / "k.safetensors", seed=41)}
    )
    assert (
        Worker(database, settings, profiles=["tiny-40"], max_jobs=1).run().done == 1
    )  # the base job
    return database, settings, pid


def test_sigkilled_worker_job_is_completed_by_another_worker_once(slow_reg, db_url):
    db, settings, pid = slow_reg
    first = _worker_proc(db_url, settings.home, "--lease-seconds", "2")
    try:
        job = _wait_running_lora(db)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
        first.stdout.close()
        first.stderr.close()
    # the dead worker's lease runs out (its last heartbeat may have renewed it just before)
    deadline = time.monotonic() + 120
    while True:
        with db.read() as s:
            expires = s.get(SignJob, job.id).lease_expires_at
        if expires < time.time():  # the database's clock is this machine's
            break
        assert time.monotonic() < deadline, "the dead worker's lease never expired"
        time.sleep(0.1)
    second = _worker_proc(db_url, settings.home, "--once", "--lease-seconds", "2")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    with db.read() as s:
        done = s.get(SignJob, job.id)
        n = s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar_one()
    assert done.state == "done" and done.attempts == 2 and n == 1
    assert from_blob(_signatures(db, pid)[41].direction).shape == (32,)


@pytest.mark.parametrize(
    "db_url", ["sqlite"], indirect=True
)  # lease logic is backend-neutral (test_queue)
def test_sigterm_releases_the_lease_and_the_job_is_done_later(slow_reg, db_url):
    db, settings, pid = slow_reg
    worker = _worker_proc(db_url, settings.home)
    job = _wait_running_lora(db)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert "released" in err
    with db.read() as s:
        released = s.get(SignJob, job.id)
    assert released.state == "queued" and released.attempts == 0 and released.lease_token is None
    again = _worker_proc(db_url, settings.home, "--once")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert set(_signatures(db, pid)) == {41}


def test_claim_can_be_limited_to_job_ids(database):
    """`sign` works only on the jobs it asked for, even when the queue holds others."""
    from registry.models import Version
    from registry.profiles import get_or_create_profile

    q = JobQueue(database)
    with database.write() as s:
        pid = get_or_create_profile(s, "p", {}).id
        s.add_all([Version(id=i) for i in (1, 2, 3)])
        s.flush()
        for i in (1, 2, 3):
            q.enqueue(s, profile_id=pid, version_id=i)
        ids = dict(s.execute(sa.select(SignJob.version_id, SignJob.id)).all())
    lease = q.claim("w", job_ids=[ids[3]])
    assert lease.version_id == 3
    assert q.claim("w", job_ids=[ids[3]]) is None
    assert q.claim("w").version_id == 1


def test_a_file_edited_since_it_was_hashed_is_not_signed(reg, tmp_path):
    """Scanned files are hardlinked, so their owner can edit the stored bytes: the worker re-hashes first."""
    db, settings, profile, pid = reg
    path = lf.write_kohya_lora(tmp_path / "mine.safetensors", strength=0.5, seed=4)
    _enqueue(db, settings, pid, {11: path})
    with db.read() as s:
        stored = settings.artifacts.path(queueing.verified_file(s, 11).local_path)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01  # one bit of tensor data, as an in-place edit would change it
    stored.write_bytes(bytes(data))
    Worker(db, settings, profiles=["tiny"], once=True, poll_seconds=0.1).run()
    with db.read() as s:
        job = s.execute(sa.select(SignJob).where(SignJob.version_id == 11)).scalars().one()
    assert "changed since it was hashed" in (job.last_error or "")
    assert 11 not in _signatures(db, pid)
