"""`carlos-reg serve`: API contract, the scheduled run, its database lock, shutdown."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.service_support import Server
from tests.test_plugins import _install_fake_plugin

# A nightly step that records when it ran and fails while a marker file exists.
STEP = """
    import json, os, time
    from pathlib import Path
    from registry import hookimpl

    def step(app, options):
        log = Path(os.environ["STEP_LOG"])
        start = time.time()
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.2")))
        fail = Path(os.environ["STEP_LOG"] + ".fail")
        with log.open("a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "start": start, "end": time.time()}) + "\\n")
        if fail.exists():
            fail.unlink()
            raise RuntimeError("planned failure")
        return {"slept": 1}

    @hookimpl
    def register_nightly_steps(register):
        register("test-step", step, 100)
"""


@pytest.fixture
def step_env(tmp_path):
    env = _install_fake_plugin(tmp_path, "nightlytest", STEP)
    env.update(
        {"STEP_LOG": str(tmp_path / "steps.log"), "CARLOS_REG_LOAD_PLUGINS": "nightlytest,serve"}
    )
    return env


def _runs(server):
    status, doc = server.get("/api/runs?limit=100")
    assert status == 200
    return doc["runs"]


def test_api_contract_core_routes(tmp_path, sqlite_url, reference_registry):
    server = Server.start("--db", reference_registry, serve_args=("--schedule", "off"))
    try:
        status, doc = server.get("/api/health")
        assert (
            status == 200
            and doc["status"] == "ok"
            and doc["schema"]["current"] == [doc["schema"]["head"]]
        )
        assert doc["schedule"] is None and doc["next_run"] is None
        status, doc = server.get("/api/loras?limit=2&signed=true")
        assert status == 200 and doc["total"] == 740 and doc["count"] == 2
        assert {
            "version_id",
            "model_id",
            "name",
            "base_model",
            "url",
            "strength",
            "consistency",
        } <= set(doc["loras"][0])
        status, doc = server.get("/api/loras/civitai:850406@951444")
        assert (
            status == 200
            and doc["version_id"] == 951444
            and doc["signatures"][0]["profile"] == "carlos-published"
        )
        status, doc = server.get("/api/similar/212213?k=3")
        assert status == 200 and doc["exact_duplicates"] == [
            159294,
            234730,
            510981,
        ]  # cos >= 0.99999 too
        status, doc = server.get(
            "/api/report/copyright?strength_threshold=9.5&consistency_threshold=0.4"
        )
        assert status == 200 and doc["thresholds"]["substantiality"]["mode"] == "fixed"
        status, text = server.get("/api/report/copyright?format=html")
        assert status == 200 and text.startswith("<!doctype html>") and "scatter" in text
        status, doc = server.get("/api/queue")
        assert status == 200 and doc["counts"] == {"queued": 0, "running": 0, "done": 0, "dead": 0}
        for path, code, message in [
            ("/api/loras/424242", 404, "no LoRA version 424242"),
            ("/api/loras?limit=abc", 400, "parameter limit must be an integer"),
            ("/api/loras?signed=maybe", 400, "parameter signed must be true or false"),
            ("/api/loras?profile=nope", 404, "no signer profile 'nope'"),
            ("/api/similar/212213?k=0", 400, "parameter k must be between 1 and 1000"),
            ("/api/report/copyright?strength_threshold=high", 400, "parameter strength_threshold"),
            ("/api/report/copyright?format=pdf", 400, "format must be json or html"),
            ("/api/report/nope", 404, "no report kind 'nope'"),
            ("/api/search?k=3", 400, "give a query text"),
            ("/api/nowhere", 404, "Not Found"),
        ]:
            status, doc = server.get(path)
            assert (status, message in doc.get("error", "")) == (code, True), (path, status, doc)
        status, doc = server.post("/api/search", b"q=x", "application/x-www-form-urlencoded")
        assert status == 400 and "multipart/form-data" in doc["error"]
        status, doc = server.post(
            "/api/search", b"x" * (40 * 1024 * 1024), "multipart/form-data; boundary=x"
        )
        assert status == 413 and "Too Large" in doc["error"]
    finally:
        assert server.stop() == 0
    assert "shutting down" in server.output()


def test_schedule_fires_and_a_failing_run_is_recorded_while_the_next_still_fires(
    step_env, sqlite_url, tmp_path
):
    (tmp_path / "steps.log.fail").touch()
    server = Server.start(
        "--db", sqlite_url, serve_args=("--schedule", "*/2 * * * * *"), env=step_env
    )
    try:
        import time

        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and len([r for r in _runs(server) if r["status"] in ("ok", "failed")]) < 3
        ):
            time.sleep(0.5)
        runs = sorted(_runs(server), key=lambda r: r["id"])
        status, health = server.get("/api/health")
    finally:
        server.stop()
    finished = [r for r in runs if r["status"] in ("ok", "failed")]
    assert finished[0]["status"] == "failed" and "planned failure" in finished[0]["error"]
    assert finished[0]["steps"]["test-step"]["error"] == "RuntimeError: planned failure"
    assert [r["status"] for r in finished[1:3]] == ["ok", "ok"]
    assert finished[1]["steps"]["test-step"] == {"slept": 1}
    assert health["next_run"] is not None and health["runs"][0]["id"] >= finished[2]["id"]


@pytest.mark.postgres
def test_two_services_on_one_postgres_registry_never_run_the_job_at_once(
    step_env, pg_url, tmp_path
):
    import time

    env = {**step_env, "STEP_SECONDS": "2.5"}
    servers = [
        Server.start("--db", pg_url, serve_args=("--schedule", "* * * * * *"), env=env)
        for _ in range(2)
    ]
    try:
        time.sleep(12)
    finally:
        for s in servers:
            s.stop()
    steps = [json.loads(line) for line in (tmp_path / "steps.log").read_text().splitlines()]
    assert len(steps) >= 3 and {s["pid"] for s in steps} <= {srv.proc.pid for srv in servers}
    steps.sort(key=lambda s: s["start"])
    for a, b in zip(steps, steps[1:]):
        assert b["start"] >= a["end"], "two runs overlapped"
    from registry.db import Database
    from registry.service import recent_runs

    class _App:  # recent_runs needs only .db
        db = Database(pg_url)

    runs = recent_runs(_App, 500)
    assert any(r["status"] == "skipped" and "another service" in r["error"] for r in runs)
    ran = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: r["started_at"])
    for a, b in zip(ran, ran[1:]):
        assert datetime.fromisoformat(b["started_at"]) >= datetime.fromisoformat(a["finished_at"])
    _App.db.dispose()


@pytest.mark.postgres
def test_api_answers_503_with_retry_after_while_the_database_is_down_then_recovers(
    pg_server, pg_url
):
    import urllib.error
    import urllib.request

    server = Server.start("--db", pg_url, serve_args=("--schedule", "off"))
    try:
        status, doc = server.get("/api/loras?limit=5")
        assert status == 200 and doc["total"] == 0
        pg_server.stop()
        try:
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(server.url + "/api/loras?limit=5", timeout=60)
            assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "5"
            doc = json.loads(caught.value.read())
            assert doc == {"error": "the registry database is unavailable; retry shortly"}
            status, _ = server.get("/api/loras/civitai:1@2")
            assert status == 503
        finally:
            pg_server.start()
        status, doc = server.get("/api/loras?limit=5")  # stale pooled connections are replaced
        assert status == 200 and doc["total"] == 0
        status, doc = server.get("/api/loras/civitai:1@2")
        assert status == 404
        assert (
            "registry database unavailable" in server.output()
            and "Traceback" not in server.output()
        )
    finally:
        server.stop()


def test_malformed_uploads_are_rejected(reference_registry):
    from tests.service_support import multipart

    server = Server.start("--db", reference_registry, serve_args=("--schedule", "off"))
    try:
        status, doc = server.post(
            "/api/search", b"x" * (2 * 1024 * 1024), "multipart/form-data; boundary=x"
        )
        assert status == 400 and "malformed multipart body" in doc["error"]
        body, ctype = multipart({"k": "3"}, [("image", "../../etc/passwd", b"not an image")])
        status, doc = server.post("/api/search", body, ctype)
        # decoded (and refused) before the base branch is needed; named by its number, never the client's name
        assert status == 400 and "not a readable image" in doc["error"], (status, doc)
        assert "passwd" not in doc["error"] and "image-1" in doc["error"]
        body, ctype = multipart({"k": "3"}, [("image", f"{i}.png", b"x") for i in range(9)])
        status, doc = server.post("/api/search", body, ctype)
        assert status == 400 and "at most 8 images" in doc["error"]
    finally:
        server.stop()


@pytest.mark.timeout(
    1800
)  # three signing runs on a CPU: sized for a loaded 2-core machine, not for luck
def test_sigterm_during_scheduled_signing_releases_the_lease_and_another_worker_finishes(
    tmp_path, tiny_models
):
    """serve --sign-local drains the queue in its nightly run; SIGTERM mid-job gives the job back."""
    import time

    import sqlalchemy as sa

    from registry.db import Database
    from registry.migrate import ensure_schema
    from registry.models import Signature, SignJob
    from registry.settings import Settings
    from signer import lorafiles as lf
    from tests.conftest import run_cli
    from tests.signer_support import add_local_version

    home = tmp_path / "home"
    home.mkdir()
    # a slower tiny profile (60 samples a LoRA), so that the signal lands while a LoRA job holds its lease
    (home / "profiles.toml").write_text(
        '[profiles.slow]\nextends = "tiny"\nseeds = { count = 6 }\n'
    )
    env = {
        "CARLOS_REG_HOME": str(home),
        "CARLOS_REG_PROFILE": "slow",
        "CARLOS_REG_MODELS": str(tiny_models),
        "CARLOS_REG_LOAD_PLUGINS": "serve,sign",
    }  # no crawl step: nothing leaves this machine
    settings = Settings.load(home=home)
    db = Database(settings.db_url)
    ensure_schema(db)
    with db.write() as s:
        for vid in (1, 2):
            add_local_version(
                s,
                settings.artifacts,
                vid,
                lf.write_kohya_lora(tmp_path / f"{vid}.safetensors", seed=vid),
            )
    server = Server.start(
        serve_args=("--schedule", "off", "--sign-local", "--device", "cpu", "--run-now"), env=env
    )
    try:
        deadline = (
            time.monotonic() + 1200
        )  # the base branch comes first; wait for the state, not a guess
        held = None
        while time.monotonic() < deadline and held is None and server.proc.poll() is None:
            with db.read() as s:
                held = s.execute(
                    sa.select(SignJob.id).where(SignJob.kind == "lora", SignJob.state == "running")
                ).scalar()
            time.sleep(0.2)
        assert held is not None, server.output()
    finally:
        code = server.stop()
    assert code == 0, server.output()
    with db.read() as s:
        job = s.get(SignJob, held)
        assert job.state == "queued" and job.attempts == 0 and job.lease_token is None
        run = s.execute(sa.text("SELECT status, steps FROM service_run ORDER BY id DESC")).first()
    assert run[0] in ("interrupted", "ok")
    proc = run_cli("signer", "work", "--once", "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    with db.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar_one() == 2
        assert s.get(SignJob, held).state == "done"
    db.dispose()
