"""`carlos-reg demo` (what `make demo` runs): offline, end to end, rerunnable."""
from __future__ import annotations

import shlex
import sqlite3

import pytest

from tests.conftest import run_cli


@pytest.mark.timeout(3600)  # two whole demos on a CPU; under a load of 6 one took 8 minutes
def test_demo_runs_end_to_end_and_again(tmp_path):
    target = tmp_path / "demo"
    for _ in range(2):  # a rerun starts fresh in the same directory
        proc = run_cli("demo", "--dir", str(target), timeout=1700)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "meaningless" in out and "Traceback" not in out
    assert "LoHa" in out and "quarantined" in out and "pickle" in out  # every bad file explained
    assert "near" in proc.stdout  # the re-upload is found as a near duplicate
    assert (target / "copyright-report.html").read_text().startswith("<!doctype html>")
    # every command the demo echoes is a valid shell line: re-run each (but the crawl, whose mirror is gone)
    echoed = [shlex.split(line[2:]) for line in proc.stderr.splitlines() if line.startswith("$ carlos-reg ")]
    assert len(echoed) >= 10 and ["carlos-reg", "search", "ink wash painting", "-k", "5", "--no-filter"] in echoed
    env = {"CARLOS_REG_HOME": str(target / "home"), "CARLOS_REG_PROFILE": "tiny",
           "CARLOS_REG_MODELS": str(target / "models"), "HF_HUB_OFFLINE": "1"}
    for argv in echoed:
        if argv[1] != "crawl":
            again = run_cli(*argv[1:], env=env)
            assert again.returncode == 0, (argv, again.stderr[-2000:])
    db = sqlite3.connect(target / "home" / "registry.db")
    states = dict(db.execute("SELECT state, count(*) FROM sign_job WHERE kind = 'lora' GROUP BY state").fetchall())
    assert states == {"done": 9, "dead": 1}
    assert db.execute("SELECT count(*) FROM version").fetchone()[0] == 12  # the SD 1.5 LoRA was dropped
    db.close()


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_cli("demo", "--dir", str(tmp_path))
    assert proc.returncode == 1 and "not a demo directory" in proc.stderr
    assert (tmp_path / "precious.txt").exists()
