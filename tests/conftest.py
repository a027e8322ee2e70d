"""Shared fixtures: an isolated data dir per test, SQLite and PostgreSQL registries, the CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.signer_support",
    "tests.planted",
]  # tiny models; planted-signature registries

REPO = Path(__file__).resolve().parent.parent
REFERENCE_PARQUET = REPO.parent / "shared" / "reference" / "carlos_metrics_database.parquet"
REFERENCE_PROMPTS = REPO.parent / "shared" / "reference" / "carlos_generative_prompts.py"

# tools/mutate.py: mutmut's fork server collects the tests once, then forks a process per mutant;
# libraries named here are imported in the server, not again in each of thousands of mutants
for _module in filter(None, os.environ.get("CARLOS_REG_TEST_PRELOAD", "").split(",")):
    importlib.import_module(_module)

# Tests counted per marker at the end; tests using these fixtures get the marker themselves.
COUNTED_MARKERS = ("postgres", "browser", "reference", "slow")
_FIXTURE_MARKERS = {
    "pg_server": "postgres",
    "pg_url": "postgres",
    "reference_registry": "reference",
    "reference_parquet": "reference",
    "reference_prompts": "reference",
    "browser": "browser",  # tests/browser.py's shared Chromium and its pages
    "page": "browser",
}


def require_reference(path: Path) -> Path:
    """The file from ../shared/reference; a skip, or a failure under CARLOS_REG_REQUIRE_REFERENCE (CI)."""
    if not path.is_file():
        if os.environ.get("CARLOS_REG_REQUIRE_REFERENCE"):
            pytest.fail(
                f"the reference data are required (CARLOS_REG_REQUIRE_REFERENCE is set) but {path} is missing"
            )
        pytest.skip(f"reference file not present at {path}")
    return path


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in sorted(set(getattr(item, "fixturenames", ())) & _FIXTURE_MARKERS.keys()):
            item.add_marker(_FIXTURE_MARKERS[fixture])


_MARKER_OUTCOMES: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report):
    # one outcome per test: the call's, or the setup's when setup did not pass (skip, error)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        for marker in COUNTED_MARKERS:
            if marker in report.keywords:
                _MARKER_OUTCOMES.setdefault(marker, {}).setdefault(outcome, 0)
                _MARKER_OUTCOMES[marker][outcome] += 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("tests per marker")
    for marker in COUNTED_MARKERS:
        counts = _MARKER_OUTCOMES.get(marker, {})
        detail = (
            ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none collected"
        )
        terminalreporter.write_line(f"{marker:>10}: {detail}")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("CARLOS_REG_HOME", str(home))
    for var in (
        "CARLOS_REG_DB",
        "CIVITAI_API_KEY",
        "CIVITAI_BASE_URL",
        "CARLOS_REG_LOAD_PLUGINS",
        "CARLOS_REG_CARLOS_PROMPTS",
        "CARLOS_REG_CARLOS_PROMPTS_URL",
        "CARLOS_REG_ALLOW_DOWNLOAD",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def pg_server():
    from tests.pg import PgServer, find_bindir

    if find_bindir() is None:
        if os.environ.get("CARLOS_REG_REQUIRE_PG"):
            pytest.fail(
                "PostgreSQL binaries are required (CARLOS_REG_REQUIRE_PG is set) but were not found"
            )
        pytest.skip("PostgreSQL binaries not found")
    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server):
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty registry database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def database(db_url):
    """A migrated registry on each backend."""
    from registry.db import Database
    from registry.migrate import ensure_schema

    db = Database(db_url)
    ensure_schema(db)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def reference_registry(tmp_path_factory):
    """A SQLite registry holding the imported published CARLoS database (skipped when absent)."""
    require_reference(REFERENCE_PARQUET)
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'registry.db'}"
    run_cli("--db", url, "import", "carlos", str(REFERENCE_PARQUET), check=True)
    return url


@pytest.fixture
def small_registry(tmp_path, sqlite_url):
    """A SQLite registry holding three imported signatures (versions 1000–1002, see test_import._small_table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_import import _small_table

    path = tmp_path / "small.parquet"
    pq.write_table(pa.table(_small_table()), path)
    run_cli("--db", sqlite_url, "import", "carlos", str(path), check=True)
    return sqlite_url


@pytest.fixture
def reference_parquet():
    return require_reference(REFERENCE_PARQUET)


@pytest.fixture
def reference_prompts(monkeypatch):
    """The reference's generative_prompts.py, as CARLOS_REG_CARLOS_PROMPTS (skipped when absent)."""
    require_reference(REFERENCE_PROMPTS)
    monkeypatch.setenv("CARLOS_REG_CARLOS_PROMPTS", str(REFERENCE_PROMPTS))
    return REFERENCE_PROMPTS


def run_cli(
    *args: str,
    env: dict | None = None,
    check: bool = False,
    timeout: float = 300,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``carlos-reg`` in a fresh process, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "registry", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"carlos-reg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def run_json(*args: str, env: dict | None = None):
    proc = run_cli(*args, "--json", env=env, check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def cli():
    return run_cli
