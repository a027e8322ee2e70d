"""Several worker processes on one machine: ``carlos-reg signer work --device all`` (one per
visible CUDA device) or ``--workers N`` (N per device, e.g. ``--device cpu --workers 2``).

The launcher is a small supervisor; it loads no model and holds no lease. It:
- starts each worker as ``python -m registry signer work --device DEV ...`` with the same
  options, the registry URL and data dir passed in the environment (not on the command line,
  where ``ps`` would show a password); CPU workers share the cores (``OMP_NUM_THREADS`` = cores
  / workers unless set);
- prefixes every line a worker writes to stderr with its label (``[w2 cuda:1]``);
- forwards SIGTERM/SIGINT to the workers (each releases its current job's lease and exits) and
  then waits for them; a worker whose launcher dies gets SIGTERM too (Linux ``PDEATHSIG``, set
  by the worker itself: ``die_with_launcher``);
- restarts a worker that crashed (non-zero exit, killed by a signal) after a backoff of 1, 2, 4, ...
  up to 60 s; a worker that failed 5 times in a row, each within a minute of its start, is not
  restarted again (a configuration error will not fix itself);
- exits when every worker has exited for good: 0 if all ended cleanly (``--once``/``--max-jobs``
  done, or stopped by a signal), 1 otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from registry.errors import CarlosError
from registry.output import clean
from registry.retry import RetryPolicy
from registry.settings import environment

RESTART_INITIAL_SECONDS = 1.0
RESTART_CAP_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 60.0
MAX_QUICK_FAILURES = 5


def cuda_devices() -> list[str]:
    """``cuda:0`` ... for every CUDA device this process can see (honours CUDA_VISIBLE_DEVICES)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)]


def plan_devices(device: str, workers: int) -> list[str]:
    """The device of each worker process to start."""
    if device == "all":
        gpus = cuda_devices()
        if not gpus:
            raise CarlosError(
                "--device all starts one worker per CUDA device, but this machine has no CUDA device "
                "visible to torch; use --device cpu (with --workers N for several)"
            )
        return [d for d in gpus for _ in range(workers)]
    return [device] * workers


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


LAUNCHER_PID_ENV = "CARLOS_REG_LAUNCHER_PID"


def die_with_launcher() -> None:
    """In a worker started by the launcher: get SIGTERM when the launcher dies (Linux), and stop
    at once if it is already gone. Called by ``signer work`` itself (no ``preexec_fn``: that is
    unsafe in a process with threads, and the launcher has its relay threads)."""
    launcher = environment().get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != launcher:  # the launcher died before the line above
        raise CarlosError(
            f"the launcher (pid {launcher}) that started this worker is gone; not starting"
        )


@dataclass
class Slot:
    label: str
    device: str
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None
    finished: bool = False
    clean: bool = True
    reader: threading.Thread | None = field(default=None, repr=False)


class Launcher:
    def __init__(
        self,
        devices: list[str],
        worker_args: list[str],
        *,
        global_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = lambda m: None,
        python: str = sys.executable,
        restart_initial: float = RESTART_INITIAL_SECONDS,
        restart_cap: float = RESTART_CAP_SECONDS,
        healthy_after: float = HEALTHY_AFTER_SECONDS,
        max_quick_failures: int = MAX_QUICK_FAILURES,
    ):
        self.slots = [Slot(f"w{i + 1} {d}", d) for i, d in enumerate(devices)]
        self.worker_args, self.global_args = list(worker_args), list(global_args or [])
        self.env = dict(env if env is not None else environment().for_subprocess())
        self._say, self.python = say, python
        self.env[LAUNCHER_PID_ENV] = str(os.getpid())
        self.restart_initial, self.restart_cap = restart_initial, restart_cap
        self.healthy_after, self.max_quick_failures = healthy_after, max_quick_failures
        self.stopping: str | None = None
        self._lock = threading.Lock()
        cpu_workers = sum(s.device == "cpu" for s in self.slots)
        if cpu_workers > 1 and "OMP_NUM_THREADS" not in self.env:
            self.env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // cpu_workers))

    # ------------------------------------------------------------------ children

    def _start(self, slot: Slot) -> None:
        cmd = [
            self.python,
            "-m",
            "registry",
            *self.global_args,
            "signer",
            "work",
            "--device",
            slot.device,
            *self.worker_args,
        ]
        slot.proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
        )
        slot.started_at, slot.restart_at = time.monotonic(), None
        slot.reader = threading.Thread(
            target=self._relay,
            args=(slot.label, slot.proc.stderr),
            daemon=True,
            name=f"relay-{slot.label}",
        )
        slot.reader.start()
        self.say(f"launcher: started worker {slot.label} (pid {slot.proc.pid})")

    def say(self, message: str) -> None:
        with self._lock:
            self._say(message)

    def _relay(self, label: str, stream) -> None:
        for line in stream:
            with self._lock:
                sys.stderr.write(f"[{label}] {clean(line.rstrip(chr(10)), one_line=True)}\n")
                sys.stderr.flush()
        stream.close()

    def _signal_children(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _on_signal(self, signum, frame) -> None:
        self.stopping = signal.Signals(signum).name
        self._signal_children(signum)

    def _exited(self, slot: Slot, code: int) -> None:
        slot.reader.join(timeout=5)
        slot.proc = None
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        if self.stopping or code == 0:
            slot.finished, slot.clean = (
                True,
                code == 0
                or (self.stopping is not None and code in (-signal.SIGTERM, -signal.SIGINT, 130)),
            )
            if code != 0:
                self.say(f"launcher: worker {slot.label} {how}")
            return
        ran = time.monotonic() - slot.started_at
        slot.quick_failures = slot.quick_failures + 1 if ran < self.healthy_after else 1
        if slot.quick_failures >= self.max_quick_failures:
            slot.finished, slot.clean = True, False
            self.say(
                f"launcher: worker {slot.label} {how}; it failed {slot.quick_failures} times in a row, "
                "each soon after starting: not restarting it"
            )
            return
        delay = RetryPolicy(
            initial=self.restart_initial, cap=self.restart_cap, jitter=0.0, deadline=None
        ).delay(slot.quick_failures)
        slot.restart_at = time.monotonic() + delay
        self.say(f"launcher: worker {slot.label} {how}; restarting it in {delay:.3g} s")

    # ------------------------------------------------------------------ loop

    def run(self, poll: float = 0.2) -> int:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            for slot in self.slots:
                self._start(slot)
            if self.stopping:  # a signal that came while starting
                self._signal_children(getattr(signal, self.stopping))
            while not all(s.finished for s in self.slots):
                time.sleep(poll)
                now = time.monotonic()
                for slot in self.slots:
                    if slot.finished:
                        continue
                    if slot.proc is not None:
                        code = slot.proc.poll()
                        if code is not None:
                            self._exited(slot, code)
                    elif self.stopping:
                        slot.finished = True  # waiting for a restart: not any more
                    elif slot.restart_at is not None and now >= slot.restart_at:
                        self._start(slot)
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
        return 0 if all(s.clean for s in self.slots) else 1
