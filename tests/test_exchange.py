"""Signatures leave a registry and come back: ``export signatures`` (carlos format) round trips."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from registry.db import Database
from registry.exchange import ExportRefused, export_carlos
from registry.importer import import_carlos
from registry.migrate import ensure_schema
from registry.models import Signature, SignerProfile, Version
from registry.signatures import save_signature
from tests.conftest import run_cli


def _signatures(db) -> dict:
    with db.read() as s:
        return {r.version_id: (r.direction, r.strength, r.consistency, r.dim) for r in s.execute(
            sa.select(Signature).join(SignerProfile, SignerProfile.id == Signature.profile_id)
            .where(SignerProfile.name == "carlos-published")).scalars()}


def test_carlos_export_of_the_published_database_is_the_published_table(database, reference_parquet, tmp_path):
    import_carlos(database, reference_parquet)
    out = tmp_path / "exported.parquet"
    doc = export_carlos(database, out, "carlos-published")
    assert doc["signatures"] == 740
    exported, published = pq.read_table(out), pq.read_table(reference_parquet)
    assert exported.schema.remove_metadata() == published.schema.remove_metadata()
    assert exported.equals(published)  # every value, None and "" alike, in the published order
    # the export re-imports bit for bit: into the same registry (nothing changes) and into an empty one
    again = import_carlos(database, out)
    assert again["unchanged"] == 740 and again["signatures_added"] == again["signatures_updated"] == 0
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
        save_signature(s, version_id=-1, profile_id=ids["mine"], direction=np.full(512, 0.5, np.float32),
                       strength=2.0, consistency=0.1, source="signed")
        save_signature(s, version_id=-1, profile_id=ids["small"], direction=np.ones(8, np.float32),
                       strength=2.0, consistency=0.1, source="signed")
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
    doc = json.loads(run_cli("--db", reference_registry, "export", "signatures", str(out), "--json",
                             check=True).stdout)
    assert doc["signatures"] == 740 and pq.read_table(out).equals(pq.read_table(reference_parquet))
    proc = run_cli("--db", reference_registry, "export", "signatures", "--profile", "nope", str(out))
    assert proc.returncode != 0 and "no signatures under a profile named 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
