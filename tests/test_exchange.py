"""Signatures leave a registry and come back: ``export signatures`` (carlos format) round trips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from crawler.mirror import tiny_lora
from registry.db import Database
from registry.exchange import ExportRefused, export_carlos
from registry.importer import import_carlos
from registry.migrate import ensure_schema
from registry.models import Signature, SignerProfile, Version
from registry.signatures import save_signature
from tests.conftest import run_cli


def _signatures(db) -> dict:
    with db.read() as s:
        return {
            r.version_id: (r.direction, r.strength, r.consistency, r.dim)
            for r in s.execute(
                sa.select(Signature)
                .join(SignerProfile, SignerProfile.id == Signature.profile_id)
                .where(SignerProfile.name == "carlos-published")
            ).scalars()
        }


def test_carlos_export_of_the_published_database_is_the_published_table(
    database, reference_parquet, tmp_path
):
    import_carlos(database, reference_parquet)
    out = tmp_path / "exported.parquet"
    doc = export_carlos(database, out, "carlos-published")
    assert doc["signatures"] == 740
    exported, published = pq.read_table(out), pq.read_table(reference_parquet)
    assert exported.schema.remove_metadata() == published.schema.remove_metadata()
    assert exported.equals(published)  # every value, None and "" alike, in the published order
    # the export re-imports bit for bit: into the same registry (nothing changes) and into an empty one
    again = import_carlos(database, out)
    assert (
        again["unchanged"] == 740 and again["signatures_added"] == again["signatures_updated"] == 0
    )
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    ensure_schema(fresh)
    import_carlos(fresh, out)
    assert _signatures(fresh) == _signatures(database)
    export_carlos(fresh, tmp_path / "second.parquet", "carlos-published")
    assert pq.read_table(tmp_path / "second.parquet").equals(published)
    fresh.dispose()


def test_export_of_signatures_made_here_and_refusals(database, tmp_path):
    with database.write() as s:
        s.add(SignerProfile(name="mine", hash="1" * 64, settings={}))
        s.add(SignerProfile(name="small", hash="2" * 64, settings={}))
        s.add(Version(id=-1, name="my lora/../x", source="local"))
        s.flush()
        ids = dict(s.execute(sa.select(SignerProfile.name, SignerProfile.id)).all())
        save_signature(
            s,
            version_id=-1,
            profile_id=ids["mine"],
            direction=np.full(512, 0.5, np.float32),
            strength=2.0,
            consistency=0.1,
            source="signed",
        )
        save_signature(
            s,
            version_id=-1,
            profile_id=ids["small"],
            direction=np.ones(8, np.float32),
            strength=2.0,
            consistency=0.1,
            source="signed",
        )
    out = tmp_path / "mine.parquet"
    export_carlos(database, out, "mine")
    row = pq.read_table(out).to_pylist()[0]
    assert row["version_id"] == -1 and row["direction"] == [0.5] * 512 and row["strength"] == 2.0
    assert "/" not in row["folder_name"] and row["folder_name"].endswith("_-1")
    with pytest.raises(ExportRefused, match="8-value directions"):
        export_carlos(database, tmp_path / "small.parquet", "small")
    with pytest.raises(ExportRefused, match="no signatures under a profile named 'nope'"):
        export_carlos(database, tmp_path / "nope.parquet", "nope")
    assert not (tmp_path / "small.parquet").exists()


def test_cli_export(reference_registry, tmp_path, reference_parquet):
    out = tmp_path / "out.parquet"
    doc = json.loads(
        run_cli(
            "--db", reference_registry, "export", "signatures", str(out), "--json", check=True
        ).stdout
    )
    assert doc["signatures"] == 740 and pq.read_table(out).equals(pq.read_table(reference_parquet))
    proc = run_cli(
        "--db", reference_registry, "export", "signatures", "--profile", "nope", str(out)
    )
    assert proc.returncode != 0 and "no signatures under a profile named 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- bundles

import os  # noqa: E402

import pyarrow as pa  # noqa: E402

from registry.bundle_import import BundleRefused, import_bundle, read_bundle  # noqa: E402
from registry.exchange import bundle_schema, export_bundle  # noqa: E402
from registry.models import File  # noqa: E402
from registry.profile_identity import profile_hash  # noqa: E402


def _sign_here(db, settings, data: bytes) -> tuple[int, str]:
    import hashlib

    from signer.profiles import load_profile, register

    digest = hashlib.sha256(data).hexdigest()
    with db.write() as s:
        pid = register(s, load_profile("tiny", settings)).id
        s.add(Version(id=-1, name="my style", source="local"))
        s.flush()
        s.add(
            File(
                version_id=-1,
                name="my style.safetensors",
                sha256=digest,
                autov2=digest[:10].upper(),
                state="verified",
                local_path=f"lora/{digest}.safetensors",
                primary=True,
            )
        )
        dim = 32
        save_signature(
            s,
            version_id=-1,
            profile_id=pid,
            direction=np.linspace(-1, 1, dim).astype(np.float32),
            strength=1.25,
            consistency=0.5,
            n_samples=20,
            valid=True,
            flags=["locon"],
            estimates={"trigger_suffix": "", "code_version": "0.1.0"},
            file_sha256=digest,
            source="signed",
        )
    return pid, digest


def _cli_json(db_url, *args):
    return json.loads(run_cli("--db", db_url, *args, "--json", check=True).stdout)


CATALOG_ONLY = {
    "source",
    "nsfw",
    "generated_at",
}  # what a registry knows of the catalog, not of behaviour


def _answers(doc):
    """A JSON answer without the catalog facts a bundle does not carry (where a row came from, NSFW flag)."""
    if isinstance(doc, dict):
        return {k: _answers(v) for k, v in doc.items() if k not in CATALOG_ONLY}
    if isinstance(doc, list):
        return [_answers(v) for v in doc]
    return doc


def _copyright(db_url):
    return _answers(_cli_json(db_url, "report", "copyright", "--profile", "carlos-published"))


def _cache_query(urls, home, text: str) -> None:
    """The same query vector cached in each registry (computing it needs the real CLIP weights)."""
    from registry.app import App
    from registry.settings import Settings
    from signer.query_encoder import QueryEncoder, store_vector

    vec = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    for url in urls:
        app = App(Settings.load(home=home, db=url))
        with app.db.read() as s:
            row = (
                s.execute(sa.select(SignerProfile).where(SignerProfile.name == "carlos-published"))
                .scalars()
                .one()
            )
        store_vector(app.db, "query", QueryEncoder(app, row).text_key(text), vec, {"text": text})
        app.close()


def test_bundle_round_trip_gives_the_same_answers_and_signs_nothing_again(
    db_url, reference_parquet, tmp_path, reference_prompts
):
    from registry.settings import Settings
    from tests.conftest import run_cli as cli

    a = Database(db_url)
    ensure_schema(a)
    import_carlos(a, reference_parquet)
    settings = Settings.load(home=tmp_path / "home")
    _, digest = _sign_here(a, settings, tiny_lora(7))
    bundle = tmp_path / "team.bundle.parquet"
    doc = export_bundle(a, bundle)
    assert doc["signatures"] == 741 and doc["profiles"] == ["carlos-published", "tiny"]

    b_url = f"sqlite:///{tmp_path / 'b.db'}"
    first = _cli_json(b_url, "import", "signatures", str(bundle))
    assert (first["added"], first["conflicts"], first["versions_added"]) == (741, 0, 741)
    again = _cli_json(b_url, "import", "signatures", str(bundle))
    assert (again["added"], again["unchanged"], again["replaced"]) == (0, 741, 0)

    for ref in ("128461", "244808"):
        there, here = (_cli_json(u, "similar", ref, "-k", "10") for u in (db_url, b_url))
        assert len(there["results"]) == 10 and _answers(there) == _answers(here)
    assert _copyright(db_url) == _copyright(b_url)
    _cache_query([db_url, b_url], tmp_path / "home", "watercolor painting")
    found = [
        _cli_json(u, "search", "watercolor painting", "--profile", "carlos-published", "-k", "20")
        for u in (db_url, b_url)
    ]
    assert (
        found[0]["query"]["cached"]
        and found[1]["query"]["cached"]
        and len(found[0]["results"]) == 20
    )
    assert _answers(found[0]) == _answers(found[1])

    # B holds the file's signature: scanning a folder with that file signs nothing
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "renamed by me.safetensors").write_bytes(tiny_lora(7))
    proc = cli(
        "--db", b_url, "scan", str(folder), "--offline", "--sign", "--profile", "tiny", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert entry["sha256"] == digest and entry["match"] == "local" and entry["signing"] == "signed"
    shown = _cli_json(b_url, "show", entry["ref"])
    tiny = [x for x in shown["signatures"] if x["profile"] == "tiny"][0]
    assert tiny["source"] == "bundle" and tiny["strength"] == 1.25 and shown["jobs"] == []
    a.dispose()


def _good_rows(tmp_path, reference_parquet):
    a = Database(f"sqlite:///{tmp_path / 'a.db'}")
    ensure_schema(a)
    import_carlos(a, reference_parquet)
    path = tmp_path / "good.parquet"
    export_bundle(a, path)
    a.dispose()
    return path, pq.read_table(path).to_pylist()


def _write_rows(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=bundle_schema()), path)
    return path


def _nan(rows):
    rows[5]["direction"][3] = float("nan")


def _wrong_dim(rows):
    rows[2]["direction"] = rows[2]["direction"][:256]
    rows[2]["dim"] = 256


def _bad_hash(rows):
    settings = json.loads(rows[0]["profile_settings"])
    settings["steps"] = 10  # edited settings, old hash
    rows[0]["profile_settings"] = json.dumps(settings)


def _duplicate(rows):
    rows.append(dict(rows[7]))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_nan, "NaN"),
        (_wrong_dim, "CLIP ViT-B-32-quickgelu has 512"),
        (_bad_hash, "does not match the profile"),
        (_duplicate, "a second signature for the same"),
    ],
)
def test_bad_bundles_are_refused_whole(tmp_path, reference_parquet, corrupt, message):
    _, rows = _good_rows(tmp_path, reference_parquet)
    corrupt(rows)
    bad = _write_rows(tmp_path / "bad.parquet", rows)
    b_url = f"sqlite:///{tmp_path / 'b.db'}"
    proc = run_cli("--db", b_url, "import", "signatures", str(bad))
    assert proc.returncode != 0 and message in proc.stderr and "nothing was imported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    b = Database(b_url)
    with b.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Signature)).scalar() == 0
    b.dispose()


def test_truncated_and_junk_bundles_are_refused(tmp_path, reference_parquet):
    good, _ = _good_rows(tmp_path, reference_parquet)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleRefused, match="not a readable Parquet bundle"):
        read_bundle(truncated)
    junk = tmp_path / "junk.parquet"
    with junk.open("wb") as fh:  # 2 GB of junk, sparse: nothing of it is read
        fh.write(os.urandom(4096))
        fh.truncate(2 * 10**9)
    with pytest.raises(BundleRefused, match="over the 1 GiB limit"):
        read_bundle(junk)
    published = pq.read_table(reference_parquet)
    with pytest.raises(BundleRefused, match="not a carlos-reg signature bundle"):
        read_bundle(reference_parquet)
    assert published.num_rows == 740


def test_a_different_signature_is_a_conflict_unless_replace(tmp_path, reference_parquet):
    path, rows = _good_rows(tmp_path, reference_parquet)
    b = Database(f"sqlite:///{tmp_path / 'b.db'}")
    ensure_schema(b)
    import_bundle(b, path)
    rows[0]["strength"] = rows[0]["strength"] + 1.0
    changed = _write_rows(tmp_path / "changed.parquet", rows)
    kept = import_bundle(b, changed)
    assert (kept["conflicts"], kept["unchanged"], kept["replaced"]) == (1, 739, 0)
    with b.read() as s:
        vid = rows[0]["version_id"]
        assert (
            s.execute(sa.select(Signature.strength).where(Signature.version_id == vid)).scalar()
            == rows[0]["strength"] - 1.0
        )
    replaced = import_bundle(b, changed, replace=True)
    assert (replaced["conflicts"], replaced["replaced"]) == (0, 1)
    b.dispose()


def test_a_bundle_whose_directions_differ_in_width_from_the_registrys_is_refused(
    database, tmp_path
):
    settings = {"clip_model": "my-own-clip"}
    digest = profile_hash("own", settings)
    with database.write() as s:
        s.add(SignerProfile(name="own", hash=digest, settings=settings))
        s.add(Version(id=-1, name="held", source="local"))
        s.flush()
        pid = s.execute(sa.select(SignerProfile.id).where(SignerProfile.hash == digest)).scalar()
        save_signature(
            s,
            version_id=-1,
            profile_id=pid,
            direction=np.ones(8, np.float32),
            strength=1.0,
            consistency=0.5,
            file_sha256="c" * 64,
            source="signed",
        )
    row = {
        "profile_name": "own",
        "profile_hash": digest,
        "profile_settings": json.dumps(settings),
        "file_sha256": "d" * 64,
        "file_autov2": None,
        "civitai_model_id": None,
        "civitai_version_id": None,
        "version_id": -5,
        "name": "x",
        "base_model": None,
        "dim": 16,
        "direction": [0.5] * 16,
        "strength": 1.0,
        "consistency": 0.5,
        "n_samples": 4,
        "valid": True,
        "flags": "[]",
        "estimates": "{}",
        "source": "signed",
        "code_version": "0.1.0",
    }
    path = _write_rows(tmp_path / "wide.parquet", [row])
    with pytest.raises(
        BundleRefused, match="16-value directions in the bundle but 8-value ones here"
    ):
        import_bundle(database, path)
    with database.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Version)).scalar() == 1
