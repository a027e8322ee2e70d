"""CI never skips silently: missing reference data fail `.ci/run` and, under the CI variables, the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_ci_run_fails_when_the_reference_data_are_missing(tmp_path):
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", clone / ".ci" / "run")
    (clone / "Makefile").write_text(
        "test:\n\ttouch ran-the-suite\n"
    )  # reached only if the check let it through
    proc = subprocess.run(
        ["bash", str(clone / ".ci" / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "../shared/reference/carlos_metrics_database.parquet is missing" in proc.stderr
    assert not (clone / "ran-the-suite").exists()


def _reference_test(tmp_path, require: bool) -> subprocess.CompletedProcess:
    """A test using the reference fixture, run by pytest in a clone without ../shared/reference beside it."""
    clone = tmp_path / "clone"
    shutil.copytree(
        REPO / "tests", clone / "tests", ignore=shutil.ignore_patterns("test_*.py", "__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    (clone / "tests" / "test_uses_reference.py").write_text(
        "def test_reads_it(reference_parquet):\n    assert reference_parquet.is_file()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARLOS_REG_REQUIRE")}
    if require:
        env["CARLOS_REG_REQUIRE_REFERENCE"] = "1"
    env["PYTHONPATH"] = f"{clone}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_uses_reference.py"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_missing_reference_data_fail_under_ci_and_are_counted(tmp_path):
    skipped = _reference_test(tmp_path / "a", require=False)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout
    assert "reference: 1 skipped" in skipped.stdout  # the per-marker summary
    failed = _reference_test(tmp_path / "b", require=True)
    assert failed.returncode == 1 and "CARLOS_REG_REQUIRE_REFERENCE is set" in failed.stdout
    assert "reference: 1 error" in failed.stdout
