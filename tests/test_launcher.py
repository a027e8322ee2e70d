"""The multi-worker launcher's supervision, without models or a database (the fleet tests in
test_scale_out run it with real workers on PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from signer.launcher import Launcher, plan_devices
from tests.conftest import REPO, run_cli


def test_a_worker_that_keeps_failing_at_start_is_restarted_with_backoff_then_given_up():
    said = []
    launcher = Launcher(
        ["cpu", "cpu"],
        [],
        python="/bin/false",
        say=said.append,
        restart_initial=0.1,
        restart_cap=0.2,
        max_quick_failures=4,
    )
    t0 = time.monotonic()
    assert launcher.run(poll=0.02) == 1
    assert time.monotonic() - t0 >= 0.1 + 0.2 + 0.2  # the backoff doubled up to its cap
    for label in ("w1 cpu", "w2 cpu"):
        mine = [m for m in said if f"worker {label} " in m]
        restarts = [m for m in mine if "restarting it in" in m]
        assert [m.rsplit(" in ", 1)[1] for m in restarts] == ["0.1 s", "0.2 s", "0.2 s"]
        assert sum("started worker" in m for m in mine) == 4
        assert mine[-1].endswith(
            "failed 4 times in a row, each soon after starting: not restarting it"
        )


def test_workers_that_finish_cleanly_are_not_restarted():
    said = []
    assert Launcher(["cpu"] * 3, [], python="/bin/true", say=said.append).run(poll=0.02) == 0
    assert sum("started worker" in m for m in said) == 3 and not any(
        "restarting" in m for m in said
    )


def test_cpu_workers_share_the_cores_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("signer.launcher.cpu_count", lambda: 8)
    assert Launcher(["cpu"] * 4, []).env["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in Launcher(["cuda:0", "cuda:1"], []).env
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert Launcher(["cpu"] * 4, []).env["OMP_NUM_THREADS"] == "3"


def test_plan_devices(monkeypatch):
    monkeypatch.setattr("signer.launcher.cuda_devices", lambda: ["cuda:0", "cuda:1"])
    assert plan_devices("all", 1) == ["cuda:0", "cuda:1"]
    assert plan_devices("all", 2) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert plan_devices("cpu", 3) == ["cpu"] * 3


def test_device_all_without_cuda_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("signer", "work", "--device", "all")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--device cpu" in lines[0], (
        proc.stderr
    )


def test_a_worker_gets_sigterm_when_its_launcher_is_killed(tmp_path):
    """die_with_launcher (called by `signer work` under the launcher): no orphaned workers."""
    marker = tmp_path / "got-sigterm"
    worker = (
        f"import os, signal, sys, time; from signer.launcher import die_with_launcher; "
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0))); "
        f"die_with_launcher(); print('ready', flush=True); time.sleep(60)"
    )
    launcher = (
        f"import os, subprocess, sys, time; "
        f"env = {{**os.environ, 'CARLOS_REG_LAUNCHER_PID': str(os.getpid())}}; "
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}], env=env, stdout=subprocess.PIPE, text=True); "
        f"print(p.stdout.readline().strip(), p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    ready, _child = proc.stdout.readline().split()
    assert ready == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
