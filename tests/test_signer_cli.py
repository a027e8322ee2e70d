"""`carlos-reg sign --profile tiny DIR` end to end, as a user runs it, and the status command."""

from __future__ import annotations

import json

from signer import lorafiles as lf
from tests.conftest import run_cli


def test_sign_a_folder_with_good_and_bad_files_explains_every_bad_one(tmp_path, tiny_models):
    d = tmp_path / "loras"
    lf.write_kohya_lora(d / "style_a.safetensors", strength=0.5, seed=1)
    lf.write_kohya_lora(d / "style_b.safetensors", strength=0.2, seed=2, te=True)
    lf.write_kohya_lora(d / "nothing.safetensors", zero_up=True)
    lf.write_loha(d / "loha.safetensors")
    lf.write_sd15_lora(d / "sd15.safetensors")
    lf.write_truncated(d / "broken.safetensors")
    lf.write_pickle_lora(d / "old.ckpt")
    (d / "notes.txt").write_text("not a LoRA")
    proc = run_cli("sign", "--profile", "tiny", str(d), "--json")
    assert proc.returncode == 1, proc.stderr  # some inputs could not be signed
    assert "Traceback" not in proc.stderr and "skipped notes.txt" in proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {r["input"].rsplit("/", 1)[-1]: r for r in doc["results"]}
    assert set(by_name) == {
        "style_a.safetensors",
        "style_b.safetensors",
        "nothing.safetensors",
        "loha.safetensors",
        "sd15.safetensors",
        "broken.safetensors",
        "old.ckpt",
    }
    for name in ("style_a.safetensors", "style_b.safetensors"):
        r = by_name[name]
        assert (
            r["outcome"] == "signed"
            and r["strength"] > 0
            and r["n_samples"] == 20
            and r["version_id"] < 0
        )
    assert by_name["nothing.safetensors"]["outcome"] == "signed"
    assert by_name["nothing.safetensors"]["flags"] == ["no_effect"]
    expected = {
        "loha.safetensors": "LoHa",
        "sd15.safetensors": "SD 1.x",
        "broken.safetensors": "truncated",
        "old.ckpt": "pickle format (.ckpt)",
    }
    for name, reason in expected.items():
        assert (
            by_name[name]["outcome"] in ("failed", "unsupported")
            and reason in by_name[name]["reason"]
        ), name
    assert doc["signed"] == 3 and doc["not_signed"] == 4

    # Again: the same versions; the signed ones are kept, the dead ones are retried and explained again.
    before = {
        j["job_id"]: j
        for j in json.loads(run_cli("signer", "status", "--json", check=True).stdout)["dead"]
    }
    again = json.loads(run_cli("sign", "--profile", "tiny", str(d), "--json").stdout)
    assert {r["version_id"] for r in again["results"]} == {r["version_id"] for r in doc["results"]}
    assert again["signed"] == 3
    for name in ("loha.safetensors", "sd15.safetensors"):
        r = {x["input"].rsplit("/", 1)[-1]: x for x in again["results"]}[name]
        assert r["outcome"] == "failed" and expected[name] in r["reason"], r

    status = json.loads(run_cli("signer", "status", "--json", check=True).stdout)
    after = {j["job_id"]: j for j in status["dead"]}
    assert len(before) == 2 and set(after) == set(before)
    # retried: each dead job ran again (a later finish), not merely reported from the first run
    assert all(after[j]["finished_at"] > before[j]["finished_at"] for j in before), (before, after)
    (tiny,) = status["profiles"]
    assert tiny["name"] == "tiny" and tiny["base_cache"]["state"] == "ready"
    # LoHa and SD 1.5 die in their jobs; the truncated file never got one: it failed the container
    # check before it was copied into the store (and the pickle is never opened)
    assert tiny["jobs"]["lora"]["done"] == 3 and tiny["jobs"]["lora"]["dead"] == 2
    assert {d["reason"] for d in status["dead"]} and all(d["reason"] for d in status["dead"])

    # Trigger words for a local file: recorded, appended to the LoRA-branch prompts, a new signature.
    vid = by_name["style_a.safetensors"]["version_id"]
    triggered = json.loads(
        run_cli(
            "sign",
            "--profile",
            "tiny",
            "--trigger",
            "inkwash",
            str(d / "style_a.safetensors"),
            "--json",
            check=True,
        ).stdout
    )["results"][0]
    assert (
        triggered["version_id"] == vid
        and triggered["strength"] != by_name["style_a.safetensors"]["strength"]
    )
    shown = json.loads(
        run_cli("show", "--json", "--", str(vid), check=True).stdout
    )  # "--": negative id
    assert shown["source"] == "local" and shown["trained_words"] == ["inkwash"]
    assert shown["ref"] == f"local:{-vid}"
    assert (
        json.loads(run_cli("show", "--json", shown["ref"], check=True).stdout)["version_id"] == vid
    )
    assert shown["signatures"][0]["profile"] == "tiny" and shown["signatures"][0]["n_samples"] == 20


def test_sign_errors_are_one_line(tiny_models):
    proc = run_cli("sign", "--profile", "nope", "x.safetensors")
    assert (
        proc.returncode == 1
        and "no signer profile 'nope'" in proc.stderr
        and proc.stderr.count("\n") == 1
    )
    proc = run_cli("sign")
    assert proc.returncode == 2 and "give REFs" in proc.stderr


def test_sign_all_signs_every_verified_unsigned_version(tmp_path, tiny_models):
    """Versions left verified by the crawler (not queued) are found and signed by --all."""
    from registry.db import Database
    from registry.migrate import ensure_schema
    from registry.settings import Settings
    from tests.signer_support import add_local_version

    settings = Settings.load()
    db = Database(settings.db_url)
    ensure_schema(db)
    with db.write() as s:
        for vid in (101, 102):
            add_local_version(
                s,
                settings.artifacts,
                vid,
                lf.write_kohya_lora(tmp_path / f"{vid}.safetensors", seed=vid),
            )
    db.dispose()
    doc = json.loads(run_cli("sign", "--profile", "tiny", "--all", "--json", check=True).stdout)
    assert sorted(r["version_id"] for r in doc["results"]) == [101, 102]
    assert all(r["outcome"] == "signed" for r in doc["results"])
    again = json.loads(run_cli("sign", "--profile", "tiny", "--all", "--json", check=True).stdout)
    assert again["results"] == []
