"""The example plugin of docs/plugins.md, installed as a user installs it, through the real CLI.

CI installs it (``pip install -e docs/example-plugin`` in .ci/run) and sets
CARLOS_REG_REQUIRE_EXAMPLE_PLUGIN=1, which turns the skip below into a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest

from tests.conftest import REPO
from tests.conftest import run_cli as _run_cli
from tests.service_support import Server


@pytest.fixture(scope="module", autouse=True)
def example_env():
    """The environment that finds the installed plugin (its install dir, should it be a --target)."""
    try:
        dist = importlib.metadata.distribution("carlos-reg-example")
    except importlib.metadata.PackageNotFoundError:
        reason = "the example plugin is not installed (pip install -e docs/example-plugin)"
        if os.environ.get("CARLOS_REG_REQUIRE_EXAMPLE_PLUGIN"):
            pytest.fail(f"{reason}, and CARLOS_REG_REQUIRE_EXAMPLE_PLUGIN is set")
        pytest.skip(reason)
    ENV["PYTHONPATH"] = f"{REPO}{os.pathsep}{dist.locate_file('')}"
    return ENV


ENV: dict[str, str] = {}


def run_cli(*args: str, check: bool = False):
    return _run_cli(*args, env=ENV, check=check)


def run_json(*args: str):
    return json.loads(run_cli(*args, "--json", check=True).stdout)


def test_it_is_listed_with_its_hooks():
    doc = run_json("plugins")
    plugin = next(p for p in doc["plugins"] if p["name"] == "example")
    assert plugin["builtin"] is False and plugin["distribution"] == "carlos-reg-example"
    assert plugin["hooks"] == [
        "register_commands",
        "register_reports",
        "register_retrievers",
        "register_routes",
    ]
    assert doc["errors"] == []


def test_its_command_lists_the_strongest(small_registry):
    # versions 1000, 1001, 1002 have Strength 1.5, 2.5, 3.5
    doc = run_json("--db", small_registry, "strongest", "-k", "2")
    assert [(r["version_id"], r["strength"]) for r in doc["loras"]] == [(1002, 3.5), (1001, 2.5)]
    table = run_cli("--db", small_registry, "strongest", "--format", "csv", check=True).stdout
    assert table.splitlines()[0] == "version,name,profile,strength,consistency"
    assert [line.split(",")[0] for line in table.splitlines()[1:]] == ["1002", "1001", "1000"]
    bad = run_cli("--db", small_registry, "strongest", "-k", "0")
    assert bad.returncode == 2 and "-k" in bad.stderr


def test_its_report_in_every_format(small_registry, tmp_path):
    doc = run_json("--db", small_registry, "report", "strong-by-base", "--min-strength", "2")
    assert doc["min_strength"] == 2.0 and sum(doc["counts"].values()) == 2
    doc = run_json("--db", small_registry, "report", "strong-by-base", "--min-strength", "3")
    assert sum(doc["counts"].values()) == 1
    out = tmp_path / "strong.html"
    run_cli(
        "--db",
        small_registry,
        "report",
        "strong-by-base",
        "--format",
        "html",
        "--out",
        str(out),
        check=True,
    )
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<th>LoRAs</th>" in html


def test_its_retriever_ranks_by_strength(small_registry):
    doc = run_json(
        "--db", small_registry, "search", "anything at all", "--retriever", "strongest", "-k", "3"
    )
    assert [r["version_id"] for r in doc["results"]] == [1002, 1001, 1000]
    assert [r["score"] for r in doc["results"]] == [3.5, 2.5, 1.5]


def test_its_route_and_report_over_http(small_registry):
    server = Server.start("--db", small_registry, serve_args=("--schedule", "off"), env=ENV)
    try:
        status, doc = server.get("/api/strongest?k=1")
        assert status == 200 and [r["version_id"] for r in doc["loras"]] == [1002]
        status, doc = server.get("/api/strongest?k=zero")
        assert status == 400
        status, doc = server.get("/api/report/strong-by-base?min_strength=3")
        assert status == 200 and sum(doc["counts"].values()) == 1
    finally:
        server.stop()
