"""Civitai as it really is (issue #13) and trigger words as Civitai gives them (issue #11).

Payloads are shaped like Civitai's own answers (research/civitai-api.md §2.3, §9, §11): current
list versions without ``createdAt``, a 2023-shaped version with ``createdAt``/``updatedAt`` and no
``publishedAt``, early access with ``earlyAccessEndsAt``, ``mode: Archived`` (files ``[]``, no
``downloadUrl``), ``nsfwLevel`` at version and model level disagreeing with ``nsfw``, files with
every hash type. They are served by the real mirror on loopback and crawled by the real crawler
in three stages (a version turns public, a model is archived, another comes back), then read
through ``loras``, ``show``, ``search`` and the HTTP API.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from crawler.mirror import write_catalog
from registry.catalog import display_words, html_to_text, is_nsfw
from registry.models import File, Version
from signer import lorafiles as lf
from tests.conftest import run_cli
from tests.crawler_helpers import DOWNLOADS, Faults, make_app_obj, respond, run, serve

FUTURE = "2099-03-09T11:04:51.120Z"
WEIRD_WORDS = [
    "(hands on own chest, deep skin:1.2)",
    "",
    "masterpiece, best quality",
    "masterpiece, best quality",
    " ünïcode  words ",
    "inkwash style",
]


def civitai_file(file_id: int, data: bytes) -> dict:
    sha = hashlib.sha256(data).hexdigest().upper()
    return {
        "id": file_id,
        "name": f"lora_{file_id}.safetensors",
        "sizeKB": len(data) / 1024,
        "type": "Model",
        "metadata": {"format": "SafeTensor", "size": "pruned", "fp": "bf16"},
        "pickleScanResult": "Success",
        "pickleScanMessage": "No Pickle imports",
        "virusScanResult": "Success",
        "virusScanMessage": None,
        "scannedAt": "2026-03-02T10:58:12.004Z",
        "hashes": {
            "AutoV1": "1A2B3C4D",
            "AutoV2": sha[:10],
            "SHA256": sha,
            "CRC32": "0BADC0DE",
            "BLAKE3": "55AA" * 16,
            "AutoV3": "44EE12AB90CD",
        },
        "primary": True,
    }


def current_version(
    vid: int, files: list, *, nsfw_level: int = 1, base: str = "SDXL 1.0", words=("trig",), **extra
) -> dict:
    """A version as ``/api/v1/models`` lists it today: no createdAt/updatedAt/modelId."""
    doc = {
        "id": vid,
        "index": 0,
        "name": f"v{vid}",
        "description": "<p>changelog</p>",
        "baseModel": base,
        "baseModelType": "Standard",
        "trainedWords": list(words),
        "publishedAt": "2026-03-02T11:04:51.120Z",
        "availability": "Public",
        "nsfwLevel": nsfw_level,
        "flags": 0,
        "vaeId": None,
        "supportsGeneration": True,
        "paidAccess": None,
        "stats": {"downloadCount": 3, "thumbsUpCount": 1, "thumbsDownCount": 0},
        "files": files,
        "images": [],
    }
    doc.update(extra)
    return doc


def civitai_model(
    mid: int,
    name: str,
    versions: list,
    *,
    nsfw: bool = False,
    nsfw_level: int = 1,
    mode: str | None = None,
    description: str | None = "<p>A LoRA.</p>",
) -> dict:
    doc = {
        "id": mid,
        "name": name,
        "description": description,
        "type": "LORA",
        "nsfw": nsfw,
        "nsfwLevel": nsfw_level,
        "minor": False,
        "poi": False,
        "sfwOnly": False,
        "availability": "Public",
        "allowNoCredit": True,
        "allowCommercialUse": "{Image,RentCivit}",
        "allowDerivatives": True,
        "allowDifferentLicense": False,
        "supportsGeneration": True,
        "stats": {
            "downloadCount": 10,
            "thumbsUpCount": 2,
            "thumbsDownCount": 0,
            "commentCount": 0,
            "tippedAmountCount": None,
        },
        "creator": {"username": "someone", "image": None},
        "tags": ["style"],
        "modelVersions": versions,
    }
    if mode:  # Civitai omits the key unless it is set
        doc["mode"] = mode
        if mode == "Archived":
            doc["modelVersions"] = [
                {k: v for k, v in ver.items() if k != "downloadUrl"} | {"files": []}
                for ver in versions
            ]
    return doc


def catalog(stage: int, blobs: dict[int, bytes]) -> list[dict]:
    def f(vid):
        return [civitai_file(vid * 10, blobs[vid * 10])]

    ea = (
        current_version(
            6101,
            f(6101),
            base="Pony",
            availability="EarlyAccess",
            earlyAccessEndsAt=FUTURE,
            paidAccess={"permanent": False, "endsAt": FUTURE},
        )
        if stage < 3
        else current_version(6101, f(6101), base="Pony")
    )  # public now: Civitai drops the early-access keys
    old = {  # 2023 shape: createdAt/updatedAt/modelId, no publishedAt, earlyAccessTimeFrame, stats.rating
        "id": 6301,
        "modelId": 630,
        "name": "v1",
        "createdAt": "2023-05-01T10:00:00.000Z",
        "updatedAt": "2023-05-02T09:30:00.000Z",
        "trainedWords": WEIRD_WORDS,
        "baseModel": "SDXL 1.0",
        "earlyAccessTimeFrame": 0,
        "description": None,
        "stats": {"downloadCount": 5, "ratingCount": 0, "rating": 0},
        "files": f(6301),
        "images": [],
        "downloadUrl": "https://civitai.com/api/download/models/6301",
    }
    return [
        civitai_model(
            600,
            "Detail Tweaker XL",
            [
                current_version(6001, f(6001), nsfw_level=1),
                current_version(6002, f(6002), nsfw_level=28),
            ],
            nsfw=False,
            nsfw_level=31,
        ),
        civitai_model(
            601,
            "Flag Only",
            [current_version(6011, f(6011), nsfw_level=0)],
            nsfw=True,
            nsfw_level=0,
        ),
        civitai_model(
            602,
            "Model Level R",
            [current_version(6021, f(6021), nsfw_level=0)],
            nsfw=False,
            nsfw_level=4,
        ),
        civitai_model(
            603,
            "Flag Says Yes Level Says PG",
            [current_version(6031, f(6031), nsfw_level=1)],
            nsfw=True,
            nsfw_level=1,
        ),
        civitai_model(610, "Early Bird", [ea]),
        civitai_model(
            620,
            "Comes Back",
            [current_version(6201, f(6201))],
            mode="Archived" if stage == 1 else None,
        ),
        civitai_model(
            621,
            "Goes Away",
            [current_version(6211, f(6211))],
            mode="Archived" if stage >= 2 else None,
        ),
        civitai_model(
            622,
            "Failed Then Archived",
            [current_version(6221, f(6221))],
            mode="Archived" if stage >= 2 else None,
        ),
        civitai_model(
            630,
            "Old Ink",
            [old],
            description="<p>Makes pictures look <strong>s</strong>imilar to "
            "ink<em>wash</em>.</p><p>Weight 0.8</p>",
        ),
    ]


VERSIONS = [6001, 6002, 6011, 6021, 6031, 6101, 6201, 6211, 6221, 6301]


def lora_bytes(folder, seed: int, strength: float = 0.8) -> bytes:
    """A kohya-format SDXL LoRA for the tiny models (torch is imported here, as the signer tests do)."""
    return lf.write_kohya_lora(
        folder / f"{seed}-{strength}.safetensors", seed=seed, strength=strength
    ).read_bytes()


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    """A SQLite registry after the three crawl stages; returns (db_url, home, requests per stage, stats)."""
    root = tmp_path_factory.mktemp("civitai")
    blobs = {vid * 10: lora_bytes(root, seed=vid % 97) for vid in VERSIONS}
    mirror = root / "mirror"
    faults = Faults()
    faults.add(
        lambda r: r.path == f"{DOWNLOADS}6221",
        respond(404, {"error": "File not found"}),
        times=None,
    )
    db_url = f"sqlite:///{root / 'registry.db'}"
    home = root / "home"
    seen, stats, snapshots = [], [], []
    with serve(write_catalog(mirror, catalog(1, blobs), blobs), faults) as server:
        app = make_app_obj(home, db_url, server.url)
        for stage in (1, 2, 3):
            write_catalog(mirror, catalog(stage, blobs), blobs)
            before = len(faults.seen)
            stats.append(run(app, download=True))
            seen.append([s.path for s in faults.seen[before:] if s.path.startswith(DOWNLOADS)])
            snapshots.append(_files(app.db))
        app.db.dispose()
    return db_url, home, seen, stats, snapshots


def _files(db) -> dict[int, tuple[str, int, str | None]]:
    with db.read() as s:
        return {
            r.version_id: (r.state, r.attempts, r.error)
            for r in s.execute(sa.select(File)).scalars()
        }


def _cli_json(crawled, *args):
    db_url, home, *_ = crawled
    proc = run_cli("--db", db_url, *args, "--json", env={"CARLOS_REG_HOME": str(home)}, check=True)
    return json.loads(proc.stdout)


def _cli(crawled, *args):
    db_url, home, *_ = crawled
    return run_cli("--db", db_url, *args, env={"CARLOS_REG_HOME": str(home)}, check=True).stdout


# ---------------------------------------------------------------- early access


def test_early_access_is_deferred_without_an_attempt_and_picked_up_once_public(crawled):
    _, _, seen, stats, snapshots = crawled
    ea = f"{DOWNLOADS}6101"
    assert (
        ea not in seen[0] and ea not in seen[1]
    )  # never asked while the listing says early access
    assert snapshots[0][6101][:2] == ("deferred", 0) and snapshots[1][6101][:2] == ("deferred", 0)
    assert "early access until 2099-03-09" in snapshots[0][6101][2]
    assert seen[2].count(ea) == 1 and snapshots[2][6101][:2] == (
        "verified",
        1,
    )  # the first crawl after it turned public


def test_early_access_shown_by_show_and_loras(tmp_path):
    """Stage-2-like registry (still in early access): show and loras say so, with the end date."""
    blobs = {vid * 10: lora_bytes(tmp_path, seed=vid % 97) for vid in VERSIONS}
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    with serve(write_catalog(tmp_path / "m", catalog(1, blobs), blobs)) as server:
        run(make_app_obj(tmp_path / "h", db_url, server.url), download=False)
    env = {"CARLOS_REG_HOME": str(tmp_path / "h")}
    doc = json.loads(run_cli("--db", db_url, "show", "6101", "--json", env=env, check=True).stdout)
    assert doc["early_access"] is True and doc["early_access_ends_at"].startswith(
        "2099-03-09T11:04:51"
    )
    assert doc["files"][0]["state"] == "deferred"
    assert doc["air"] == "urn:air:sdxl:lora:civitai:610@6101"  # Civitai's root ecosystem for Pony
    text = run_cli("--db", db_url, "show", "6101", env=env, check=True).stdout
    assert "until 2099-03-09" in text and "deferred" in text
    rows = {
        r["version_id"]: r
        for r in json.loads(run_cli("--db", db_url, "loras", "--json", env=env, check=True).stdout)[
            "loras"
        ]
    }
    assert rows[6101]["early_access"] is True and rows[6001]["early_access"] is False
    table = run_cli("--db", db_url, "loras", env=env, check=True).stdout
    assert "early access until 2099-03-09" in table


def test_a_403_for_a_file_listed_as_public_is_still_a_failure(tmp_path):
    blobs = {60010: lora_bytes(tmp_path, seed=3)}
    models = [
        civitai_model(600, "Detail", [current_version(6001, [civitai_file(60010, blobs[60010])])])
    ]
    faults = Faults()
    faults.add(
        lambda r: r.path.startswith(DOWNLOADS),
        respond(403, {"error": "Early Access", "deadline": FUTURE}),
        times=None,
    )
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    with serve(write_catalog(tmp_path / "m", models, blobs), faults) as server:
        app = make_app_obj(tmp_path / "h", db_url, server.url)
        run(app, download=True)
        state = _files(app.db)[6001]
    assert state[:2] == ("failed", 1)


# ---------------------------------------------------------------- archived / taken down


def test_archived_models_are_marked_never_downloaded_and_picked_up_when_back(crawled):
    _, _, seen, stats, snapshots = crawled
    assert (
        f"{DOWNLOADS}6201" not in seen[0]
    )  # archived in stage 1: listed (archived=true) but not downloaded
    assert f"{DOWNLOADS}6201" in seen[1] and snapshots[1][6201][0] == "verified"  # back in stage 2
    assert (
        f"{DOWNLOADS}6211" in seen[0] and snapshots[1][6211][0] == "verified"
    )  # bytes kept once verified
    assert snapshots[0][6221][:2] == ("failed", 1)  # a real failure while live...
    assert f"{DOWNLOADS}6221" not in seen[1] + seen[2]  # ...never retried once archived
    assert snapshots[1][6221][0] == "unavailable" and "Archived" in snapshots[1][6221][2]
    assert snapshots[0].get(6201) is None  # an archived version lists no files


def test_mode_is_shown_and_filterable(crawled):
    rows = {r["version_id"]: r for r in _cli_json(crawled, "loras", "--limit", "0")["loras"]}
    assert set(rows) == set(VERSIONS)
    assert rows[6211]["mode"] == rows[6221]["mode"] == "Archived" and rows[6201]["mode"] is None
    archived = {r["version_id"] for r in _cli_json(crawled, "loras", "--mode", "archived")["loras"]}
    assert archived == {6211, 6221}
    live = {r["version_id"] for r in _cli_json(crawled, "loras", "--mode", "live")["loras"]}
    assert live == set(VERSIONS) - {6211, 6221}
    assert "Archived" in _cli(crawled, "loras")
    assert _cli_json(crawled, "show", "6211")["model"]["mode"] == "Archived"
    assert "Archived" in _cli(crawled, "show", "6211")


# ---------------------------------------------------------------- NSFW: one rule


def test_one_nsfw_rule_in_loras_and_show(crawled):
    rows = {
        r["version_id"]: r["nsfw"] for r in _cli_json(crawled, "loras", "--limit", "0")["loras"]
    }
    # version level first (Detail Tweaker XL v1.0 is PG although the model's level is 31), then the
    # model's level (602), then the model's flag (601); a known level outranks the flag (603)
    assert (rows[6001], rows[6002], rows[6011], rows[6021], rows[6031]) == (
        False,
        True,
        True,
        True,
        False,
    )
    safe = {
        r["version_id"] for r in _cli_json(crawled, "loras", "--no-nsfw", "--limit", "0")["loras"]
    }
    assert {6001, 6031} <= safe and not {6002, 6011, 6021} & safe
    only = {r["version_id"] for r in _cli_json(crawled, "loras", "--nsfw", "--limit", "0")["loras"]}
    assert only == {6002, 6011, 6021}
    assert (
        _cli_json(crawled, "show", "6001")["nsfw"] is False
        and _cli_json(crawled, "show", "6002")["nsfw"] is True
    )


@pytest.mark.parametrize(
    "v, m, flag, expected",
    [
        (1, 31, False, False),
        (28, 1, False, True),
        (0, 4, False, True),
        (None, None, True, True),
        (0, 0, False, False),
        (1, 1, True, False),
        (2, 16, True, False),
        (None, 8, False, True),
    ],
)
def test_nsfw_rule(v, m, flag, expected):
    assert is_nsfw(v, m, flag) is expected


# ---------------------------------------------------------------- 2023 shapes, columns, trigger words


def test_created_at_only_version_and_the_new_columns(crawled):
    doc = _cli_json(crawled, "show", "6301")
    assert doc["published_at"].startswith(
        "2023-05-01T10:00:00"
    )  # createdAt when there is no publishedAt
    assert doc["created_at"].startswith("2023-05-01T10:00:00") and doc["updated_at"].startswith(
        "2023-05-02T09:30"
    )
    f = doc["files"][0]
    assert f["hashes"]["AutoV1"] == "1A2B3C4D" and f["hashes"]["AutoV3"] == "44EE12AB90CD"
    assert f["hashes"]["BLAKE3"] == "55AA" * 16 and f["hashes"]["CRC32"] == "0BADC0DE"
    assert (f["fp"], f["size_type"], f["format"]) == ("bf16", "pruned", "SafeTensor")
    assert f["pickle_scan_message"] == "No Pickle imports" and f["scanned_at"].startswith(
        "2026-03-02T10:58:12"
    )
    assert "AutoV3 44EE12AB90CD" in _cli(crawled, "show", "6301")


def test_trigger_words_are_stored_verbatim_and_cleaned_only_for_display(crawled):
    db_url, *_ = crawled
    from registry.db import Database

    db = Database(db_url)
    with db.read() as s:
        stored = s.get(Version, 6301).trained_words
    db.dispose()
    assert (
        stored == WEIRD_WORDS
    )  # entries verbatim, in order, duplicates and the empty one included
    doc = _cli_json(crawled, "show", "6301")
    assert doc["trained_words_verbatim"] == WEIRD_WORDS and doc["trained_words_missing"] is False
    assert doc["trained_words"] == [
        "(hands on own chest, deep skin:1.2)",
        "masterpiece, best quality",
        "ünïcode words",
        "inkwash style",
    ]
    shown = _cli(crawled, "show", "6301")
    cells = [line.split("│")[2].strip() for line in shown.splitlines() if line.count("│") == 3]
    at = cells.index("(hands on own chest, deep skin:1.2)")  # one entry per line, commas kept
    assert cells[at + 1 : at + 4] == ["masterpiece, best quality", "ünïcode words", "inkwash style"]


def test_display_words():
    assert display_words(["a", "", "  ", " a ", "b,  c", None, 3]) == ["a", "b, c"]
    assert display_words(None) == []


# ---------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    "html, text",
    [
        ("<p>Find <strong>s</strong>imilar looks</p>", "Find similar looks"),
        ("<p>one</p><p>two</p>", "one two"),
        ("line<br>break<br/>here", "line break here"),
        ("<ul><li>a</li><li>b</li></ul>", "a b"),
        ("ink<em>wash</em> &amp; <a href='x'>more</a>", "inkwash & more"),
        ("<script>alert(1)</script>safe", "safe"),
        ("&lt;b&gt;not a tag&lt;/b&gt;", "<b>not a tag</b>"),
        ("", ""),
        (None, ""),
    ],
)
def test_html_to_text_keeps_words_whole(html, text):
    assert html_to_text(html) == text


def test_metadata_text_of_a_crawled_description_keeps_words_whole(crawled):
    from plugins.metadata_search.retriever import metadata_text

    db_url, *_ = crawled
    from registry.db import Database
    from registry.models import Model

    db = Database(db_url)
    with db.read() as s:
        desc = s.get(Model, 630).description
    db.dispose()
    text = metadata_text("Old Ink", "v1", ["style"], WEIRD_WORDS, desc)
    assert "look similar to inkwash. Weight 0.8" in text and "s imilar" not in text


# ---------------------------------------------------------------- search and the API


@pytest.fixture(scope="module")
def signed(crawled, tiny_models):
    db_url, home, *_ = crawled
    env = {
        "CARLOS_REG_HOME": str(home),
        "CARLOS_REG_PROFILE": "tiny",
        "CARLOS_REG_MODELS": str(tiny_models),
    }
    run_cli(
        "--db",
        db_url,
        "sign",
        "6001",
        "6002",
        "6211",
        "--profile",
        "tiny",
        "--json",
        env=env,
        check=True,
    )
    return db_url, env


def test_search_uses_the_nsfw_rule_and_leaves_archived_out_unless_asked(signed):
    db_url, env = signed

    def ids(*args):
        doc = json.loads(
            run_cli(
                "--db",
                db_url,
                "search",
                "ink wash",
                "-k",
                "10",
                "--no-filter",
                *args,
                "--json",
                env=env,
                check=True,
            ).stdout
        )
        return {r["version_id"] for r in doc["results"]}, doc

    default, doc = ids()
    assert default == {6001, 6002} and doc["filters"]["include_archived"] is False
    assert ids("--include-archived")[0] == {6001, 6002, 6211}
    assert ids("--no-nsfw")[0] == {
        6001
    }  # v1.0 of Detail Tweaker XL is PG: kept (issue #13, point 2)
    assert ids("--nsfw", "--include-archived")[0] == {6002}


def test_api_speaks_the_same_rules(signed):
    from tests.service_support import Server

    db_url, env = signed
    server = Server.start("--db", db_url, serve_args=("--schedule", "off"), env=env)
    try:
        status, doc = server.get("/api/loras?nsfw=false&limit=0")
        assert status == 200 and {r["version_id"] for r in doc["loras"]} == set(VERSIONS) - {
            6002,
            6011,
            6021,
        }
        status, doc = server.get("/api/loras?mode=archived")
        assert {r["version_id"] for r in doc["loras"]} == {6211, 6221}
        assert server.get("/api/loras?mode=bogus")[0] == 400
        status, doc = server.get("/api/loras/6101")
        assert (
            status == 200
            and doc["early_access"] is False
            and doc["files"][0]["state"] == "verified"
        )
        status, doc = server.get("/api/search?q=ink+wash&k=10&no_filter=true")
        assert status == 200 and {r["version_id"] for r in doc["results"]} == {6001, 6002}
        status, doc = server.get(
            "/api/search?q=ink+wash&k=10&no_filter=true&include_archived=true&nsfw=false"
        )
        assert {r["version_id"] for r in doc["results"]} == {6001, 6211}
    finally:
        server.stop()


# ---------------------------------------------------------------- the migration


def test_migration_fills_the_new_columns_from_raw_payloads_without_network(db_url, tmp_path):
    """A registry as the previous revision left it (0003: trigger words split, no createdAt fallback,
    sdxl-only AIR, early-access files failed after 3 attempts) is upgraded from its stored payloads
    while no server is running."""
    from registry.db import Database
    from registry.migrate import current_revisions, downgrade, head_revision, upgrade
    from registry.models import Model

    blobs = {vid * 10: lora_bytes(tmp_path, seed=vid % 97) for vid in VERSIONS}
    with serve(write_catalog(tmp_path / "m", catalog(1, blobs), blobs)) as server:
        app = make_app_obj(tmp_path / "h", db_url, server.url)
        run(app, download=False)
        app.db.dispose()
    # the mirror is gone: anything that tried the network now would fail
    db = Database(db_url)
    downgrade(db, "0003")
    with db.write() as s:
        s.execute(
            sa.update(Version)
            .where(Version.id == 6301)
            .values(
                trained_words=[
                    "(hands on own chest",
                    "deep skin:1.2)",
                    "masterpiece",
                    "best quality",
                ],
                published_at=None,
                air="urn:air:sdxl:lora:civitai:630@6301",
            )
        )
        s.execute(
            sa.update(Version)
            .where(Version.id == 6101)
            .values(air="urn:air:sdxl:lora:civitai:610@6101")
        )
        for vid in (6101, 6001):  # early-access 403s counted as attempts by the previous revision
            s.execute(
                sa.update(File)
                .where(File.version_id == vid)
                .values(
                    state="failed",
                    attempts=3,
                    error="failed: 403 forbidden (early access, paid or blocked)",
                )
            )
        s.execute(sa.update(Model).where(Model.id == 621).values(mode="Archived"))
        s.execute(
            sa.update(File).where(File.version_id == 6211).values(state="pending", error=None)
        )
    upgrade(db)
    assert current_revisions(db) == (head_revision(),)
    with db.read() as s:
        v, ea = s.get(Version, 6301), s.get(Version, 6101)
        files = {f.version_id: f for f in s.execute(sa.select(File)).scalars()}
        assert v.trained_words == WEIRD_WORDS
        assert v.published_at.isoformat().startswith("2023-05-01T10:00:00")
        assert (
            v.civitai_created_at == v.published_at
            and v.civitai_updated_at.isoformat().startswith("2023-05-02")
        )
        assert (
            ea.air == "urn:air:sdxl:lora:civitai:610@6101" and ea.early_access_ends_at.year == 2099
        )
        assert (
            s.get(Version, 6001).status is None and s.get(Version, 6001).published_at.year == 2026
        )
        f = files[6301]
        assert (f.autov1, f.autov3, f.size_type, f.pickle_scan_message) == (
            "1A2B3C4D",
            "44EE12AB90CD",
            "pruned",
            "No Pickle imports",
        )
        assert f.scanned_at.isoformat().startswith("2026-03-02T10:58:12")
        assert (files[6101].state, files[6101].attempts) == ("deferred", 0)
        assert (files[6001].state, files[6001].attempts) == (
            "pending",
            0,
        )  # public now: tried again
        assert files[6211].state == "unavailable"
        # the NSFW rule and the mode filter in SQL, on this backend too
        from registry.queries import lora_rows

        _, rows = lora_rows(s, nsfw=False, mode="live")
        assert {r["version_id"] for r in rows} == {6001, 6031, 6101, 6221, 6301}
        _, rows = lora_rows(s, nsfw=True, limit=10)
        assert {r["version_id"] for r in rows} == {6002, 6011, 6021}
        _, rows = lora_rows(s, mode="archived")
        assert {r["version_id"] for r in rows} == {6201, 6211}
    db.dispose()


# ---------------------------------------------------------------- parsing every era's fields


@pytest.mark.parametrize(
    "extra, ends",
    [
        ({"earlyAccessEndsAt": FUTURE}, "2099-03-09"),
        ({"earlyAccessDeadline": FUTURE}, "2099-03-09"),
        ({"paidAccess": {"permanent": False, "endsAt": FUTURE}}, "2099-03-09"),
        ({"earlyAccessTimeFrame": 3, "publishedAt": "2023-05-01T10:00:00.000Z"}, "2023-05-04"),
        ({"earlyAccessTimeFrame": 0}, None),
        ({}, None),
    ],
)
def test_early_access_end_in_every_era(extra, ends):
    from datetime import datetime, timezone

    from crawler.parse import parse_version

    v, _ = parse_version(current_version(1, [], **extra), 2, "LORA")
    assert (v.early_access_ends_at.date().isoformat() if v.early_access_ends_at else None) == ends
    now = datetime(2026, 11, 29, tzinfo=timezone.utc)
    assert v.early_access(now) is (ends is not None and ends > "2026")
    ea, _ = parse_version(current_version(1, [], availability="EarlyAccess"), 2, "LORA")
    assert ea.early_access(now) and ea.early_access_ends_at is None


def test_a_missing_trigger_list_is_empty_and_says_so():
    from crawler.parse import parse_version
    from registry.catalog import words_missing

    raw = {
        k: v for k, v in current_version(1, []).items() if k != "trainedWords"
    }  # /models/{id} drops []
    v, _ = parse_version(raw, 2, "LORA")
    assert v.trained_words == [] and words_missing(v.raw) is True
    v, _ = parse_version(current_version(1, [], words=[]), 2, "LORA")
    assert v.trained_words == [] and words_missing(v.raw) is False
    v, _ = parse_version({**current_version(1, []), "trainedWords": None}, 2, "LORA")
    assert v.trained_words == [] and words_missing(v.raw) is True


@pytest.mark.parametrize(
    "base, eco",
    [
        ("SDXL 1.0", "sdxl"),
        ("SDXL Lightning", "sdxl"),
        ("Pony", "sdxl"),
        ("Illustrious", "sdxl"),
        ("NoobAI", "sdxl"),
        ("sdxl 1.0", "sdxl"),
        ("SD 1.5", "sd15"),
    ],
)
def test_air_ecosystem_follows_the_base_model(base, eco):
    from crawler.parse import parse_version

    v, _ = parse_version(current_version(7, [], base=base), 5, "LoCon")
    assert v.air == f"urn:air:{eco}:lycoris:civitai:5@7"
    given, _ = parse_version(
        current_version(7, [], base=base, air="urn:air:sdxl:lycoris:civitai:5@7"), 5, "LoCon"
    )
    assert given.air == "urn:air:sdxl:lycoris:civitai:5@7"  # the payload's own AIR wins
