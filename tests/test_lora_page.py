"""The LoRA page's API (`/api/lora/REF`) and the web API's error contract, on a real server."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.service_support import Server


@pytest.fixture
def server(small_registry):
    srv = Server.start("--db", small_registry, serve_args=("--schedule", "off"))
    yield srv
    srv.stop()


def test_every_ref_form_opens_the_same_lora(server):
    status, doc = server.get("/api/lora/1000")
    assert status == 200, doc
    model_id = doc["model_id"]
    forms = [
        f"civitai:{model_id}@1000",
        f"urn:air:sdxl:lora:civitai:{model_id}@1000",
        f"https://civitai.com/models/{model_id}?modelVersionId=1000",
    ]
    for ref in forms:
        status, other = server.get("/api/lora/" + urllib.parse.quote(ref, safe=""))
        assert (status, other.get("version_id")) == (200, 1000), (ref, other)
    status, other = server.get(
        f"/api/lora/https://civitai.com/models/{model_id}?modelVersionId=1000"
    )
    assert (status, other.get("version_id")) == (200, 1000), other
    sig = doc["signature"]
    # Strengths 1.5, 2.5, 3.5 and Consistencies 0.1, 0.2, 0.3: version 1000 is the lowest of three
    assert (
        sig["profile"] == "carlos-published"
        and sig["strength_percentile"] == sig["consistency_percentile"] == 33.3
    )
    assert doc["url"].startswith("https://civitai.com/models/")  # imported: Civitai's own LoRAs
    assert doc["neighbours"]["results"] and all(
        r["version_id"] != 1000 for r in doc["neighbours"]["results"]
    )
    status, err = server.get("/api/lora/999999")
    assert status == 404 and "999999" in err["error"]
    status, err = server.get("/api/lora/1000?color=red")
    assert status == 400 and "color" in err["error"]


def test_unknown_parameters_are_refused_by_name(server):
    for path, name in [
        ("/api/search?q=x&colour=red", "colour"),
        ("/api/loras?sigend=true", "sigend"),
        ("/api/similar/1000?kk=3", "kk"),
        ("/api/stats?x=1", "x"),
        ("/api/report/copyright?strenght_threshold=1", "strenght_threshold"),
        ("/api/compare/1000?worst=2", "worst"),
    ]:
        status, doc = server.get(path)
        assert status == 400 and f"unknown parameter {name}" in doc["error"], (path, doc)


def test_stats_count_signed_loras_per_profile(server):
    status, doc = server.get("/api/stats")
    assert status == 200 and doc["loras"] == 3
    assert doc["profiles"] == [
        {"name": "carlos-published", "hash": doc["profiles"][0]["hash"], "signed": 3}
    ]


def test_missing_clip_weights_are_a_500_with_a_stable_code_and_the_detail_goes_to_the_log(
    small_registry,
):
    server = Server.start(
        "--db", small_registry, serve_args=("--schedule", "off"), env={"HF_HUB_OFFLINE": "1"}
    )
    try:
        status, doc = server.get("/api/search?q=watercolor")
        assert status == 500 and doc["code"] == "model_unavailable"
        assert (
            "ViT-B-32" not in doc["error"] and len(doc["error"]) < 120
        )  # the visitor gets the short form
    finally:
        server.stop()
    assert "ViT-B-32" in server.output()  # the operator gets the detail
