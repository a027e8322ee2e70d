"""The ranking index: one float32 matrix of unit Directions per signer profile, in memory.

Ranking is one matrix-vector product and ``argpartition`` for the top k. The matrix is built
once from the registry, saved next to the data dir (``cache/``), and brought up to date with
only the signatures written since (``signature.seq`` > the last one seen), so neither a warm
service nor a cold CLI re-reads unchanged signatures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry.files import atomic_file
from registry.models import Signature
from registry.signatures import current_seq
from registry.vectors import from_blob

INDEX_FORMAT = 1


@dataclass
class Filters:
    max_strength: float | None = None
    min_consistency: float | None = None
    include_invalid: bool = False
    allowed_ids: np.ndarray | None = None  # e.g. from a base-model or NSFW filter; None = all
    allowed_reason: str = "metadata"


@dataclass
class Ranked:
    version_ids: np.ndarray
    scores: np.ndarray
    considered: int
    filtered: dict[str, int] = field(default_factory=dict)


# The per-LoRA arrays, aligned row by row: what copy(), save() and load() carry.
ARRAYS = ("ids", "units", "norms", "strength", "consistency", "valid", "signature_bytes")


class RankingIndex:
    def __init__(self, profile_id: int, dim: int = 0):
        self.profile_id = profile_id
        self.seq = 0
        self.ids = np.zeros(0, dtype=np.int64)
        self.units = np.zeros((0, dim), dtype=np.float32)
        self.norms = np.zeros(0, dtype=np.float32)
        self.strength = np.zeros(0, dtype=np.float32)
        self.consistency = np.zeros(0, dtype=np.float32)
        self.valid = np.zeros(0, dtype=bool)
        self.signature_bytes = np.zeros(
            0, dtype="S32"
        )  # sha256 of the direction blob: exact duplicates
        self._pos: dict[int, int] | None = None

    def copy(self) -> "RankingIndex":
        """A deep copy: the service refreshes a copy and swaps it in while requests read the old one."""
        other = RankingIndex(self.profile_id, self.dim)
        other.seq = self.seq
        other._set_arrays(lambda name: getattr(self, name).copy())
        return other

    def _set_arrays(self, value_of) -> None:
        """Set every per-LoRA array (``ARRAYS``) to ``value_of(name)``."""
        for name in ARRAYS:
            setattr(self, name, value_of(name))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.units.shape[1])

    def position(self, version_id: int) -> int | None:
        if self._pos is None:
            self._pos = {int(v): i for i, v in enumerate(self.ids)}
        return self._pos.get(int(version_id))

    # ------------------------------------------------------------------ building

    def refresh(self, session) -> int:
        """Apply every signature of this profile written since the last refresh; returns how many."""
        top = current_seq(session)
        if top < self.seq:  # the counter went backwards: another database; start over
            self.__init__(self.profile_id, self.dim)
        if top == self.seq:
            return 0
        stmt = (
            sa.select(
                Signature.version_id,
                Signature.dim,
                Signature.direction,
                Signature.strength,
                Signature.consistency,
                Signature.valid,
                Signature.seq,
            )
            .where(Signature.profile_id == self.profile_id, Signature.seq > self.seq)
            .order_by(Signature.seq)
            .execution_options(yield_per=5000)
        )
        rows = session.execute(stmt).all()
        self._apply(rows)
        self.seq = top
        return len(rows)

    def _apply(self, rows) -> None:
        if not rows:
            return
        dims = {r.dim for r in rows}
        if self.dim and dims != {self.dim} or len(dims) > 1:
            raise ValueError(
                f"profile {self.profile_id} mixes direction sizes {sorted(dims | {self.dim} - {0})}"
            )
        dim = dims.pop()
        vecs = np.stack([from_blob(r.direction, dim) for r in rows])
        norms = np.linalg.norm(vecs, axis=1).astype(np.float32)
        units = np.divide(vecs, norms[:, None], out=np.zeros_like(vecs), where=norms[:, None] > 0)
        digests = np.array([hashlib.sha256(r.direction).digest() for r in rows], dtype="S32")
        new_ids = np.array([r.version_id for r in rows], dtype=np.int64)
        cols = dict(
            units=units,
            norms=norms,
            strength=np.array([r.strength for r in rows], np.float32),
            consistency=np.array([r.consistency for r in rows], np.float32),
            valid=np.array([bool(r.valid) for r in rows]),
            signature_bytes=digests,
        )
        if self.units.shape[1] != dim:
            self.units = np.zeros((0, dim), dtype=np.float32)
        # a re-signed version replaces its row; the newest write of a version wins
        last = {int(v): i for i, v in enumerate(new_ids)}
        existing = [(self.position(v), i) for v, i in last.items() if self.position(v) is not None]
        for pos, i in existing:
            for name, col in cols.items():
                getattr(self, name)[pos] = col[i]
        fresh = sorted(i for v, i in last.items() if self.position(v) is None)
        if fresh:
            self.ids = np.concatenate([self.ids, new_ids[fresh]])
            for name, col in cols.items():
                setattr(self, name, np.concatenate([getattr(self, name), col[fresh]]))
            self._pos = None

    # ------------------------------------------------------------------ persistence

    @staticmethod
    def cache_path(cache_dir: Path, db_url: str, profile_hash: str) -> Path:
        key = hashlib.sha256(f"{db_url}\n{profile_hash}".encode()).hexdigest()[:24]
        return Path(cache_dir) / f"ranking-{key}.npz"

    def save(self, path: Path) -> None:
        with atomic_file(path) as fh:
            np.savez(
                fh,
                format=np.int64(INDEX_FORMAT),
                profile_id=np.int64(self.profile_id),
                seq=np.int64(self.seq),
                **{name: getattr(self, name) for name in ARRAYS},
            )

    @classmethod
    def load(cls, path: Path, profile_id: int) -> "RankingIndex":
        index = cls(profile_id)
        try:
            with np.load(path) as data:
                if int(data["format"]) != INDEX_FORMAT or int(data["profile_id"]) != profile_id:
                    return index
                index.seq = int(data["seq"])
                index._set_arrays(lambda name: data[name])
        except (OSError, ValueError, KeyError):
            return cls(profile_id)  # a missing or damaged cache is rebuilt from the registry
        return index

    # ------------------------------------------------------------------ queries

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine of ``query`` with every Direction (zero Directions score 0)."""
        q = np.asarray(query, dtype=np.float32)
        qn = float(np.linalg.norm(q))
        if qn == 0 or not np.isfinite(qn):
            raise ValueError("the query vector is zero or not finite")
        return self.units @ (q / qn)

    def rank(
        self,
        query: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exclude: int | None = None,
        scores: np.ndarray | None = None,
    ) -> Ranked:
        """Top-k version ids by cosine between ``query`` and each unit Direction, after filters.

        ``scores`` (from ``self.scores(query)``) saves the product when ranking one query twice.
        """
        filters = filters or Filters()
        if scores is None:
            scores = self.scores(query)
        keep = np.ones(len(self), dtype=bool)
        filtered: dict[str, int] = {}

        def drop(name: str, mask: np.ndarray) -> None:
            newly = keep & mask
            filtered[name] = int(newly.sum())
            keep[newly] = False

        if exclude is not None:
            pos = self.position(exclude)
            if pos is not None:
                keep[pos] = False
        if not filters.include_invalid:
            drop("invalid", ~self.valid)
        drop("no_effect", self.norms == 0)
        if filters.allowed_ids is not None:
            drop(filters.allowed_reason, ~np.isin(self.ids, filters.allowed_ids))
        if filters.max_strength is not None:
            drop("strength_above_max", self.strength > filters.max_strength)
        if filters.min_consistency is not None:
            drop("consistency_below_min", self.consistency < filters.min_consistency)
        candidates = np.flatnonzero(keep)
        k = max(0, min(k, candidates.shape[0]))
        if k == 0:
            return Ranked(
                np.zeros(0, np.int64), np.zeros(0, np.float32), int(candidates.shape[0]), filtered
            )
        sub = scores[candidates]
        top = np.argpartition(-sub, k - 1)[:k] if k < sub.shape[0] else np.arange(sub.shape[0])
        # ties broken by version id, so results are stable
        order = np.lexsort((self.ids[candidates[top]], -sub[top]))
        chosen = candidates[top[order]]
        return Ranked(self.ids[chosen], scores[chosen], int(candidates.shape[0]), filtered)

    def direction(self, version_id: int) -> np.ndarray | None:
        pos = self.position(version_id)
        return None if pos is None else self.units[pos] * self.norms[pos]

    def exact_duplicates(self, version_id: int) -> np.ndarray:
        pos = self.position(version_id)
        if pos is None:
            return np.zeros(0, np.int64)
        same = self.signature_bytes == self.signature_bytes[pos]
        same[pos] = False
        return self.ids[same]


def near_duplicate_pairs(
    units: np.ndarray, min_cos: float, *, dims: int = 32, grid_dims: int = 4, seed: int = 0
) -> list[tuple[int, int, float]]:
    """All pairs (i < j) of unit rows with cosine ≥ ``min_cos``, exactly, without an N² × d product.

    For unit vectors, cos ≥ c ⇔ ‖a − b‖ ≤ r with r² = 2(1 − c). A projection can only shorten a
    difference, so a qualifying pair is within r on every principal coordinate: rows are bucketed
    on a grid of cell size r over the top ``grid_dims`` principal coordinates, only neighbouring
    cells are compared, first on ``dims`` principal coordinates, then survivors in full.
    """
    n, d = units.shape
    if n < 2:
        return []
    r = float(np.sqrt(max(2.0 * (1.0 - min_cos), 0.0))) + 1e-6
    rng = np.random.default_rng(seed)
    sample = units[rng.choice(n, size=min(n, 20_000), replace=False)].astype(np.float64)
    centered = sample - sample.mean(axis=0)
    _, vecs = np.linalg.eigh(centered.T @ centered)
    basis = vecs[:, ::-1][:, : min(dims, d)]  # principal directions, largest variance first
    proj = (units @ basis).astype(np.float32)
    sq = np.einsum("ij,ij->i", proj, proj)
    valid = np.linalg.norm(units, axis=1) > 0
    g = min(grid_dims, proj.shape[1])
    cells = np.floor(proj[:, :g] / r).astype(np.int64)
    order = np.lexsort(cells.T[::-1])
    keys = [tuple(row) for row in cells[order]]
    groups: dict[tuple, np.ndarray] = {}
    start = 0
    for i in range(1, n + 1):
        if i == n or keys[i] != keys[start]:
            groups[keys[start]] = order[start:i]
            start = i
    offsets = np.array(np.meshgrid(*[[-1, 0, 1]] * g, indexing="ij")).reshape(g, -1).T
    pairs = []
    for key, rows in groups.items():
        near = [
            groups[k] for k in (tuple(np.add(key, o)) for o in offsets) if k in groups and k >= key
        ]
        cols = np.concatenate(near)
        dist = sq[rows, None] + sq[None, cols] - 2.0 * (proj[rows] @ proj[cols].T)
        a, b = np.nonzero(dist <= r * r)
        a, b = rows[a], cols[b]
        keep = (a != b) & valid[a] & valid[b]
        same_cell = np.isin(b, rows)
        keep &= ~same_cell | (a < b)  # inside one cell, each pair once
        a, b = a[keep], b[keep]
        if a.size:
            cos = np.einsum("ij,ij->i", units[a], units[b])
            hit = cos >= min_cos
            lo, hi = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
            pairs.extend(zip(lo.tolist(), hi.tolist(), cos[hit].tolist()))
    return sorted(set(pairs))
