"""The signer worker: claims leased jobs from the registry queue and runs them on one engine.

Contract:
- Jobs are claimed with a lease (``signer.claiming``); a heartbeat thread (``signer.heartbeat``)
  extends it. ``base`` jobs (one per profile) come first; a ``lora`` job is claimed only once its profile's base cache exists, so a worker
  never regenerates the base branch and waits (or takes other work) while another worker
  computes it. If a profile's base job is dead, its LoRA jobs fail with that reason.
- A profile is run only if its registry row matches this machine's definition (same name and
  hash); jobs of other profiles are left for workers that have them.
- The pipeline is loaded once and reused (also across profiles that share the base model and
  CLIP weights); LoRAs are loaded and unloaded per job.
- A bad LoRA fails its job for good (``LoraRejected``: the reason is the job's last error) and
  the worker goes on; an unexpected error fails the job retryably; missing weights release the
  job untried and stop the worker with the one-line reason.
- SIGTERM/SIGINT: the current job stops at the next UNet step and its lease is released (it is
  not counted as an attempt); the worker then exits. A lost lease (another worker took the job
  over) abandons the job without writing anything.
- The signature (or base cache) and the job's completion are written in one transaction.
- The database may go away for a while (a restart, a failover): every database step is retried
  with capped backoff on transient connection errors (``registry.retry``) and the worker goes
  on where it was. A heartbeat that cannot reach the database keeps trying (only a token
  mismatch is a lost lease); the result write is retried as one transaction, fenced by the
  lease token, so it lands once. SIGTERM during an outage stops the retries: the job's lease
  then expires by itself. After ``$CARLOS_REG_DB_RETRY_SECONDS`` of outage the worker exits with
  one line.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from registry.errors import CarlosError, LeaseLost, first_line
from registry.models import Version
from registry.queue import JobQueue, Lease, worker_name
from registry.retry import DatabaseUnavailable, describe, is_transient
from registry.states import JobState
from signer import queueing, results
from signer.claiming import JobClaimer
from signer.errors import Interrupted, SignerError
from signer.heartbeat import Heartbeat
from signer.local_loras import check_stored_file
from signer.profiles import Profile

log = logging.getLogger(__name__)
_ENGINE: dict = {}  # the one loaded engine of this process: {"engine": Engine}


@dataclass
class WorkerReport:
    done: int = 0
    failed: int = 0
    released: int = 0
    interrupted: str | None = None
    events: list = field(default_factory=list)  # (job_id, kind, version_id, outcome, detail)


def _load_key(p: Profile) -> tuple:
    s = p.settings
    return (
        p.base_model_location,
        s["dtype"],
        s.get("vae"),
        s["scheduler"],
        s["clip_model"],
        s["clip_pretrained"],
        s.get("clip_dtype"),
        p.clip_checkpoint,
    )


def get_engine(profile: Profile, device: str):
    """The process's engine for a profile, reusing the loaded pipeline and CLIP when they match."""
    from signer.engine import Engine

    cur = _ENGINE.get("engine")
    if (
        cur is not None
        and str(cur.device) == str(device)
        and _load_key(cur.profile) == _load_key(profile)
    ):
        if cur.profile.hash != profile.hash:
            cur = Engine(profile, device, pipe=cur.pipe, clip=cur.clip)
            _ENGINE["engine"] = cur
        return cur
    _ENGINE.pop("engine", None)  # free the old pipeline before loading another
    cur = Engine(profile, device)
    _ENGINE["engine"] = cur
    return cur


def _loaded_profile_hash() -> str | None:
    cur = _ENGINE.get("engine")
    return None if cur is None else cur.profile.hash


class Worker:
    def __init__(
        self,
        db,
        settings,
        *,
        device: str = "cpu",
        profiles: list[str] | None = None,
        job_ids: list[int] | None = None,
        once: bool = False,
        max_jobs: int | None = None,
        lease_seconds: float | None = None,
        poll_seconds: float = 2.0,
        progress=None,
        say=lambda msg: None,
    ):
        self.db, self.settings, self.device = db, settings, device
        self.profile_names = list(profiles) if profiles else None
        self.job_ids = list(job_ids) if job_ids is not None else None
        self.once, self.max_jobs, self.poll_seconds = once, max_jobs, poll_seconds
        self.queue = JobQueue(db, **({"lease_seconds": lease_seconds} if lease_seconds else {}))
        self.queue.wait = self._wait  # a stop request cuts the queue's retries short
        self.owner = worker_name()
        self.progress = progress  # a signer.progress.Bars-like object or None
        self.say = say
        self.report = WorkerReport()
        self._signal: str | None = None
        self._bases: dict[int, object] = {}
        self.claimer = JobClaimer(
            db,
            settings,
            self.queue,
            self.owner,
            profile_names=self.profile_names,
            job_ids=self.job_ids,
        )

    # ---------------------------------------------------------------- loop

    def run(self) -> WorkerReport:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            while self._signal is None:
                if (
                    self.max_jobs is not None
                    and self.report.done + self.report.failed >= self.max_jobs
                ):
                    break
                try:
                    lease = self._retry(
                        lambda: self.claimer.claim(_loaded_profile_hash()), "looking for a job"
                    )
                    if lease is None:
                        if self.job_ids is not None and not self._retry(
                            self.claimer.requested_pending, "checking the requested jobs"
                        ):
                            break
                        if (
                            self.once
                            and self.job_ids is None
                            and not self._retry(
                                self.claimer.waiting_for_base, "checking for a base job"
                            )
                        ):
                            break
                        self._wait(self.poll_seconds)
                        continue
                    self._run_job(lease)
                except Exception as exc:
                    if self._signal is not None and is_transient(exc):
                        self.say(
                            f"stopping ({self._signal}) while the registry database is unreachable: "
                            f"{describe(exc)}"
                        )
                        break
                    raise
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
        self.report.interrupted = self._signal
        return self.report

    def _on_signal(self, signum, frame) -> None:
        self._signal = signal.Signals(signum).name

    def request_stop(self, reason: str = "shutdown") -> None:
        """Stop as on SIGTERM (the current job finishes its batch, then releases its lease); thread-safe."""
        self._signal = reason

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when a stop was requested."""
        end = time.monotonic() + seconds
        while self._signal is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.1))
        return True

    def _retry(self, fn, what: str):
        """Run one database step, riding out a database outage (a stop request ends the wait)."""
        return self.queue.retried(fn, what)  # the queue waits with self._wait

    # ---------------------------------------------------------------- running

    def _run_job(self, lease: Lease) -> None:
        profile = self.claimer.profiles[lease.profile_id]
        beat = Heartbeat(self.queue, lease)
        beat.start()  # before loading the models: a load longer than the lease must not lose the job
        try:
            engine = get_engine(profile, self.device)
        except BaseException as exc:
            beat.stop()
            if isinstance(exc, CarlosError) and not isinstance(exc, DatabaseUnavailable):
                self.queue.release(lease)
            raise

        def stop():
            if beat.lost:
                return "lease lost"
            if beat.error:
                return f"heartbeat failed: {beat.error}"
            return f"received {self._signal}" if self._signal else None

        try:
            if lease.kind == "base":
                detail = self._base_job(engine, lease, stop)
            else:
                detail = self._lora_job(engine, lease, stop)
            self._event(lease, "done", detail)
            self.report.done += 1
        except Interrupted as exc:
            self._interrupted(lease, beat, exc)
        except LeaseLost as exc:
            self._event(lease, "lost", str(exc))
        except SignerError as exc:  # LoraRejected and the like: the file or the setup, for good
            self._fail(lease, str(exc), retryable=False)
        except (
            DatabaseUnavailable
        ):  # retries gave up: nothing can be written; the lease expires by itself
            raise
        except CarlosError:
            self.queue.release(lease)
            raise
        except Exception as exc:
            self._unexpected(lease, exc)
        finally:
            beat.stop()
            if self.progress is not None:
                self.progress.job_finished()

    def _interrupted(self, lease: Lease, beat: Heartbeat, exc: Interrupted) -> None:
        """The job stopped between UNet steps: its lease is gone, its heartbeat failed, or a signal came."""
        if beat.lost:
            self._event(lease, "lost", "another worker took the job over; nothing written")
        elif beat.error:
            self._fail(lease, f"heartbeat failed: {beat.error}", retryable=True)
        else:
            self.queue.release(lease)
            self.report.released += 1
            self._event(lease, "released", str(exc))

    def _unexpected(self, lease: Lease, exc: Exception) -> None:
        if is_transient(
            exc
        ):  # the database went away (and a stop cut the retry short): not the job's fault
            if self._signal is not None:
                raise exc
            self.queue.release(lease)
            self.report.released += 1
            self._event(lease, "released", f"database unreachable: {describe(exc)}")
            return
        # a bug or another unexpected failure: retried while attempts remain
        log.exception("job %s failed", lease.job_id)
        self._fail(lease, f"{type(exc).__name__}: {first_line(exc, limit=500)}", retryable=True)

    def _fail(self, lease: Lease, reason: str, *, retryable: bool) -> None:
        try:
            state = self.queue.fail(lease, reason, retryable=retryable)
        except LeaseLost:
            self._event(lease, "lost", reason)
            return
        self.report.failed += 1
        self._event(lease, "failed" if state == "dead" else "retry", reason)

    def _event(self, lease: Lease, outcome: str, detail: str) -> None:
        self.report.events.append((lease.job_id, lease.kind, lease.version_id, outcome, detail))
        what = (
            f"base branch of profile {self.claimer.profiles[lease.profile_id].name}"
            if lease.kind == "base"
            else f"version {lease.version_id}"
        )
        self.say(f"job {lease.job_id} ({what}): {outcome}: {detail}")

    def _base_job(self, engine, lease: Lease, stop) -> str:
        artifacts = self.settings.artifacts

        def cached() -> bool:
            with self.db.read() as s:
                return results.base_cache_row(s, lease.profile_id) is not None

        if self._retry(cached, f"reading job {lease.job_id}"):
            self.queue.complete_with(lease, lambda s: None)
            return "already cached"
        # one line per computation: the fleet computes a profile's base branch once (tests count these)
        self.say(
            f"job {lease.job_id} (base branch of profile {engine.profile.name}): computing "
            f"{len(engine.samples)} samples"
        )
        if self.progress is not None:
            self.progress.start_job(f"base branch [{engine.profile.name}]", len(engine.samples))
        t0 = time.monotonic()
        base = engine.base_branch(
            progress=self.progress.advance if self.progress else None, stop=stop
        )
        n_bad = int(base.degenerate.sum())
        if n_bad:
            raise SignerError(
                f"{n_bad} of {len(base.degenerate)} base images are NaN or black (an fp16 VAE "
                "overflow?): use a VAE that does not overflow in this dtype, or dtype float32"
            )
        committed = self.queue.complete_with(
            lease, lambda s: results.save_base(s, artifacts, lease.profile_id, base, lease.job_id)
        )
        self._bases[lease.profile_id] = base
        return f"{len(base.features)} samples in {time.monotonic() - t0:.1f} s" + _already(
            committed
        )

    def _lora_job(self, engine, lease: Lease, stop) -> str:
        artifacts = self.settings.artifacts
        base, words, name, sha, rel = self._retry(
            lambda: self._lora_inputs(lease, engine.profile.name), f"reading job {lease.job_id}"
        )
        self._bases[lease.profile_id] = base
        check_stored_file(artifacts, rel, sha, lease.version_id)
        if self.progress is not None:
            self.progress.start_job(name or f"version {lease.version_id}", len(engine.samples))
        t0 = time.monotonic()
        outcome = engine.sign_lora(
            artifacts.path(rel),
            words,
            base,
            progress=self.progress.advance if self.progress else None,
            stop=stop,
        )
        committed = self.queue.complete_with(
            lease,
            lambda s: results.save_signature(
                s,
                artifacts,
                version_id=lease.version_id,
                profile_id=lease.profile_id,
                outcome=outcome,
                file_sha256=sha,
                job_id=lease.job_id,
            ),
        )
        st = outcome.stats
        return (
            f"strength {st.strength:.4g}, consistency {st.consistency:.4g}, {st.n} samples in "
            f"{time.monotonic() - t0:.1f} s"
            + ("" if outcome.valid else ", NOT VALID")
            + (f" [{', '.join(outcome.flags)}]" if outcome.flags else "")
            + _already(committed)
        )

    def _lora_inputs(self, lease: Lease, profile_name: str) -> tuple:
        """(base branch, trigger words, file name, SHA-256, artifact path) of a LoRA job; a
        ``SignerError`` when the profile's base branch failed or the version has no file to sign."""
        with self.db.read() as s:
            base = self._bases.get(lease.profile_id) or results.load_base(
                s, self.settings.artifacts, lease.profile_id
            )
            if base is None:
                job = queueing.base_job(s, lease.profile_id)
                reason = (
                    job.last_error
                    if job is not None and job.state == JobState.DEAD
                    else "no base cache"
                )
                raise SignerError(f"the base branch of profile {profile_name!r} failed: {reason}")
            version = s.get(Version, lease.version_id)
            f = queueing.verified_file(s, lease.version_id)
            if version is None or f is None:
                raise SignerError(f"version {lease.version_id} has no verified LoRA file to sign")
            return base, queueing.trigger_list(version), f.name, f.sha256, f.local_path


def _already(committed: bool) -> str:
    return "" if committed else " (committed by an earlier try whose answer was lost)"
