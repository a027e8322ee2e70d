"""The CLI contract: help without torch, --json documents, REF forms, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, run_cli, run_json

HEAVY = (
    "torch",
    "diffusers",
    "open_clip",
    "transformers",
    "numpy",
    "sqlalchemy",
    "sqlmodel",
    "aiohttp",
    "PIL",
)


def _imported_by(*argv: str) -> tuple[list[str], str]:
    code = textwrap.dedent(f"""
        import sys
        from registry.cli import main
        sys.argv = ["carlos-reg", *{list(argv)!r}]
        try:
            main()
        except SystemExit:
            pass
        print("HEAVY:", [m for m in {HEAVY!r} if m in sys.modules])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY:")), "")
    return eval(line[len("HEAVY:") :]) if line else ["no output"], proc.stdout + proc.stderr


def test_help_lists_commands_and_imports_no_heavy_module():
    heavy, out = _imported_by("--help")
    assert heavy == [], out
    for command in ("db", "loras", "show", "import", "plugins", "sign", "search", "crawl"):
        assert f"  {command} " in out
    for argv in (
        ["--version"],
        ["plugins", "--json"],
        ["show", "--help"],
        ["search", "--help"],
        ["signer", "--help"],
        ["report", "copyright", "--help"],
        ["scan", "--help"],
        ["export", "signatures", "--help"],
        ["compare", "--help"],
        ["crawl", "--help"],
    ):
        heavy, out = _imported_by(*argv)
        assert heavy == [], (argv, out)


def test_plugins_json_lists_builtins_with_their_hooks():
    doc = run_json("plugins")
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert {"db", "plugins", "listing", "import"} <= set(by_name)
    from registry.plugins import DEFAULT_PLUGINS

    # installed third-party plugins (CI installs the example one) are listed, not as built-ins
    assert all(p["builtin"] == (name in DEFAULT_PLUGINS) for name, p in by_name.items())
    assert by_name["listing"]["hooks"] == ["register_commands"]


def test_loras_json_fields_and_filters(small_registry):
    doc = run_json("--db", small_registry, "loras")
    assert doc["total"] == 3 and doc["count"] == 3
    first = doc["loras"][0]
    for field in ("version_id", "model_id", "name", "base_model", "url", "strength", "consistency"):
        assert field in first
    assert (
        first["name"] == "Ink Style"
        and first["url"] == "https://civitai.com/models/5?modelVersionId=1000"
    )
    assert first["ref"] == "civitai:5@1000"
    assert run_json("--db", small_registry, "loras", "--unsigned")["total"] == 0
    assert run_json("--db", small_registry, "loras", "--signed", "--limit", "1")["count"] == 1
    assert run_json("--db", small_registry, "loras", "--base-model", "Pony")["total"] == 0
    assert run_json("--db", small_registry, "loras", "--profile", "carlos-published")["total"] == 3
    proc = run_cli("--db", small_registry, "loras", "--profile", "nope")
    assert proc.returncode == 1 and "no signer profile 'nope'" in proc.stderr


@pytest.mark.parametrize(
    "ref",
    [
        "1000",
        "civitai:5@1000",
        "urn:air:sdxl:lora:civitai:5@1000",
        "Ink Style",
        "ink st",
        "civitai:5",
        "CIVITAI:5@1000",
    ],
)
def test_show_resolves_every_ref_form(small_registry, ref):
    doc = run_json("--db", small_registry, "show", ref)
    assert doc["version_id"] == 1000 and doc["model_id"] == 5
    assert doc["signatures"][0]["profile"] == "carlos-published"
    assert doc["signatures"][0]["strength"] == 1.5


@pytest.mark.parametrize(
    "ref, message",
    [
        ("999", "no LoRA version 999"),
        ("civitai:6@1000", "belongs to model 5, not 6"),
        ("civitai:77", "no versions of Civitai model 77"),
        ("local:4", "no LoRA version -4"),
        ("no such lora", "no LoRA matches 'no such lora'"),
        ("i", "matches several LoRAs"),
    ],
)
def test_show_errors_are_one_clear_line(small_registry, ref, message):
    proc = run_cli("--db", small_registry, "show", ref)
    assert proc.returncode == 1
    assert (
        message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    )
    assert proc.stdout == ""


@pytest.fixture
def hashed_registry(small_registry):
    """The small registry plus files with hashes on 1000 and 1001, and a local LoRA (version -3)."""
    from registry.db import Database
    from registry.models import File, Version

    db = Database(small_registry)
    with db.write() as s:
        s.add(
            File(
                version_id=1000,
                name="ink.safetensors",
                sha256="ab" * 32,
                autov1="0A1B2C3D",
                autov2="ABCDEF0123",
                autov3="0123456789AB",
                state="verified",
                primary=True,
            )
        )
        s.add(
            File(
                version_id=1001,
                name="copy.safetensors",
                sha256="cd" * 32,
                autov2="FEDCBA9876",
                state="pending",
            )
        )
        s.add(
            File(
                version_id=1002,
                name="copy2.safetensors",
                sha256="ef" * 32,
                autov2="FEDCBA9876",
                state="pending",
            )
        )
        s.add(Version(id=-3, name="my local lora", source="local"))
    db.dispose()
    return small_registry


@pytest.mark.parametrize(
    "ref, vid",
    [
        ("https://civitai.com/models/5?modelVersionId=1000", 1000),  # what every table prints
        ("https://civitai.com/models/5/ink-style?modelVersionId=1000", 1000),
        ("civitai.com/models/5/ink-style", 1000),  # a model URL: its one version
        ("https://civitai.com/api/download/models/1000", 1000),
        ("https://civitai.com/api/v1/model-versions/1000", 1000),
        ("ab" * 32, 1000),
        ("AB" * 32, 1000),
        ("abcdef0123", 1000),
        ("0123456789ab", 1000),
        ("0A1B2C3D", 1000),
        ("-3", -3),
        ("local:3", -3),
    ],
)
def test_show_round_trips_urls_hashes_and_negative_ids(hashed_registry, ref, vid):
    doc = run_json("--db", hashed_registry, "show", ref)
    assert doc["version_id"] == vid


def test_a_hash_shared_by_two_versions_is_ambiguous_and_urls_are_checked(hashed_registry):
    proc = run_cli("--db", hashed_registry, "show", "FEDCBA9876")
    assert proc.returncode == 1 and "1001, 1002" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cli(
        "--db", hashed_registry, "show", "https://civitai.com/models/6?modelVersionId=1000"
    )
    assert proc.returncode == 1 and "belongs to model 5, not 6" in proc.stderr
    proc = run_cli(
        "--db", hashed_registry, "show", "https://civitai.com/api/download/models/424242"
    )
    assert proc.returncode == 1 and "no LoRA version 424242" in proc.stderr
    # every URL the listing prints resolves back to its row
    rows = run_json("--db", hashed_registry, "loras")["loras"]
    assert sum(1 for r in rows if r["url"]) == 3  # local LoRAs have no Civitai URL
    for row in rows:
        if row["url"]:
            assert (
                run_json("--db", hashed_registry, "show", row["url"])["version_id"]
                == row["version_id"]
            )
        assert (
            run_json("--db", hashed_registry, "show", row["ref"])["version_id"] == row["version_id"]
        )


def test_table_output_for_people(small_registry):
    proc = run_cli("--db", small_registry, "loras", check=True)
    assert "Ink Style" in proc.stdout and "carlos-published" in proc.stdout
    proc = run_cli("--db", small_registry, "show", "1000", check=True)
    assert "[carlos-published]" in proc.stdout


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql+psycopg://nobody@127.0.0.1:1/x", "cannot reach the registry database"),
        ("mysql://x@y/z", "unsupported database mysql://"),
        ("definitely not a url", "not a database URL"),
        ("sqlite:////proc/forbidden/registry.db", "cannot create the folder"),
    ],
)
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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, sqlite_url, f"p{i}"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(start), str(rounds)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    import sqlite3

    for r in range(rounds):
        with sqlite3.connect(tmp_path / f"r{r}.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 8


def test_bare_command_prints_help_and_succeeds():
    proc = run_cli()
    assert proc.returncode == 0 and "Usage: carlos-reg" in proc.stdout and "  loras " in proc.stdout


def test_a_home_that_does_not_exist_is_refused_unless_created(tmp_path):
    missing = tmp_path / "typo-home"
    proc = run_cli("--home", str(missing), "loras")
    assert proc.returncode != 0 and "does not exist" in proc.stderr and "--create" in proc.stderr
    assert not missing.exists()  # nothing was created behind the user's back
    doc = run_json("--home", str(missing), "--create", "loras")
    assert doc["total"] == 0 and (missing / "registry.db").is_file()
    assert run_json("--home", str(missing), "loras")["total"] == 0  # exists now


@pytest.mark.parametrize(
    "shell, marker",
    [
        ("bash", "complete -o"),
        ("zsh", "compdef"),
        ("fish", "complete --no-files --command carlos-reg"),
    ],
)
def test_completion_scripts_and_the_completion_they_call(shell, marker):
    proc = run_cli("completion", shell, check=True)
    assert marker in proc.stdout and "_CARLOS_REG_COMPLETE" in proc.stdout
    # what the script asks the program at a <TAB> after "carlos-reg lo" and "carlos-reg signer "
    env = {
        "_CARLOS_REG_COMPLETE": "bash_complete",
        "COMP_WORDS": "carlos-reg lo",
        "COMP_CWORD": "1",
    }
    assert "plain,loras" in run_cli(env=env, check=True).stdout.splitlines()
    env.update(COMP_WORDS="carlos-reg signer ", COMP_CWORD="2")
    assert {"plain,prompts", "plain,samples", "plain,work"} <= set(
        run_cli(env=env, check=True).stdout.splitlines()
    )


def test_plugins_show_versions_and_verbosity_levels(small_registry):
    from registry import __version__

    doc = run_json("plugins")
    assert all(p["version"] == __version__ for p in doc["plugins"] if p["builtin"])
    quiet = run_cli("--db", small_registry, "loras", check=True)
    assert "INFO" not in quiet.stderr
    everything = run_cli("-vv", "--db", small_registry, "loras", check=True)
    assert "DEBUG" in everything.stderr or "INFO" in everything.stderr
    one = run_cli("-v", "--db", small_registry, "loras", check=True)
    assert "alembic" not in one.stderr and "DEBUG" not in one.stderr


def test_signer_profiles_lists_profiles_with_signatures_imported_ones_included(small_registry):
    doc = run_json("--db", small_registry, "signer", "profiles")
    by_name = {p["name"]: p for p in doc["profiles"]}
    assert (
        by_name["carlos-published"]["signatures"] == 3
        and by_name["carlos-published"]["defined_here"] is False
    )
    assert by_name["tiny"]["signatures"] == 0 and "hash" in by_name["tiny"]
    assert (
        "CARLOS_REG_CARLOS_PROMPTS" in by_name["paper"]["error"]
    )  # not on this machine, and it says how


@pytest.mark.parametrize("code", [0, 3])
def test_a_command_that_exits_with_a_code_keeps_it(code):
    # click returns ctx.exit(n) instead of raising it outside standalone mode; a plugin command
    # that ends this way must still give its code to the shell
    script = textwrap.dedent(f"""
        import sys, click
        from registry.cli import get_cli, main

        @click.command("leave")
        @click.pass_context
        def leave(ctx):
            ctx.exit({code})

        get_cli().add_command(leave)
        sys.argv = ["carlos-reg", "leave"]
        main()
        print("fell through")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == code, proc.stderr
    assert ("fell through" in proc.stdout) == (code == 0)
