from __future__ import annotations

import hashlib

import pytest

from registry.artifacts import ArtifactStore


def test_put_bytes_is_content_addressed_and_idempotent(tmp_path):
    store = ArtifactStore(tmp_path)
    rel = store.put_bytes("lora", b"abc", ".safetensors")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert rel == f"lora/{digest[:2]}/{digest[2:4]}/{digest}.safetensors"
    assert store.path(rel).read_bytes() == b"abc"
    assert store.put_bytes("lora", b"abc", ".safetensors") == rel
    assert [p.name for p in store.path(rel).parent.iterdir()] == [f"{digest}.safetensors"]


def test_failed_write_leaves_nothing_at_the_final_path(tmp_path):
    store = ArtifactStore(tmp_path)
    rel = store.relative_path("lora", "0" * 64)
    with pytest.raises(RuntimeError):
        with store.atomic_writer(rel) as fh:
            fh.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not store.exists(rel)
    assert list(store.path(rel).parent.iterdir()) == []


@pytest.mark.parametrize(
    "kind, digest, suffix",
    [
        ("../x", "0" * 64, ""),
        ("lora", "../" + "0" * 61, ""),
        ("lora", "0" * 64, "/../../x"),
        ("lora", "Z" * 64, ""),
    ],
)
def test_names_from_outside_never_become_paths(tmp_path, kind, digest, suffix):
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path).relative_path(kind, digest, suffix)


def test_stored_paths_cannot_escape(tmp_path):
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path / "root").path("../outside")
