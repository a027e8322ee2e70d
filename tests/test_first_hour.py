"""A new user's first hour (#16): imported rows filled in from Civitai, one vocabulary, listings
that say why a LoRA is unsigned, `loras --sort/--query`, readable crawl runs, and model commands
that refuse at once when weights are missing."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.crawler_helpers import lora_model, serve, write_catalog

NO_WEIGHTS = {
    "HF_HUB_OFFLINE": "1",
    "CARLOS_REG_CLIP": "",
    "CARLOS_REG_SDXL": "",
    "CARLOS_REG_ALLOW_DOWNLOAD": "",
}


def _parquet(path, rows: list[tuple[int, int | None, str]]) -> str:
    rng = np.random.default_rng(1)
    n = len(rows)
    pq.write_table(
        pa.table(
            {
                "version_id": [r[0] for r in rows],
                "model_id": [r[1] for r in rows],
                "model_name": [r[2] for r in rows],
                "model_description": [None] * n,
                "model_nsfw_level": [1] * n,
                "folder_name": [f"f{r[0]}" for r in rows],
                "direction": [rng.normal(size=512).astype(np.float32).tolist() for _ in rows],
                "strength": [1.0 + i for i in range(n)],
                "consistency": [0.1 * (i + 1) for i in range(n)],
                "model_download_count": [5] * n,
            }
        ),
        path,
    )
    return str(path)


def _cli(home, *args, env=None, check=True):
    return run_cli("--home", str(home), *args, env=env, check=check)


def _json(home, *args, env=None):
    return json.loads(_cli(home, *args, "--json", env=env).stdout)


@pytest.fixture(scope="module")
def hydrated(tmp_path_factory):
    """A registry of three imported rows, hydrated from a loopback Civitai that knows two of the models."""
    tmp_path = tmp_path_factory.mktemp("hydrated")
    blobs: dict[int, bytes] = {}
    models = [
        lora_model(5, [1000], base_model="Pony", blobs=blobs, tags=("ink",), creator="inky"),
        lora_model(7, [1002, 1003], base_model="SDXL 1.0", blobs=blobs),
    ]
    write_catalog(tmp_path / "mirror", models, blobs)
    home = tmp_path / "home"
    parquet = _parquet(
        tmp_path / "db.parquet",
        [(1000, 5, "Ink Style"), (1001, 6, "Deleted One"), (1002, 7, "Comic")],
    )
    with serve(tmp_path / "mirror") as server:
        proc = _cli(
            home,
            "--create",
            "import",
            "carlos",
            parquet,
            "--hydrate",
            env={"CIVITAI_BASE_URL": server.url},
            check=False,
        )
    return home, proc


def test_import_hydrate_fills_in_civitai_metadata(hydrated):
    home, proc = hydrated
    assert proc.returncode == 0, proc.stderr
    assert "imported 3 rows" in proc.stderr
    ink = _json(home, "show", "1000")
    assert ink["base_model"] == "Pony" and ink["trained_words"] == ["trig1000"]
    assert ink["model"]["tags"] == ["ink"] and ink["model"]["creator"] == "inky"
    assert ink["files"] and ink["files"][0]["hashes"]["SHA256"]
    # the imported signature is still there, now on a row with Civitai metadata
    assert [s["profile"] for s in ink["signatures"]] == ["carlos-published"]
    # base-model filters work on imported rows (they returned nothing before)
    pony = _json(home, "loras", "--base-model", "pony")
    assert [r["version_id"] for r in pony["loras"]] == [1000]
    # the model Civitai no longer has is reported, once, and its row stays as imported
    assert _json(home, "show", "1001")["base_model"] is None
    run = _json(home, "crawls", "1")
    assert [e["item"] for e in run["errors"]] == ["model 6"] and "not on Civitai" in run["errors"][
        0
    ]["message"]
    assert proc.stderr.count("model 6") == 1
    # nothing downloaded: hydration is metadata only
    assert all(f["state"] != "verified" for f in ink["files"])
    # a second run has nothing left but the missing model
    again = _cli(
        home,
        "crawl",
        "--imported",
        "--no-download",
        "--json",
        env={"CIVITAI_BASE_URL": "http://127.0.0.1:9"},
        check=False,
    )
    assert "model 6" in again.stdout or "model 6" in again.stderr


def test_one_vocabulary_across_similar_report_and_compare_rows(hydrated):
    home, _ = hydrated
    similar = _json(home, "similar", "1000", "-k", "2")
    assert similar["target"]["ref"] == "civitai:5@1000" and "ref" not in similar
    assert all(r["ref"].startswith("civitai:") for r in similar["results"])
    report = _json(home, "report", "copyright")
    assert all(
        isinstance(e["ref"], str) and "identical_to" not in e and "exact_duplicates" in e
        for e in report["loras"]
    )


def test_unsigned_rows_say_why(tmp_path):
    """`loras --unsigned` separates what is waiting from what can never be signed, with the reason."""
    blobs: dict[int, bytes] = {}
    good = lora_model(5, [1000], blobs=blobs)
    pickle = lora_model(6, [1001], blobs=blobs, format="PickleTensor", name="old.pt")
    write_catalog(tmp_path / "mirror", [good, pickle], blobs)
    home = tmp_path / "home"
    with serve(tmp_path / "mirror") as server:
        _cli(home, "--create", "crawl", env={"CIVITAI_BASE_URL": server.url})
    rows = {r["version_id"]: r for r in _json(home, "loras", "--unsigned")["loras"]}
    assert rows[1000]["sign_status"] == {"state": "ready", "reason": None}
    assert rows[1001]["sign_status"]["state"] == "unsignable"
    assert "pickle" in rows[1001]["sign_status"]["reason"].lower()
    table = _cli(home, "loras", "--unsigned", env={"COLUMNS": "200"}).stdout
    assert "ready" in table and "unsignable" in table


def test_loras_sort_and_query(hydrated):
    home, _ = hydrated
    by_strength = [r["version_id"] for r in _json(home, "loras", "--sort", "strength")["loras"]]
    assert by_strength[:3] == [
        1002,
        1001,
        1000,
    ]  # strengths 3, 2, 1; the unsigned version 1003 last
    assert by_strength[-1] == 1003
    assert [
        r["version_id"]
        for r in _json(home, "loras", "--sort", "strength", "--limit", "2", "--offset", "1")[
            "loras"
        ]
    ] == [1001, 1000]
    assert [r["version_id"] for r in _json(home, "loras", "--query", "lora 5")["loras"]] == [
        1000
    ]  # Civitai's name
    assert [r["version_id"] for r in _json(home, "loras", "--query", "DELETED")["loras"]] == [1001]
    assert _json(home, "loras", "--query", "%")["loras"] == []  # LIKE wildcards are text
    names = [r["name"] for r in _json(home, "loras", "--sort", "name")["loras"]]
    assert names == sorted(names, key=str.lower)


def test_crawl_run_reads_as_a_table_at_80_columns(hydrated):
    home, _ = hydrated
    out = _cli(home, "crawls", "1", env={"COLUMNS": "80"}).stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    assert "{'" not in out and "models: 3" in out  # parameters one per line, not a dict
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", out)  # times to the second
    assert any("model 6" in line for line in lines)


def test_missing_weights_are_refused_before_torch_loads(hydrated):
    """Searching the imported profile names that profile and the exact weights, in about a second."""
    home, _ = hydrated
    started = time.monotonic()
    proc = _cli(
        home, "search", "ink", env={**NO_WEIGHTS, "HF_HOME": str(home / "empty-hf")}, check=False
    )
    assert proc.returncode != 0
    message = proc.stderr
    assert "'carlos-published'" in message and "timm/vit_base_patch32_clip_224.openai" in message
    assert "openai/clip-vit-base-patch32" in message and "CARLOS_REG_CLIP" in message
    assert "Traceback" not in message
    del started  # no timing assertion: the import check below is the contract
    probe = run_cli(
        "--home",
        str(home),
        "search",
        "ink",
        env={**NO_WEIGHTS, "HF_HOME": str(home / "empty-hf"), "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert "| torch" not in probe.stderr and "|   torch" not in probe.stderr
