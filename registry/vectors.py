"""Vectors in the database: float32 little-endian blobs."""

from __future__ import annotations

import numpy as np

_F32LE = np.dtype("<f4")


def to_blob(vector) -> bytes:
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
    return arr.astype(_F32LE).tobytes()


def from_blob(blob: bytes, dim: int | None = None) -> np.ndarray:
    arr = np.frombuffer(blob, dtype=_F32LE)
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"vector blob holds {arr.shape[0]} values, expected {dim}")
    return arr.astype(np.float32)


def matrix_to_blob(matrix) -> bytes:
    return np.ascontiguousarray(np.asarray(matrix), dtype=_F32LE).tobytes()


def matrix_from_blob(blob: bytes, rows: int, dim: int) -> np.ndarray:
    return np.frombuffer(blob, dtype=_F32LE).reshape(rows, dim).astype(np.float32)
