"""``carlos-reg scan``: a fake ComfyUI tree of real files, a Civitai look-alike on loopback, real registries."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys

import pytest

from crawler import stfile
from crawler.mirror import (
    BackgroundServer,
    file_entry,
    make_app,
    model_entry,
    tiny_lora,
    version_entry,
    write_catalog,
)
from tests.conftest import REPO, run_cli
from tests.crawler_helpers import Faults

BY_HASH = "/api/v1/model-versions/by-hash/"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sd15_lora() -> bytes:
    """An SD 1.5-shaped kohya LoRA: its cross-attention keys take 768-wide text features."""
    tensors = {}
    for proj, n_in, n_out in (
        ("attn1_to_q", 320, 320),
        ("attn2_to_k", 768, 320),
        ("attn2_to_v", 768, 320),
    ):
        key = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_{proj}"
        tensors[f"{key}.lora_down.weight"] = (
            "F32",
            [2, n_in],
            struct.pack(f"<{2 * n_in}f", *([0.01] * 2 * n_in)),
        )
        tensors[f"{key}.lora_up.weight"] = (
            "F32",
            [n_out, 2],
            struct.pack(f"<{2 * n_out}f", *([0.01] * 2 * n_out)),
        )
        tensors[f"{key}.alpha"] = ("F32", [], struct.pack("<f", 2.0))
    return stfile.build(tensors, metadata={"ss_base_model_version": "sd_v1"})


def civitai_model(
    model_id: int, version_id: int, data: bytes, base_model: str = "SDXL 1.0"
) -> dict:
    return model_entry(
        model_id,
        name=f"Civitai {model_id}",
        creator="alice",
        tags=["style"],
        versions=[
            version_entry(
                version_id,
                base_model=base_model,
                trained_words=[f"trig{version_id}"],
                files=[file_entry(version_id * 10, data, name=f"civitai_{version_id}.safetensors")],
            )
        ],
    )


@pytest.fixture
def world(tmp_path):
    known, crawled, local, changing, sd15 = (
        tiny_lora(101),
        tiny_lora(201),
        tiny_lora(301),
        tiny_lora(401),
        sd15_lora(),
    )
    loras = tmp_path / "ComfyUI" / "models" / "loras"
    (loras / "styles" / "nested").mkdir(parents=True)
    files = {
        "known": loras / "styles" / "known.safetensors",
        "known_copy": loras / "Known COPY (1).safetensors",  # the same file under a second name
        "crawled": loras / "crawled.safetensors",
        "local": loras / "styles" / "nested" / "mine.safetensors",
        "changing": loras / "changing.safetensors",
        "gone": loras / "gone.safetensors",
        "sd15": loras / "sd15_lora.safetensors",
        "pickle": loras / "old.ckpt",
        "zip": loras / "actually_torch_save.safetensors",
    }
    for key, data in (
        ("known", known),
        ("known_copy", known),
        ("crawled", crawled),
        ("local", local),
        ("changing", changing),
        ("gone", tiny_lora(501)),
        ("sd15", sd15),
    ):
        files[key].write_bytes(data)
    files["pickle"].write_bytes(pickle.dumps({"lora": [1.0, 2.0]}, protocol=2))
    files["zip"].write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    os.symlink("../..", loras / "styles" / "nested" / "loop")  # a symlink loop back to the top
    (loras / "notes.txt").write_text("not a LoRA")

    mirror = tmp_path / "mirror"
    write_catalog(mirror, [civitai_model(200, 2001, crawled)], {20010: crawled})
    faults = Faults()
    server = BackgroundServer(make_app(mirror, middlewares=[faults.middleware])).start()
    yield dict(
        tmp_path=tmp_path,
        loras=loras,
        files=files,
        mirror=mirror,
        faults=faults,
        server=server,
        known=known,
        crawled=crawled,
        local=local,
        changing=changing,
        sd15=sd15,
    )
    server.stop()


def scan(world, db_url, *args):
    env = {"CIVITAI_BASE_URL": world["server"].url}
    proc = run_cli("--db", db_url, "scan", str(world["loras"]), *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def by_path(doc) -> dict:
    return {f["path"]: f for f in doc["files"]}


def test_scan_identifies_uses_in_place_and_rescans_for_free(world, db_url, tmp_path):
    env = {"CIVITAI_BASE_URL": world["server"].url}
    run_cli(
        "--db", db_url, "crawl", "--no-download", env=env, check=True
    )  # the registry knows 2001's file
    # Civitai also knows a LoRA the crawl did not bring (it appeared later), and an SD 1.5 one
    write_catalog(
        world["mirror"],
        [
            civitai_model(200, 2001, world["crawled"]),
            civitai_model(100, 1001, world["known"]),
            civitai_model(300, 3001, world["sd15"], base_model="SD 1.5"),
        ],
        {20010: world["crawled"]},
    )
    faults, files = world["faults"], world["files"]
    faults.seen.clear()

    first = scan(world, db_url, "--sign", "--profile", "tiny")
    got = by_path(first)
    assert sorted(got) == sorted(
        str(p) for p in files.values()
    )  # every LoRA-like file once; loop ended
    assert (
        got[str(files["crawled"])]["category"] == "registry"
        and got[str(files["crawled"])]["version_id"] == 2001
    )
    for key in ("known", "known_copy"):
        e = got[str(files[key])]
        assert (e["category"], e["version_id"], e["model_id"]) == ("civitai", 1001, 100)
        assert e["autov2"] == sha(world["known"])[:10].upper()
    assert {got[str(files[k])]["signing"] for k in ("known", "known_copy")} == {
        "queued",
        "already queued",
    }
    mine = got[str(files["local"])]
    assert (
        mine["category"] == "local"
        and mine["ref"].startswith("local:")
        and mine["signing"] == "queued"
    )
    sd15 = got[str(files["sd15"])]
    assert (
        sd15["category"] == "unsignable" and "SD" in sd15["reason"] and sd15["version_id"] == 3001
    )
    assert sd15["signing"] is None
    assert "pickle" in got[str(files["pickle"])]["reason"]
    assert "pickle/zip" in got[str(files["zip"])]["reason"]
    assert first["hashed_files"] == len(files) and first["missing"] == []

    # Civitai was asked once per distinct hash the registry did not know, and fetched each found model once
    asked = [s.path[len(BY_HASH) :].lower() for s in faults.requests(BY_HASH)]
    assert sorted(asked) == sorted(set(asked))
    assert (
        sha(world["crawled"]) not in asked
        and sha(world["known"]) in asked
        and sha(world["local"]) in asked
    )
    assert sorted(s.path for s in faults.requests("/api/v1/models/")) == [
        "/api/v1/models/100",
        "/api/v1/models/300",
    ]

    # identified files are stored like crawled ones; the file is used in place (a hardlink, not a copy)
    shown = json.loads(
        run_cli("--db", db_url, "show", "civitai:100@1001", "--json", check=True).stdout
    )
    assert shown["model"]["name"] == "Civitai 100" and shown["model"]["tags"] == ["style"]
    assert sorted(lf["path"] for lf in shown["local_files"]) == sorted(
        [str(files["known"]), str(files["known_copy"])]
    )
    store_copy = next(tmp_path.glob(f"home/artifacts/lora/**/{sha(world['known'])}.safetensors"))
    assert os.stat(store_copy).st_ino in {
        os.stat(files["known"]).st_ino,
        os.stat(files["known_copy"]).st_ino,
    }

    # between scans: one file changes content, one vanishes
    files["changing"].write_bytes(tiny_lora(402))
    st = os.stat(files["changing"])
    os.utime(files["changing"], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    gone_ref = got[str(files["gone"])]["ref"]
    files["gone"].unlink()
    faults.seen.clear()

    second = scan(world, db_url)
    got2 = by_path(second)
    assert second["hashed_files"] == 1 and second["bytes_hashed"] == len(tiny_lora(402))
    changed = got2[str(files["changing"])]
    assert changed["changed"] and changed["previous_sha256"] == sha(world["changing"])
    assert changed["sha256"] == sha(tiny_lora(402))
    assert changed["version_id"] != got[str(files["changing"])]["version_id"]
    assert second["missing"] == [str(files["gone"])]
    assert [s.path for s in faults.requests()] == [BY_HASH + sha(tiny_lora(402)).upper()]
    gone = json.loads(run_cli("--db", db_url, "show", gone_ref, "--json", check=True).stdout)
    assert gone["local_files"][0]["status"] == "missing" and gone["local_files"][0]["missing_since"]

    # an unchanged tree: no file byte read, no HTTP request
    faults.seen.clear()
    third = scan(world, db_url)
    assert third["hashed_files"] == 0 and third["bytes_hashed"] == 0 and faults.seen == []
    assert {p: (f["category"], f["version_id"]) for p, f in by_path(third).items()} == {
        p: (f["category"], f["version_id"]) for p, f in got2.items()
    }


def test_offline_scan_asks_nothing_and_a_later_online_scan_identifies(world, sqlite_url):
    write_catalog(world["mirror"], [civitai_model(100, 1001, world["known"])], {})
    offline = by_path(scan(world, sqlite_url, "--offline"))
    assert offline[str(world["files"]["known"])]["category"] == "local"
    assert world["faults"].seen == []
    online = by_path(scan(world, sqlite_url))
    assert online[str(world["files"]["known"])]["category"] == "civitai"
    assert online[str(world["files"]["known"])]["version_id"] == 1001
    world["faults"].seen.clear()
    scan(world, sqlite_url)
    assert world["faults"].requests(BY_HASH) == []  # every hash was answered once (found or not)
    scan(world, sqlite_url, "--refresh")
    asked = {s.path[len(BY_HASH) :].lower() for s in world["faults"].requests(BY_HASH)}
    assert (
        sha(world["local"]) in asked and sha(world["known"]) not in asked
    )  # identified files are not re-asked


def test_scan_hashing_does_not_import_torch(world, sqlite_url):
    code = (
        "import sys; from registry.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--db", sqlite_url, "scan", str(world["loras"]), "--offline"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_scan_of_a_missing_folder_is_one_line(sqlite_url, tmp_path):
    proc = run_cli("--db", sqlite_url, "scan", str(tmp_path / "nope"))
    assert (
        proc.returncode != 0
        and "no such file or folder" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_a_signature_applies_to_every_version_of_the_same_file(database):
    """Same SHA-256 and the same trigger suffix: no job, a reused signature that says where it came from."""
    import numpy as np

    from registry.lora_detail import lora_detail
    from registry.models import File, Signature, SignerProfile, SignJob, Version
    from registry.queue import JobQueue
    from registry.signatures import save_signature
    from signer import queueing

    digest = "ab" * 32
    with database.write() as s:
        profile = SignerProfile(name="p", hash="f" * 64, settings={"trigger_words": "append"})
        s.add(profile)
        for vid, words in ((1, ["inkwash"]), (2, ["inkwash"]), (3, ["other words"])):
            s.add(
                Version(
                    id=vid,
                    name=f"v{vid}",
                    source="civitai",
                    trained_words=words,
                    raw={"trainedWords": words},
                )
            )
            s.flush()
            s.add(
                File(
                    version_id=vid,
                    sha256=digest,
                    state="verified",
                    local_path=f"lora/x{vid}.safetensors",
                    primary=True,
                )
            )
        s.flush()
        pid = profile.id
        direction = np.linspace(-1, 1, 8).astype(np.float32)
        save_signature(
            s,
            version_id=1,
            profile_id=pid,
            direction=direction,
            strength=3.5,
            consistency=0.25,
            n_samples=40,
            valid=True,
            flags=[],
            estimates={"trigger_suffix": ", inkwash"},
            file_sha256=digest,
            source="signed",
        )
    with database.write() as s:
        queue = JobQueue(database)
        assert queueing.enqueue_lora(s, queue, pid, 2) is False  # same file, same suffix: reused
        assert (
            queueing.enqueue_lora(s, queue, pid, 3) is True
        )  # other trigger words: other prompts, signed anew
    with database.read() as s:
        import sqlalchemy as sa

        jobs = set(s.execute(sa.select(SignJob.version_id).where(SignJob.kind == "lora")).scalars())
        assert jobs == {3}
        sigs = {r.version_id: r for r in s.execute(sa.select(Signature)).scalars()}
        assert (
            sigs[2].source == "reused" and sigs[2].direction == sigs[1].direction and 3 not in sigs
        )
        shown = lora_detail(s, 2)["signatures"][0]
        assert (
            shown["source"] == "reused"
            and shown["reused_from_version"] == 1
            and shown["strength"] == 3.5
        )


def test_a_failed_lookup_stays_unresolved_and_is_asked_again_next_scan(
    world, sqlite_url, monkeypatch
):
    """Answers are stored as they come: a scan that could not ask about one hash resumes with it alone."""
    from plugins.library.scan import Scanner
    from registry.app import App
    from registry.settings import Settings
    from tests.crawler_helpers import FAST, respond

    write_catalog(world["mirror"], [civitai_model(100, 1001, world["known"])], {})
    broken = BY_HASH + sha(world["local"]).upper()
    rule = world["faults"].add(
        lambda r: r.path == broken, respond(503, {"error": "busy"}), times=None
    )
    monkeypatch.setenv("CIVITAI_BASE_URL", world["server"].url)
    app = App(Settings.load(home=world["tmp_path"] / "home", db=sqlite_url))
    first = Scanner(app, client_kwargs={"policy": FAST}).run([world["loras"]])
    got = {f["path"]: f for f in first.files}
    assert got[str(world["files"]["local"])]["category"] == "unresolved"
    assert got[str(world["files"]["known"])]["category"] == "civitai"
    assert first.lookups["errors"] == 1 and "503" in first.errors[0]
    assert (
        rule.hits == FAST.max_attempts
    )  # retried as the crawler's policy says, then left for later
    world["faults"].rules.clear()
    world["faults"].seen.clear()
    second = Scanner(app, client_kwargs={"policy": FAST}).run([world["loras"]])
    assert [s.path for s in world["faults"].seen] == [broken]
    assert {f["path"]: f for f in second.files}[str(world["files"]["local"])]["category"] == "local"
    app.close()
