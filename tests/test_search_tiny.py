"""Search, image queries, compare and the copyright report on LoRAs really signed with the tiny
profile (random weights: the mechanics are real, the rankings meaningless)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from signer import lorafiles as lf
from tests.conftest import run_cli
from tests.signer_support import tiny_profile

LORAS = {
    "ink": dict(seed=11, strength=1.0),
    "neon": dict(seed=22, strength=1.0),
    "mild": dict(seed=33, strength=0.3),
}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_models):
    """A registry with three tiny LoRAs signed by the CLI; returns (env, name -> version id, folder)."""
    root = tmp_path_factory.mktemp("signed")
    folder = root / "loras"
    for name, kw in LORAS.items():
        lf.write_kohya_lora(folder / f"{name}.safetensors", **kw)
    env = {
        "CARLOS_REG_HOME": str(root / "home"),
        "CARLOS_REG_PROFILE": "tiny",
        "CARLOS_REG_MODELS": str(tiny_models),
    }
    doc = json.loads(
        run_cli("sign", "--profile", "tiny", str(folder), "--json", env=env, check=True).stdout
    )
    ids = {r["input"].rsplit("/", 1)[-1].split(".")[0]: r["version_id"] for r in doc["results"]}
    return env, ids, folder


def _json(*args, env, check=True):
    proc = run_cli(*args, "--json", env=env, check=check)
    return json.loads(proc.stdout) if check else proc


@pytest.fixture(scope="module")
def lora_images(signed, tmp_path_factory):
    """PNG images drawn by the tiny pipeline with the 'ink' LoRA on the profile's own prompts and noise.

    With random weights a few images on other prompts or seeds differ from the base mean by as much as
    a LoRA does (the prompt mix alone moved the query 0.3–0.6 against Strengths of ~0.3), so the test
    would rank by luck. On the profile's samples the image path (PNG, decode, CLIP, minus the base mean)
    must reproduce the signature's own Direction: that is the mechanics under test."""
    import torch

    from signer.engine import Engine

    env, ids, folder = signed
    out = tmp_path_factory.mktemp("ink-images")
    engine = Engine(tiny_profile())
    engine.load_lora(folder / "ink.safetensors")
    s = engine.profile.settings
    latents = torch.stack([engine.profile.sample_noise(x) for x in engine.samples]).to(
        engine.pipe.unet.dtype
    )
    images = engine.pipe(
        prompt=[x.prompt for x in engine.samples],
        latents=latents,
        num_inference_steps=s["steps"],
        guidance_scale=s["guidance_scale"],
        width=s["width"],
        height=s["height"],
        cross_attention_kwargs={"scale": float(s["lora_scale"])},
        output_type="pil",
    ).images
    engine.unload_lora()
    for i, img in enumerate(images):
        img.save(out / f"ink-{i}.png")
    return out


def test_text_search_output_and_the_query_cache(signed):
    env, ids, _ = signed
    doc = _json("search", "ink wash painting", "-k", "3", env=env)
    assert doc["profile"] == "tiny" and doc["signed"] == 3 and len(doc["results"]) == 3
    assert doc["query"]["cached"] is False
    first = doc["results"][0]
    for field in (
        "rank",
        "score",
        "strength",
        "consistency",
        "name",
        "version_id",
        "base_model",
        "url",
        "trained_words",
    ):
        assert field in first
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3]
    assert sorted(r["score"] for r in doc["results"]) == [r["score"] for r in doc["results"]][::-1]
    again = _json(
        "search", "Ink   WASH painting", "-k", "3", env=env
    )  # same tokens: same cached vector
    assert again["query"]["cached"] is True
    assert [(r["version_id"], r["score"]) for r in again["results"]] == [
        (r["version_id"], r["score"]) for r in doc["results"]
    ]
    # In process: a cache hit returns the identical vector without loading the CLIP model.
    from registry.app import App
    from registry.settings import Settings
    from signer.search import SearchEngine

    engine = SearchEngine(App(Settings.load(home=env["CARLOS_REG_HOME"])))
    encoder = engine.encoder(engine.profile("tiny"))
    vec, hit = encoder.text_vector("ink wash painting")
    assert hit and encoder.source._clip is None
    fresh, hit = encoder.text_vector("a brand new query")
    assert not hit and encoder.source._clip is not None
    assert np.array_equal(encoder.text_vector("a brand new query")[0], fresh)


def test_filters_say_what_they_dropped_and_why(signed):
    env, ids, _ = signed
    full = _json("search", "neon city", "-k", "3", "--no-filter", env=env)
    strengths = {r["version_id"]: r["strength"] for r in full["results"]}
    cut = sorted(strengths.values())[1]  # keeps only the weakest LoRA
    doc = _json("search", "neon city", "-k", "3", "--max-strength", str(cut - 1e-6), env=env)
    assert doc["filtered"]["strength_above_max"] == 2 and len(doc["results"]) == 1
    dropped = {f["version_id"] for f in doc["filtered_from_top"]}
    assert dropped == {v for v, s in strengths.items() if s > cut - 1e-6}
    assert all("strength" in reason for f in doc["filtered_from_top"] for reason in f["reasons"])
    assert _json("search", "neon city", "--base-model", "Pony", env=env)["results"] == []


def test_image_query_ranks_the_lora_that_drew_the_images_first(signed, lora_images):
    env, ids, _ = signed
    images = sorted(str(p) for p in lora_images.iterdir())
    args = [a for p in images for a in ("--image", p)]
    doc = _json("search", *args, "-k", "3", "--no-filter", env=env)
    assert doc["results"][0]["version_id"] == ids["ink"], [
        (r["name"], r["score"]) for r in doc["results"]
    ]
    assert (
        doc["results"][0]["score"] > 0.99
    )  # the signature's own Direction, up to 8-bit PNG rounding
    assert doc["query"]["images"] == images


def test_copyright_reference_ranks_the_lora_that_drew_the_images_first(signed, lora_images):
    env, ids, _ = signed
    doc = _json(
        "report",
        "copyright",
        "--reference",
        str(lora_images),
        "--reference-top",
        "1",
        "--min-samples",
        "1",
        env=env,
    )
    by_rank = sorted(doc["loras"], key=lambda e: e["reference_rank"])
    assert by_rank[0]["version_id"] == ids["ink"] and by_rank[0]["reference_match"] is True
    assert doc["thresholds"]["reference"]["images"] == len(list(lora_images.iterdir()))
    assert sum(e["reference_match"] for e in doc["loras"]) == 1


def test_compare_planted_claim_scores_high_and_unrelated_is_flagged(signed, tmp_path):
    """Plant a LoRA whose Direction is exactly the query vector of its own claim text."""
    from registry.db import Database
    from registry.models import Signature, SignerProfile, Version
    from registry.settings import Settings
    from registry.signatures import save_signature
    from registry.vectors import from_blob

    env, ids, _ = signed
    # plant into a copy of the registry: the module's other tests expect its three LoRAs alone
    shutil.copytree(env["CARLOS_REG_HOME"], tmp_path / "home")
    env = {**env, "CARLOS_REG_HOME": str(tmp_path / "home")}
    import sqlalchemy as sa

    settings = Settings.load(home=env["CARLOS_REG_HOME"])
    db = Database(settings.db_url)
    claim = "watercolor painting"
    # the claim's query vector, exactly as search computes it (and caches it)
    os.environ["CARLOS_REG_MODELS"] = env["CARLOS_REG_MODELS"]
    from signer.claim_text import claim_text

    text = claim_text("Watercolor Painting v2 SDXL", [], [])
    assert text == claim
    run_cli("search", text, env=env, check=True)
    from registry.app import App
    from signer.query_encoder import QueryEncoder

    with db.read() as s:
        profile = s.execute(
            sa.select(SignerProfile).where(SignerProfile.name == "tiny")
        ).scalar_one()
    vec, cached = QueryEncoder(App(settings), profile).text_vector(text)
    assert cached
    with db.write() as s:
        s.add(Version(id=900, name="Watercolor Painting v2 SDXL"))
        s.add(Version(id=901, name="Watercolor Painting v2 SDXL copy"))
        s.flush()
        save_signature(
            s,
            version_id=900,
            profile_id=profile.id,
            direction=vec * 3,
            strength=2.0,
            consistency=0.2,
            n_samples=20,
        )
        save_signature(
            s,
            version_id=901,
            profile_id=profile.id,
            direction=-vec,
            strength=2.0,
            consistency=0.2,
            n_samples=20,
        )
    doc = _json("compare", "900", "901", env=env)
    rows = {r["version_id"]: r for r in doc["results"]}
    assert (
        rows[900]["claim"] == claim
        and rows[900]["claim_rank"] == 1
        and rows[900]["supported"] is True
    )
    assert rows[900]["agreement"] == pytest.approx(1.0, abs=1e-4)
    assert rows[901]["supported"] is False and "claim_not_supported" in rows[901]["flags"]
    assert doc["results"][0]["version_id"] == 901  # worst first
    assert (
        rows[900]["strongest_effect"]["term"]
        and rows[900]["undeclared_effect"]["term"] != "watercolor painting"
    )
    with db.read() as s:
        assert (
            from_blob(
                s.execute(
                    sa.select(Signature.direction).where(Signature.version_id == 900)
                ).scalar_one()
            ).shape
            == vec.shape
        )
    db.dispose()


def test_search_without_clip_weights_fails_with_one_clear_line(reference_registry):
    proc = run_cli("--db", reference_registry, "search", "watercolor", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "ViT-B-32" in proc.stderr


@pytest.mark.browser
def test_search_page_in_headless_chromium(signed):
    """Type a query into the page served by `serve`, submit, and see result rows (a real browser)."""
    from tests.browser import FLAGS, chromium
    from tests.service_support import Server

    if os.environ.get("CARLOS_REG_REQUIRE_BROWSER"):
        import playwright.sync_api as playwright  # required: a missing package fails, never skips
    else:
        playwright = pytest.importorskip("playwright.sync_api")
    env, ids, _ = signed
    server = Server.start(serve_args=("--schedule", "off"), env=env)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium(), args=[f for f in FLAGS if f != "--headless"]
            )
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#q", "neon city at night")
            page.fill("#k", "2")
            page.check("#no_filter")
            page.click("#go")
            # the server's first query loads CLIP and encodes the query prompts: sized for a
            # loaded machine (it took 63 s once under the suite plus a mutation run); an error
            # shown by the page ends the wait at once
            page.wait_for_selector("tr.result, #status.error", timeout=300_000)
            assert page.locator("#status.error").count() == 0, page.inner_text("#status")
            rows = page.locator("tr.result")
            assert rows.count() == 2
            names = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)]
            status, api = server.get("/api/search?q=neon+city+at+night&k=2&no_filter=true")
            assert status == 200 and names == [r["name"] for r in api["results"]]
            assert f"2 results from {api['signed']} signed LoRAs (profile tiny)" in page.inner_text(
                "#status"
            )
            page.fill("#q", "")
            page.click("#go")
            assert "Type what the LoRA should do" in page.inner_text("#status")
            browser.close()
    finally:
        server.stop()


LONG_NAME = "An extremely long LoRA name [/x] with \x1b[31m escapes and far more words than a terminal row holds"


def _fits(proc, width: int = 80) -> list[str]:
    lines = proc.stdout.splitlines()
    assert lines and all(len(line) <= width for line in lines), "\n".join(
        ln for ln in lines if len(ln) > width
    )
    assert "\x1b" not in proc.stdout
    return lines


def test_tables_fit_80_columns_names_cut_not_wrapped(signed, tmp_path):
    import sqlite3

    env, ids, _ = signed
    home = tmp_path / "home"
    shutil.copytree(env["CARLOS_REG_HOME"], home)
    env = {**env, "CARLOS_REG_HOME": str(home), "COLUMNS": "80"}
    db = sqlite3.connect(home / "registry.db")
    db.execute("UPDATE version SET name = ? WHERE id = ?", (LONG_NAME, ids["ink"]))
    db.commit()
    db.close()
    for args in (
        ["loras"],
        ["search", "ink wash painting", "--no-filter"],
        ["similar", str(ids["neon"])],
        ["compare"],
        ["report", "copyright", "--min-samples", "1"],
    ):
        lines = _fits(run_cli(*args, env=env, check=True))
        named = [ln for ln in lines if "│ An e" in ln]
        assert len(named) == 1 and "…" in named[0], (args, lines)  # one row, cut with an ellipsis
        assert "holds" not in "\n".join(
            lines
        )  # the rest of the name is not wrapped onto other lines
    wide = run_cli("loras", env={**env, "COLUMNS": "300"}, check=True).stdout
    assert "a terminal row holds" in wide  # with room, the whole name


def test_listings_speak_csv_and_tsv(signed):
    import csv
    import io

    env, ids, _ = signed
    rows = list(
        csv.reader(io.StringIO(run_cli("loras", "--format", "csv", env=env, check=True).stdout))
    )
    assert rows[0][:2] == ["ref", "name"] and {r[0] for r in rows[1:]} == {
        f"local:{-v}" for v in ids.values()
    }
    tsv = run_cli(
        "search", "ink", "--no-filter", "--format", "tsv", env=env, check=True
    ).stdout.splitlines()
    assert tsv[0].split("\t")[:3] == ["rank", "score", "strength"] and len(tsv) == 1 + len(ids)
    assert json.loads(
        run_cli("similar", str(ids["ink"]), "--format", "json", env=env, check=True).stdout
    )["results"]
