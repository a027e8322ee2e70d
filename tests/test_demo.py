"""`carlos-reg demo` (what `make demo` runs): offline, end to end, rerunnable."""

from __future__ import annotations

import json
import shlex
import sqlite3

import pytest

from plugins.demo import MARKER
from tests.conftest import run_cli


@pytest.mark.timeout(1800)  # one whole demo on a CPU; under a load of 6 it took 8 minutes
def test_demo_runs_end_to_end_and_starts_fresh(tmp_path):
    target = tmp_path / "demo"
    # a directory an earlier demo left behind (its marker) with stale data: a rerun starts fresh
    (target / "home").mkdir(parents=True)
    (target / MARKER).write_text("made by carlos-reg demo\n")
    (target / "home" / "registry.db").write_text("stale, not even SQLite")
    (target / "leftover.txt").write_text("from an earlier run")
    proc = run_cli("demo", "--dir", str(target), timeout=1700)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (target / "leftover.txt").exists() and (target / MARKER).exists()
    out = proc.stdout + proc.stderr
    assert "meaningless" in out and "Traceback" not in out
    assert "LoHa" in out and "quarantined" in out and "pickle" in out  # every bad file explained
    assert (target / "copyright-report.html").read_text().startswith("<!doctype html>")
    # every command the demo echoes is a valid shell line: re-run each (but the crawl, whose mirror is gone)
    echoed = [
        shlex.split(line[2:])
        for line in proc.stderr.splitlines()
        if line.startswith("$ carlos-reg ")
    ]
    assert (
        len(echoed) >= 10
        and ["carlos-reg", "search", "ink wash painting", "-k", "5", "--no-filter"] in echoed
    )
    env = {
        "CARLOS_REG_HOME": str(target / "home"),
        "CARLOS_REG_PROFILE": "tiny",
        "CARLOS_REG_MODELS": str(target / "models"),
        "HF_HUB_OFFLINE": "1",
    }
    for argv in echoed:
        if argv[1] != "crawl":
            again = run_cli(*argv[1:], env=env)
            assert again.returncode == 0, (argv, again.stderr[-2000:])
    # the re-upload is found as the near duplicate of the LoRA it copies, and ranked first
    similar = json.loads(
        run_cli("similar", "Ink Wash Painting", "-k", "3", "--json", env=env, check=True).stdout
    )
    top = similar["results"][0]
    assert "re-upload" in top["name"] and top["duplicate"] == "near", similar["results"]
    assert all(r["duplicate"] is None for r in similar["results"][1:])
    db = sqlite3.connect(target / "home" / "registry.db")
    states = dict(
        db.execute(
            "SELECT state, count(*) FROM sign_job WHERE kind = 'lora' GROUP BY state"
        ).fetchall()
    )
    assert states == {"done": 9, "dead": 1}
    assert (
        db.execute("SELECT count(*) FROM version").fetchone()[0] == 12
    )  # the SD 1.5 LoRA was dropped
    db.close()


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_cli("demo", "--dir", str(tmp_path))
    assert proc.returncode == 1 and "not a demo directory" in proc.stderr
    assert (tmp_path / "precious.txt").exists()
