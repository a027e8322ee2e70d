"""`carlos-reg import carlos`: the published database, value for value, all or nothing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from registry.importer import ImportRefused, import_carlos, stem_name
from registry.models import Model, Signature, Version
from registry.vectors import from_blob
from tests.conftest import run_cli


def _count(db, model) -> int:
    with db.read() as s:
        return s.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()


def _write(table: pa.Table, path) -> str:
    pq.write_table(table, path)
    return str(path)


def test_import_reference_database_exactly(database, reference_parquet):
    counts = import_carlos(database, reference_parquet)
    assert counts["rows"] == 740 and counts["signatures_added"] == 740
    table = pq.read_table(reference_parquet).to_pylist()
    with database.read() as s:
        sigs = {sig.version_id: sig for sig in s.execute(sa.select(Signature)).scalars()}
        versions = {v.id: v for v in s.execute(sa.select(Version)).scalars()}
    assert len(sigs) == 740
    for row in table:
        sig = sigs[row["version_id"]]
        assert sig.strength == row["strength"] and sig.consistency == row["consistency"]
        vec = from_blob(sig.direction, 512)
        assert np.array_equal(vec.astype(np.float64), np.asarray(row["direction"]))
        expected_name = row["model_name"].strip() or stem_name(
            row["folder_name"], row["version_id"]
        )
        assert versions[row["version_id"]].name == expected_name
        assert versions[row["version_id"]].model_id == row["model_id"]


def test_reimport_changes_nothing(database, reference_parquet):
    import_carlos(database, reference_parquet)
    with database.read() as s:
        before = s.execute(
            sa.select(Signature.id, Signature.strength, Signature.direction).order_by(Signature.id)
        ).all()
    counts = import_carlos(database, reference_parquet)
    assert (
        counts["unchanged"] == 740
        and counts["signatures_added"] == 0
        and counts["versions_added"] == 0
    )
    with database.read() as s:
        after = s.execute(
            sa.select(Signature.id, Signature.strength, Signature.direction).order_by(Signature.id)
        ).all()
    assert before == after


def test_reimport_rewrites_an_older_record_of_the_published_profile_in_place(database, tmp_path):
    from registry.importer import IMPORTED_PROFILE_SETTINGS
    from registry.models import SignerProfile
    from registry.profile_identity import profile_hash
    from registry.profiles import IMPORTED_PROFILE_NAME

    path = _write(pa.table(_small_table()), tmp_path / "small.parquet")
    import_carlos(database, path)
    old = {
        **IMPORTED_PROFILE_SETTINGS,
        "query_prompt_set": {"name": "carlos-reference-retrieval", "size": 280},
    }
    with database.write() as s:  # the record an earlier release wrote
        row = s.execute(
            sa.select(SignerProfile).where(SignerProfile.name == IMPORTED_PROFILE_NAME)
        ).scalar_one()
        row.settings, row.hash, pid = old, profile_hash(IMPORTED_PROFILE_NAME, old), row.id
    counts = import_carlos(database, path)
    assert counts["unchanged"] == 3 and counts["signatures_added"] == 0
    with database.read() as s:
        rows = (
            s.execute(sa.select(SignerProfile).where(SignerProfile.name == IMPORTED_PROFILE_NAME))
            .scalars()
            .all()
        )
        assert [r.id for r in rows] == [pid] and rows[0].settings == IMPORTED_PROFILE_SETTINGS
        assert rows[0].settings["query_prompt_set"]["name"] == "carlos-reference-query"
        assert (
            s.execute(
                sa.select(sa.func.count()).select_from(Signature).where(Signature.profile_id == pid)
            ).scalar_one()
            == 3
        )


def _small_table(n=3, dim=512) -> dict:
    rng = np.random.default_rng(0)
    return {
        "version_id": list(range(1000, 1000 + n)),
        "model_id": [5, None, 7][:n],
        "model_name": ["Ink Style", "", "Comic"][:n],
        "model_description": ["<p>ink</p>", None, ""][:n],
        "model_nsfw_level": [1, None, 2][:n],
        "folder_name": [f"file_{1000 + i}" for i in range(n)],
        "direction": [rng.normal(size=dim).astype(np.float32).tolist() for _ in range(n)],
        "strength": [1.5, 2.5, 3.5][:n],
        "consistency": [0.1, 0.2, 0.3][:n],
        "model_download_count": [10, None, 30][:n],
    }


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d.pop("strength"), "missing column"),
        (
            lambda d: d["direction"].__setitem__(1, d["direction"][1][:511]),
            "511 values, expected 512",
        ),
        (lambda d: d["direction"][2].__setitem__(7, float("nan")), "NaN"),
        (lambda d: d["consistency"].__setitem__(0, float("inf")), "not a finite number"),
        (lambda d: d["version_id"].__setitem__(2, 2000), "appears twice"),
        (lambda d: d["direction"].__setitem__(0, None), "no values"),
    ],
)
def test_corrupted_files_are_refused_whole(database, tmp_path, corrupt, message):
    good = _write(pa.table(_small_table()), tmp_path / "good.parquet")
    import_carlos(database, good)
    before = (_count(database, Signature), _count(database, Version), _count(database, Model))
    data = _small_table()
    data["version_id"] = [2000, 2001, 2002]  # new rows: a partial write would be visible
    corrupt(data)
    bad = _write(pa.table(data), tmp_path / "bad.parquet")
    with pytest.raises(ImportRefused, match=message):
        import_carlos(database, bad)
    assert (
        _count(database, Signature),
        _count(database, Version),
        _count(database, Model),
    ) == before


def test_not_a_parquet_file_is_refused(database, tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(ImportRefused, match="not a readable Parquet file"):
        import_carlos(database, path)


def test_cli_import_json_and_listing(tmp_path, sqlite_url):
    path = _write(pa.table(_small_table()), tmp_path / "small.parquet")
    proc = run_cli("--db", sqlite_url, "import", "carlos", path, "--json", check=True)
    counts = json.loads(proc.stdout)
    assert counts["signatures_added"] == 3 and counts["models_added"] == 2
    proc = run_cli("--db", sqlite_url, "import", "carlos", str(tmp_path / "missing.parquet"))
    assert proc.returncode == 1 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_signature_seq_orders_writes_and_reimport_of_a_change_bumps_it(database, tmp_path):
    from registry.signatures import current_seq

    path = _write(pa.table(_small_table()), tmp_path / "a.parquet")
    import_carlos(database, path)
    with database.read() as s:
        seqs = dict(s.execute(sa.select(Signature.version_id, Signature.seq)).all())
        top = current_seq(s)
    assert sorted(seqs.values()) == [1, 2, 3] and top == 3
    import_carlos(database, path)  # unchanged: no new sequence values
    with database.read() as s:
        assert current_seq(s) == 3
    data = _small_table()
    data["strength"] = [1.5, 9.0, 3.5]
    import_carlos(database, _write(pa.table(data), tmp_path / "b.parquet"))
    with database.read() as s:
        changed = (
            s.execute(sa.select(Signature.version_id).where(Signature.seq > 3)).scalars().all()
        )
    assert changed == [1001]
