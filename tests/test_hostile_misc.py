"""Weaker spots of issue #12, item 12: local files checked before they are copied, out-of-range
ids, slow request headers, a server's long Retry-After, report files written through a planted
symlink."""

from __future__ import annotations

import json
import socket
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.mirror import BackgroundServer, make_app
from tests.conftest import run_cli
from tests.crawler_helpers import LISTING, Faults, respond, standard_catalog
from tests.service_support import Server
from tests.test_import import _small_table


def test_local_sign_refuses_bad_containers_before_copying_them(tmp_path):
    bad = {
        "zero.safetensors": b"",
        "pickle.safetensors": b"\x80\x04\x95" + b"\0" * 64,
        "zip.safetensors": b"PK\x03\x04" + b"\0" * 64,
        "deep.safetensors": struct.pack("<Q", 20_003)
        + b"{"
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}"
        + b"  ",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    home = tmp_path / "home"
    proc = run_cli(
        "sign",
        "--profile",
        "tiny",
        "--json",
        *(str(tmp_path / n) for n in bad),
        env={"CARLOS_REG_HOME": str(home)},
    )
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["outcome"] for r in results] == ["unsupported"] * len(bad)
    assert all(r["reason"].startswith("not a valid safetensors file") for r in results), results
    assert not [
        p for p in (home / "artifacts").rglob("*") if p.is_file()
    ]  # nothing entered the store


@pytest.mark.parametrize(
    "ref",
    [
        "99999999999999999999",
        "-99999999999999999999",
        "local:99999999999999999999",
        "civitai:99999999999999999999@1",
        "civitai:5@99999999999999999999",
        "9" * 5000,
    ],
)
def test_out_of_range_refs_are_not_found_not_a_crash(small_registry, ref):
    proc = run_cli("--db", small_registry, "show", "--", ref)
    assert proc.returncode == 1 and "Error: no " in proc.stderr, proc.stderr
    assert "OverflowError" not in proc.stderr and "ValueError" not in proc.stderr


def test_out_of_range_values_over_http_are_400_or_404(small_registry):
    huge = "9" * 30
    server = Server.start("--db", small_registry, serve_args=("--schedule", "off"))
    try:
        assert server.get(f"/api/loras/{huge}")[0] == 404
        assert server.get(f"/api/loras/civitai:{huge}@1")[0] == 404
        status, doc = server.get(f"/api/loras?offset={huge}")
        assert status == 400 and "offset" in doc["error"]
        status, doc = server.get(f"/api/loras?limit={'9' * 5000}")
        assert status == 400 and "limit" in doc["error"]
    finally:
        server.stop()
    assert run_cli("--db", small_registry, "loras", "--offset", huge).returncode == 2


@pytest.mark.timeout(120)
def test_slow_headers_are_closed_and_an_overlong_url_is_a_json_400(small_registry):
    server = Server.start(
        "--db", small_registry, serve_args=("--schedule", "off", "--header-timeout", "1")
    )
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert (
                conn.recv(1024) == b""
            )  # the server hung up (no answer to a request never completed)
        status, _ = server.get("/api/health")
        assert status == 200  # and it still serves everyone else
        with socket.create_connection((host, int(port)), timeout=60) as conn:  # an overlong URL
            conn.sendall(b"GET /api/loras/" + b"A" * 20_000 + b"<b> HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
        assert b"application/json" in head and "malformed HTTP request" in json.loads(body)["error"]
        assert b"AAAA" not in answer  # the request is not quoted back
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_a_retry_after_beyond_max_retry_after_fails_the_request_without_waiting(tmp_path):
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    faults = Faults()
    faults.add(
        LISTING, respond(429, {"error": "slow down"}, headers={"Retry-After": "600"}), times=None
    )
    with BackgroundServer(make_app(tmp_path / "mirror", middlewares=[faults.middleware])) as api:
        proc = run_cli(
            "crawl",
            "--max-backoff",
            "1",
            "--max-retry-after",
            "5",
            env={"CARLOS_REG_HOME": str(tmp_path / "home"), "CIVITAI_BASE_URL": api.url},
        )
    assert proc.returncode == 1 and "asks to wait 600 s" in proc.stderr, proc.stderr
    assert len(faults.requests("/api/v1/models")) == 1


def test_report_files_never_follow_a_planted_symlink(small_registry, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "report.html"
    (tmp_path / ".report.html.tmp").symlink_to(victim)  # the name the old code always used
    proc = run_cli(
        "--db", small_registry, "report", "copyright", "--format", "html", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me" and out.read_text().lstrip().lower().startswith(
        "<!doctype html"
    )
    assert not out.is_symlink() and (tmp_path / ".report.html.tmp").is_symlink()
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name.startswith(".report.html.") and p.name.endswith(".tmp") and not p.is_symlink()
    ]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (needs root; skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(300)
def test_a_full_disk_stops_a_metadata_crawl_with_one_problem(small_disk, tmp_path):
    from crawler.mirror import model_entry, version_entry, write_catalog

    models = []
    for i in range(1, 301):  # ~2.5 MB of payload for a 1 MiB disk
        m = model_entry(i, versions=[version_entry(i * 10, files=[])])
        m["description"] = f"model {i} " + "x" * 8000
        models.append(m)
    write_catalog(tmp_path / "mirror", models)
    with BackgroundServer(make_app(tmp_path / "mirror")) as api:
        proc = run_cli(
            "crawl",
            "--no-download",
            "--json",
            env={"CARLOS_REG_HOME": str(small_disk / "home"), "CIVITAI_BASE_URL": api.url},
            timeout=120,
        )
    assert proc.returncode == 1 and "disk is full" in proc.stderr, proc.stderr
    assert proc.stderr.count("could not be stored") == 0  # not retried item by item
    summary = json.loads(proc.stdout)
    assert summary["status"] == "failed"
    assert [e["message"] for e in summary["error_samples"] if "disk is full" in e["message"]]
    assert len(summary["error_samples"]) == 1


@pytest.mark.timeout(300)
def test_read_commands_work_on_a_read_only_data_dir(tmp_path):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        parquet = tmp_path / "small.parquet"
        pq.write_table(pa.table(_small_table()), parquet)
        home = mount / "home"
        run_cli("--home", str(home), "--create", "import", "carlos", str(parquet), check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        for args in (
            ("loras",),
            ("show", "1000"),
            ("similar", "1000"),
            ("crawls",),
            ("signer", "status"),
        ):
            proc = run_cli("--home", str(home), *args)
            assert proc.returncode == 0, (args, proc.stderr)
            assert "cannot reach the registry database" not in proc.stderr
        assert "Ink Style" in run_cli("--home", str(home), "loras").stdout
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
