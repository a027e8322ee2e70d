"""The crawler as users run it (real subprocesses): the token canary sweep, SIGKILL mid-download
and a rerun, the CLI contract, ``crawls``, ``mirror serve`` and ``mirror export``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp import web

from crawler import stfile
from crawler.client import CivitaiClient
from crawler.http_errors import CivitaiError
from crawler.mirror import (
    BackgroundServer,
    file_entry,
    make_app,
    model_entry,
    version_entry,
    write_catalog,
)
from registry.db import Database
from registry.models import CrawlRun, File
from registry.retry import RetryPolicy
from tests.conftest import REPO, run_cli
from tests.crawler_helpers import (
    DOWNLOADS,
    FILES,
    LISTING,
    Faults,
    broken_body,
    redirect,
    respond,
    serve,
    standard_catalog,
    transform_json,
)

CANARY = "CANARY-c1v1ta1-9d8e7f6a5b4c3d2e1f00"
FAST_FLAGS = ("--retries", "3", "--max-backoff", "0.01", "--timeout", "1")


def crawl_cli(
    home: Path, base_url: str, *args: str, token: str | None = None, timeout: float = 120
):
    env = {"CARLOS_REG_HOME": str(home), "CIVITAI_BASE_URL": base_url}
    if token:
        env["CIVITAI_API_KEY"] = token
    return run_cli(*args, env=env, timeout=timeout)


def test_the_token_appears_nowhere(tmp_path):
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    cdn_faults, faults = Faults(), Faults()

    async def echo_auth(
        request, handler
    ):  # a hostile server that echoes the header into its error text
        return web.json_response(
            {"error": f"you sent {request.headers.get('Authorization')}"}, status=403
        )

    faults.add(
        lambda r: LISTING(r) and "cursor" in r.query, respond(429, {}, headers={"Retry-After": "0"})
    )
    faults.add(LISTING, respond(500, {"error": "boom"}))

    async def token_in_path(request, handler):  # ... or into the path of a redirect
        raise web.HTTPTemporaryRedirect(
            f"/leak/{request.headers.get('Authorization', '')[7:]}/file"
        )

    async def echo_cut(
        request, handler
    ):  # ... padded so that the 200-character cut falls inside the token
        pad = "p" * (200 - len("Bearer ") - len(CANARY) // 2)
        return web.json_response(
            {"error": f"{pad}{request.headers.get('Authorization')} end"}, status=403
        )

    async def to_userinfo(
        request, handler
    ):  # ... or into credentials of a redirect to another host
        raise web.HTTPTemporaryRedirect(f"http://user:{CANARY}@localhost:9/x")

    # a cursor that echoes the token: neither followed nor stored
    faults.add(
        LISTING,
        transform_json(lambda d: {**d, "metadata": {"nextCursor": f"next-{CANARY}"}}),
        times=None,
    )
    faults.add(f"{DOWNLOADS}1050", to_userinfo, times=None)
    faults.add(f"{DOWNLOADS}9000", echo_cut, times=None)
    faults.add(f"{DOWNLOADS}1010", echo_auth, times=None)
    faults.add(f"{DOWNLOADS}1040", token_in_path, times=None)
    faults.add(f"{DOWNLOADS}1020", redirect(f"{DOWNLOADS}1020?loop=1"), times=None)
    faults.add(
        f"{DOWNLOADS}1030",
        respond(401, {"error": "Unauthorized", "message": f"bad token {CANARY}"}),
        times=None,
    )
    cdn_faults.add(f"{FILES}10000", broken_body(mode="truncate", cut_at=0.5))
    with (
        BackgroundServer(make_app(tmp_path / "mirror", middlewares=[cdn_faults.middleware])) as cdn,
        serve(
            tmp_path / "mirror",
            faults,
            token=CANARY,
            files_base_url=cdn.url.replace("127.0.0.1", "localhost"),
        ) as api,
    ):
        home = tmp_path / "home"
        proc = crawl_cli(
            home,
            api.url,
            "-vv",
            "crawl",
            "--json",
            "--full",
            *FAST_FLAGS,
            "--concurrency",
            "2",
            token=CANARY,
        )
        failed = crawl_cli(
            tmp_path / "home2",
            api.url + "/nothing-here",
            "-vv",
            "crawl",
            "--retries",
            "0",
            token=CANARY,
        )

        async def direct():  # the exception objects themselves
            async with CivitaiClient(api.url, CANARY, policy=RetryPolicy(max_attempts=1)) as client:
                async with client.open(client.api_url(f"{DOWNLOADS}1010")):
                    pass

        with pytest.raises(CivitaiError) as info:
            asyncio.run(direct())

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files_verified"] == len(catalog.expected_files) - 6 and summary["errors"] >= 7
    assert failed.returncode == 1 and "Error:" in failed.stderr
    assert "you sent Bearer ***" in str(info.value)
    for text in (
        proc.stdout,
        proc.stderr,
        failed.stdout,
        failed.stderr,
        str(info.value),
        repr(info.value),
        str(info.value.args),
    ):
        assert CANARY[:4] not in text  # not even a fragment
    assert "DEBUG" in proc.stderr and "GET http://" in proc.stderr  # -vv really logged requests
    for home_dir in (home, tmp_path / "home2"):
        for path in home_dir.rglob("*"):
            assert CANARY not in str(path)
            if path.is_file():
                assert CANARY[:4].encode() not in path.read_bytes(), (
                    path
                )  # the database, its WAL, every artifact
    assert any("you sent Bearer ***" in e["message"] for e in summary["error_samples"])
    assert any("/leak/***/file" in e["message"] for e in summary["error_samples"])
    assert (
        any("holds the API token" in e["message"] for e in summary["error_samples"])
        and summary["cursor"] is None
    )
    assert any("credentials" in e["message"] for e in summary["error_samples"])
    assert any(
        e["message"].count("p" * 100) and "***" in e["message"] for e in summary["error_samples"]
    )
    assert all(
        s.headers.get("Authorization") == f"Bearer {CANARY}" for s in faults.requests(DOWNLOADS)
    )
    assert all("token" not in dict(s.query) for s in faults.seen)
    assert [s.path for s in faults.seen if CANARY in s.path] == [
        f"/leak/{CANARY}/file"
    ]  # only the trap
    assert cdn_faults.seen and all(
        "Authorization" not in s.headers and CANARY not in repr(s) for s in cdn_faults.seen
    )


def _big_catalog(root: Path) -> tuple[bytes, int]:
    data = stfile.build({"lora_unet_x.lora_down.weight": ("U8", [4 << 20], os.urandom(4 << 20))})
    write_catalog(
        root,
        [model_entry(1, versions=[version_entry(11, files=[file_entry(111, data)])])],
        {111: data},
    )
    return data, 111


def test_sigkill_mid_download_then_rerun_loses_nothing(tmp_path):
    data, file_id = _big_catalog(tmp_path / "mirror")
    sha = hashlib.sha256(data).hexdigest()
    faults, cut = Faults(), threading.Event()
    faults.add(
        f"{FILES}{file_id}",
        broken_body(mode="stall", cut_at=0.5, stall_seconds=120, on_cut=cut.set),
    )
    home = tmp_path / "home"
    partial = home / "artifacts" / ".partial" / f"{sha}.part"
    final = home / "artifacts" / "lora" / sha[:2] / sha[2:4] / f"{sha}.safetensors"
    half = len(data) // 2
    with serve(tmp_path / "mirror", faults) as api:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CARLOS_REG_HOME": str(home),
            "CIVITAI_BASE_URL": api.url,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry", "crawl", "--timeout", "300"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert cut.wait(60), "the download never started"
            deadline = time.monotonic() + 60
            while not (partial.exists() and partial.stat().st_size >= half):
                assert time.monotonic() < deadline and proc.poll() is None, (
                    "the received half never reached disk"
                )
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert not final.exists() and partial.stat().st_size == half
        db = Database(f"sqlite:///{home / 'registry.db'}")
        with db.read() as s:
            assert (
                s.execute(sa.select(File.state).where(File.civitai_file_id == file_id)).scalar_one()
                == "pending"
            )
            assert (
                s.execute(sa.select(CrawlRun.status)).scalar_one() == "running"
            )  # it never got to finish
        rerun = crawl_cli(home, api.url, "crawl", "--json", *FAST_FLAGS)
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert (
        doc["files_verified"] == 1 and doc["bytes_downloaded"] == len(data) - half
    )  # resumed, not restarted
    assert [s.headers.get("Range") for s in faults.requests(FILES)] == [None, f"bytes={half}-"]
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha
    assert not partial.exists()
    with db.read() as s:
        assert (
            s.execute(sa.select(File.state).where(File.civitai_file_id == file_id)).scalar_one()
            == "verified"
        )
        assert s.execute(sa.select(CrawlRun.status).order_by(CrawlRun.id)).scalars().all() == [
            "interrupted",
            "ok",
        ]
    db.dispose()


def test_crawl_cli_contract(tmp_path):
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    with serve(tmp_path / "mirror") as api:
        home = tmp_path / "home"
        proc = crawl_cli(
            home, api.url, "crawl", "--json", "--base-model", "pony", "--base-model", "SDXL 1.0"
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)  # exactly one JSON document
        assert doc["status"] == "ok" and doc["options"]["base_models"] == ["Pony", "SDXL 1.0"]
        assert (
            doc["files_verified"] == 5
        )  # 101 (Pony); 100 (2 versions), 105 and 900's SDXL version (SDXL 1.0)
        human = crawl_cli(home, api.url, "crawl", "--no-download")
        assert human.returncode == 0 and "status" in human.stdout and "ok" in human.stdout
        runs = json.loads(crawl_cli(home, api.url, "crawls", "--json").stdout)["runs"]
        assert [r["status"] for r in runs] == ["ok", "ok"] and runs[1]["files_verified"] == 5

    bad = crawl_cli(home, "http://127.0.0.1:9", "crawl", "--retries", "0")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert re.search(r"^Error: the crawl could not start: .*cannot connect", bad.stderr, re.M)
    runs = json.loads(crawl_cli(home, "x", "crawls", "--json").stdout)["runs"]
    assert runs[0]["status"] == "failed" and runs[0]["error_count"] == 1
    detail = json.loads(crawl_cli(home, "x", "crawls", str(runs[0]["id"]), "--json").stdout)
    assert (
        detail["errors"][0]["stage"] == "page"
        and "cannot connect" in detail["errors"][0]["message"]
    )

    usage = crawl_cli(home, "x", "crawl", "--base-model", "SD 1.5")
    assert (
        usage.returncode == 2
        and "not an SDXL-architecture base model" in usage.stderr
        and "NoobAI" in usage.stderr
    )
    url = crawl_cli(home, "ftp://example.org", "crawl")
    assert url.returncode == 1 and "must be an http(s) URL" in url.stderr


def test_crawl_does_not_import_torch(tmp_path):
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    code = textwrap.dedent("""
        import sys
        from registry.cli import main
        main(["crawl", "--json", "--max-models", "2"])
        print("HEAVY:", [m for m in ("torch", "diffusers", "open_clip", "transformers") if m in sys.modules])
    """)
    with serve(tmp_path / "mirror") as api:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CARLOS_REG_HOME": str(tmp_path / "home"),
            "CIVITAI_BASE_URL": api.url,
        }
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=120,
        )
    assert "HEAVY: []" in proc.stdout, proc.stdout + proc.stderr


def test_mirror_serve_and_export_from_the_cli(tmp_path):
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARLOS_REG_HOME": str(tmp_path / "home")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "registry",
            "mirror",
            "serve",
            str(tmp_path / "mirror"),
            "--port",
            "0",
            "--token",
            "s3cret",
        ],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        while not (m := re.search(r"http://127\.0\.0\.1:\d+", seen)):
            line = server.stderr.readline()
            assert line, f"mirror serve ended: {seen}"
            seen += line
        assert "serving 10 model(s)" in seen and "s3cret" not in seen
        proc = crawl_cli(tmp_path / "home", m.group(0), "crawl", "--json", token="s3cret")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["files_verified"] == len(catalog.expected_files)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0

    out = crawl_cli(
        tmp_path / "home", "x", "mirror", "export", str(tmp_path / "exported"), "--json"
    )
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert counts["models"] == 7 and counts["files"] == len(catalog.expected_files)
    assert (
        json.loads((tmp_path / "exported" / "mirror.json").read_text())["format"]
        == "carlos-reg-mirror"
    )

    (tmp_path / "notamirror").mkdir()
    (tmp_path / "notamirror" / "keep.txt").write_text("mine")
    refused = crawl_cli(tmp_path / "home", "x", "mirror", "export", str(tmp_path / "notamirror"))
    assert refused.returncode == 1 and "not a mirror" in refused.stderr
    assert [p.name for p in (tmp_path / "notamirror").iterdir()] == ["keep.txt"]
    bad = crawl_cli(
        tmp_path / "home", "x", "mirror", "serve", str(tmp_path / "notamirror"), "--port", "0"
    )
    assert (
        bad.returncode == 1
        and "not a mirror directory" in bad.stderr
        and "Traceback" not in bad.stderr
    )
