"""The CLI contract: help without torch, --json documents, REF forms, one-line errors."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli, run_json
from tests.test_import import _small_table


@pytest.fixture
def small_registry(tmp_path, sqlite_url):
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table(_small_table()), path)
    run_cli("--db", sqlite_url, "import", "carlos", str(path), check=True)
    return sqlite_url


def test_help_lists_commands_and_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from registry.cli import main
        sys.argv = ["carlos-reg", "--help"]
        try:
            main()
        except SystemExit:
            pass
        heavy = [m for m in ("torch", "diffusers", "open_clip", "transformers") if m in sys.modules]
        print("HEAVY:", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY: []" in proc.stdout, proc.stdout + proc.stderr
    for command in ("db", "loras", "show", "import", "plugins"):
        assert f"  {command} " in proc.stdout


def test_plugins_json_lists_builtins_with_their_hooks():
    doc = run_json("plugins")
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert {"db", "plugins", "listing", "import"} <= set(by_name)
    assert all(p["builtin"] for p in by_name.values())
    assert by_name["listing"]["hooks"] == ["register_commands"]


def test_loras_json_fields_and_filters(small_registry):
    doc = run_json("--db", small_registry, "loras")
    assert doc["total"] == 3 and doc["count"] == 3
    first = doc["loras"][0]
    for field in ("version_id", "model_id", "name", "base_model", "url", "strength", "consistency"):
        assert field in first
    assert first["name"] == "Ink Style" and first["url"] == "https://civitai.com/models/5?modelVersionId=1000"
    assert first["ref"] == "civitai:5@1000"
    assert run_json("--db", small_registry, "loras", "--unsigned")["total"] == 0
    assert run_json("--db", small_registry, "loras", "--signed", "--limit", "1")["count"] == 1
    assert run_json("--db", small_registry, "loras", "--base-model", "Pony")["total"] == 0
    assert run_json("--db", small_registry, "loras", "--profile", "carlos-published")["total"] == 3
    proc = run_cli("--db", small_registry, "loras", "--profile", "nope")
    assert proc.returncode == 1 and "no signer profile 'nope'" in proc.stderr


@pytest.mark.parametrize("ref", ["1000", "civitai:5@1000", "urn:air:sdxl:lora:civitai:5@1000", "Ink Style",
                                 "ink st", "civitai:5", "CIVITAI:5@1000"])
def test_show_resolves_every_ref_form(small_registry, ref):
    doc = run_json("--db", small_registry, "show", ref)
    assert doc["version_id"] == 1000 and doc["model_id"] == 5
    assert doc["signatures"][0]["profile"] == "carlos-published"
    assert doc["signatures"][0]["strength"] == 1.5


@pytest.mark.parametrize("ref, message", [
    ("999", "no LoRA version 999"),
    ("civitai:6@1000", "belongs to model 5, not 6"),
    ("civitai:77", "no versions of Civitai model 77"),
    ("local:4", "no LoRA version -4"),
    ("no such lora", "no LoRA matches 'no such lora'"),
    ("i", "matches several LoRAs"),
])
def test_show_errors_are_one_clear_line(small_registry, ref, message):
    proc = run_cli("--db", small_registry, "show", ref)
    assert proc.returncode == 1
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_table_output_for_people(small_registry):
    proc = run_cli("--db", small_registry, "loras", check=True)
    assert "Ink Style" in proc.stdout and "carlos-published" in proc.stdout
    proc = run_cli("--db", small_registry, "show", "1000", check=True)
    assert "[carlos-published]" in proc.stdout


@pytest.mark.parametrize("url, message", [
    ("postgresql+psycopg://nobody@127.0.0.1:1/x", "cannot reach the registry database"),
    ("mysql://x@y/z", "unsupported database mysql://"),
    ("definitely not a url", "not a database URL"),
    ("sqlite:////proc/forbidden/registry.db", "cannot create the folder"),
])
def test_bad_database_urls_fail_cleanly(url, message):
    proc = run_cli("--db", url, "loras")
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_password_in_db_url_is_never_printed():
    proc = run_cli("--db", "postgresql+psycopg://u:hunter2secret@127.0.0.1:1/x", "loras")
    assert proc.returncode == 1 and "hunter2secret" not in proc.stderr + proc.stdout


def test_verbose_shows_traceback():
    proc = run_cli("-v", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x", "loras")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_two_processes_writing_sqlite_at_once_never_see_locked(sqlite_url):
    """Read-then-write transactions from two processes: BEGIN IMMEDIATE makes them queue, not fail."""
    code = textwrap.dedent("""
        import sys
        import sqlalchemy as sa
        from registry.db import Database
        from registry.migrate import ensure_schema
        from registry.models import VectorCache
        db = Database(sys.argv[1]); ensure_schema(db)
        for i in range(200):
            with db.write() as s:
                n = s.execute(sa.select(sa.func.count()).select_from(VectorCache)).scalar_one()
                s.add(VectorCache(namespace=sys.argv[2], key=f"{i}-{n}", dim=1, data=b"\\0\\0\\0\\0"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, sqlite_url, f"p{i}"], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    from registry.db import Database
    db = Database(sqlite_url)
    with db.read() as s:
        import sqlalchemy as sa
        from registry.models import VectorCache
        assert s.execute(sa.select(sa.func.count()).select_from(VectorCache)).scalar_one() == 400
    db.dispose()


def test_processes_opening_a_fresh_sqlite_registry_together_never_see_locked(tmp_path):
    """Switching a new file to WAL takes an exclusive lock that SQLite refuses at once (no busy wait)
    when another connection holds it: eight processes open the same fresh registry at one instant,
    round after round, and all of them get a working write connection."""
    rounds = 12
    code = textwrap.dedent("""
        import sys, time
        import sqlalchemy as sa
        from registry.db import Database
        folder, start, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
        for r in range(rounds):
            db = Database(f"sqlite:///{folder}/r{r}.db")
            while time.time() < start + r * 0.4:
                pass
            with db.engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            db.dispose()
    """)
    import time
    start = time.time() + 4.0  # after every interpreter has imported SQLAlchemy
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(start), str(rounds)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    import sqlite3
    for r in range(rounds):
        with sqlite3.connect(tmp_path / f"r{r}.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 8
