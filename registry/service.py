"""The scheduled crawl-and-index run: steps from plugins, one run at a time across all services.

Steps arrive through ``register_nightly_steps`` (the crawler's crawl, the signer's enqueue and
local signing, ...) and run in order. A database lease (``registry.locks``) makes sure two
``serve`` processes — on one machine or many, sharing one registry — never run at once; the
one that finds the lease taken records a ``skipped`` run. Every run is recorded with its
per-step counts and errors. A failing step does not stop the next steps, nor the next run.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Callable

import sqlalchemy as sa

from registry.locks import DbLock
from registry.models import ServiceRun, utcnow
from registry.queue import worker_name

log = logging.getLogger(__name__)
NIGHTLY_LOCK = "nightly-run"


def get_nightly_steps() -> list[tuple[int, str, Callable]]:
    """The registered steps as ``(order, name, function)``, in the order they run."""
    from registry.plugins import collect

    def step(name: str, function: Callable, order: int = 500) -> tuple[int, str, Callable]:
        return int(order), name, function

    return sorted(collect("register_nightly_steps", step), key=lambda s: (s[0], s[1]))


def _record(app, run_id: int | None = None, **values) -> int:
    with app.db.write() as session:
        if run_id is None:
            run = ServiceRun(**values)
            session.add(run)
            session.flush()
            return run.id
        session.execute(sa.update(ServiceRun).where(ServiceRun.id == run_id).values(**values))
        return run_id


def run_nightly(
    app, options: dict | None = None, *, trigger: str = "schedule", owner: str | None = None
) -> dict:
    """Run every nightly step once, unless another service is running them; returns the run record."""
    options = dict(options or {})
    stop: threading.Event = options.setdefault("stop", threading.Event())
    owner = owner or worker_name()
    lock = DbLock(app.db, NIGHTLY_LOCK, owner, ttl=options.get("lock_ttl", 120.0))
    now = utcnow()
    if not lock.acquire():
        holder = lock.holder()
        run_id = _record(
            app,
            owner=owner,
            trigger=trigger,
            status="skipped",
            started_at=now,
            finished_at=now,
            error=f"another service ({(holder or {}).get('owner', 'unknown')}) is running the job",
        )
        return get_run(app, run_id)
    lock.keep_alive()
    run_id = _record(app, owner=owner, trigger=trigger, status="running", started_at=now)
    results: dict = {}
    status, error = "ok", None
    try:
        for _order, name, function in get_nightly_steps():
            if stop.is_set():
                status = "interrupted"
                break
            log.info("nightly run %s: step %s", run_id, name)
            try:
                results[name] = function(app, options) or {}
            except Exception as exc:  # recorded; the next steps still run
                results[name] = {"error": f"{type(exc).__name__}: {exc}".strip()}
                log.warning("nightly step %s failed:\n%s", name, traceback.format_exc())
            if results[name].get("error"):
                status, error = "failed", f"step {name}: {results[name]['error']}"
            _record(app, run_id, steps=dict(results))
        if stop.is_set() and status == "ok":
            status = "interrupted"  # shutdown cut a step short: the run did not do all its work
    except BaseException as exc:
        status, error = "interrupted", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _record(app, run_id, status=status, finished_at=utcnow(), steps=results, error=error)
        lock.release()
    return get_run(app, run_id)


def _run_dict(r: ServiceRun) -> dict:
    return {
        "id": r.id,
        "owner": r.owner,
        "trigger": r.trigger,
        "status": r.status,
        "started_at": r.started_at.isoformat() if r.started_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "steps": r.steps or {},
        "error": r.error,
    }


def get_run(app, run_id: int) -> dict:
    with app.db.read() as session:
        return _run_dict(session.get(ServiceRun, run_id))


def recent_runs(app, limit: int = 10) -> list[dict]:
    with app.db.read() as session:
        rows = (
            session.execute(sa.select(ServiceRun).order_by(ServiceRun.id.desc()).limit(limit))
            .scalars()
            .all()
        )
        return [_run_dict(r) for r in rows]
