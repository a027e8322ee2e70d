"""HTTP routes the README promises, on a real ``carlos-reg serve``: ``/api/compare/{ref}`` answers what
``carlos-reg compare`` answers (the rules themselves: ``test_compare_rules.py``), and
``/api/health`` is 200 while the database answers and 503 while it does not."""

from __future__ import annotations

import numpy as np

from registry.models import Version
from tests.conftest import run_json
from tests.planted import at_cosine, unit
from tests.service_support import Server
from tests.test_compare_rules import _reciprocal_shift


def test_api_compare_answers_what_the_cli_compare_answers(registry):
    claim = "watercolor painting"
    q = unit(_reciprocal_shift(registry, claim))
    registry.plant(1, q * 3)  # does what it says
    registry.plant(2, -q * 3)  # does the opposite
    registry.plant(3, at_cosine(q, 0.5, 3) * 3)  # agrees, but ranks behind 4 and 5
    registry.plant(4, at_cosine(q, 0.9, 4) * 3)
    registry.plant(5, at_cosine(q, 0.8, 5) * 3)
    with registry.app.db.write() as s:
        for vid in (1, 2, 3):
            s.get(Version, vid).name = "Watercolor Painting v2 SDXL"
        s.get(Version, 4).name, s.get(Version, 5).name = "Pencil Sketch", "Neon Glow"
    env = {"CARLOS_REG_HOME": str(registry.app.settings.home), "CARLOS_REG_PROFILE": "tiny"}
    cli = run_json("compare", "1", "2", "3", "-k", "3", env=env)
    cli_rows = {r["version_id"]: r for r in cli["results"]}
    assert {v: r["supported"] for v, r in cli_rows.items()} == {1: True, 2: False, 3: False}

    server = Server.start(serve_args=("--schedule", "off"), env=env)
    try:
        for vid in (1, 2, 3):
            status, doc = server.get(f"/api/compare/{vid}?k=3")
            assert status == 200, doc
            assert (doc["profile"], doc["profile_hash"], doc["k"]) == (
                cli["profile"],
                cli["profile_hash"],
                3,
            )
            (row,) = doc["results"]
            assert row == cli_rows[vid]
        # k decides support here as in the CLI: 3 ranks 4th for its own claim
        status, doc = server.get("/api/compare/3?k=4")
        assert status == 200 and doc["results"][0]["supported"] is True
        assert doc["results"][0] == run_json("compare", "3", "-k", "4", env=env)["results"][0]
        status, doc = server.get("/api/compare/999")
        assert status == 404, doc
    finally:
        assert server.stop() == 0, server.output()


def test_api_health_is_503_while_the_database_is_down_and_200_when_it_is_back(pg_server, pg_url):
    server = Server.start("--db", pg_url, serve_args=("--schedule", "off"))
    try:
        status, doc = server.get("/api/health")
        assert status == 200 and doc["status"] == "ok", doc
        assert doc["schema"]["current"] == [doc["schema"]["head"]]
        pg_server.stop()
        try:
            status, doc = server.get("/api/health")
            assert status == 503 and doc["status"] == "degraded", doc
            assert "schema" not in doc and doc["error"]
        finally:
            pg_server.start()
        status, doc = server.get("/api/health")  # stale pooled connections are replaced
        assert status == 200 and doc["status"] == "ok", doc
    finally:
        server.stop()


def test_health_of_an_unused_registry_names_no_runs(tmp_path):
    """The 200 answer's shape on a fresh SQLite registry (what monitoring scripts read)."""
    server = Server.start(
        "--db", f"sqlite:///{tmp_path / 'r.db'}", serve_args=("--schedule", "off")
    )
    try:
        status, doc = server.get("/api/health")
    finally:
        server.stop()
    assert status == 200 and doc["status"] == "ok" and doc["runs"] == []
    assert doc["schedule"] is None and doc["next_run"] is None
    assert isinstance(doc["queue"], dict) and np.isfinite(doc["uptime_s"])
