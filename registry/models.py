"""Every registry table, in one module (the schema changes only through migrations/; column types
and constraint names: ``registry.columns``).

Civitai's unit of a LoRA is a model *version*: one file, one signature. Vectors are float32
little-endian blobs (see ``registry.vectors``). Timestamps are timezone-aware UTC; lease and
availability times of jobs are epoch seconds on the *database* clock (see ``registry.queue``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.columns import json_field, timestamp_field

# Civitai's nsfwLevel bitmask: PG=1, PG13=2, R=4, X=8, XXX=16. R and above count as NSFW here.
NSFW_LEVEL_BITS = 4 | 8 | 16


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- catalog (what Civitai says)


class CrawledRecord(SQLModel):
    """What the crawler keeps of each Civitai record it reads (``crawler.registry_writer``): the
    payload as received and its hash (unchanged: not written again), when it was first seen, when
    it last changed, and since when it is gone from Civitai (rows are never deleted)."""

    raw: Optional[dict] = json_field()
    raw_hash: Optional[str] = Field(default=None, max_length=64)
    first_seen_at: Optional[datetime] = timestamp_field()
    last_seen_at: Optional[datetime] = timestamp_field()
    updated_at: Optional[datetime] = timestamp_field()
    gone_at: Optional[datetime] = timestamp_field()


class Creator(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    username: str = Field(sa_column=sa.Column(sa.String(255), nullable=False, unique=True))
    image_url: Optional[str] = None


class Model(CrawledRecord, table=True):
    """A Civitai model (a LoRA family); its versions carry the files and signatures."""

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str = ""
    description: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    type: Optional[str] = Field(default=None, max_length=32)
    nsfw: bool = False
    nsfw_level: Optional[int] = None
    poi: bool = False
    minor: bool = False
    availability: Optional[str] = None
    mode: Optional[str] = None  # Archived / TakenDown, absent otherwise
    allow_no_credit: Optional[bool] = None
    allow_derivatives: Optional[bool] = None
    allow_different_license: Optional[bool] = None
    allow_commercial_use: Optional[list] = json_field()
    download_count: Optional[int] = None
    thumbs_up_count: Optional[int] = None
    creator_id: Optional[int] = Field(default=None, foreign_key="creator.id", index=True)
    source: str = Field(default="civitai", max_length=16)
    # host[:port] of the API the crawl read it from; None: civitai.com (imports, older crawls)
    origin: Optional[str] = Field(default=None, max_length=255)


class Tag(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(255), nullable=False, unique=True))


class ModelTag(SQLModel, table=True):
    __tablename__ = "model_tag"
    model_id: int = Field(foreign_key="model.id", primary_key=True, ondelete="CASCADE")
    tag_id: int = Field(foreign_key="tag.id", primary_key=True, index=True, ondelete="CASCADE")


class Version(CrawledRecord, table=True):
    """A model version: the unit that is downloaded and signed.

    ``id`` is Civitai's version id; LoRAs signed from a local file get negative ids.
    """

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    model_id: Optional[int] = Field(default=None, foreign_key="model.id", index=True)
    name: str = ""
    description: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    base_model: Optional[str] = Field(default=None, max_length=64, index=True)
    base_model_type: Optional[str] = None
    trained_words: list = json_field(list)
    published_at: Optional[datetime] = timestamp_field()
    availability: Optional[str] = None
    nsfw_level: Optional[int] = None
    download_count: Optional[int] = None
    download_url: Optional[str] = None
    air: Optional[str] = None
    status: Optional[str] = Field(default=None, max_length=32)  # Civitai's: Published, ...
    usage_control: Optional[str] = Field(default=None, max_length=32)  # Download | Generation | ...
    early_access_ends_at: Optional[datetime] = timestamp_field()
    # Civitai's createdAt / updatedAt (not this row's)
    civitai_created_at: Optional[datetime] = timestamp_field()
    civitai_updated_at: Optional[datetime] = timestamp_field()
    source: str = Field(default="civitai", max_length=16)  # civitai | local | carlos
    # the author's preview images as the payload lists them: url, width, height, nsfw_level, type
    previews: Optional[list] = json_field()


class File(SQLModel, table=True):
    """One file of a version and its download/verification state."""

    id: Optional[int] = Field(default=None, primary_key=True)
    civitai_file_id: Optional[int] = Field(
        default=None, sa_column=sa.Column(sa.Integer(), unique=True, nullable=True)
    )
    version_id: int = Field(foreign_key="version.id", index=True)
    name: str = ""  # as the API gives it: display only, never a path
    size_bytes: Optional[int] = Field(
        default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True)
    )
    type: Optional[str] = None
    format: Optional[str] = None
    fp: Optional[str] = None
    primary: bool = False
    sha256: Optional[str] = Field(default=None, max_length=64, index=True)
    autov2: Optional[str] = None
    blake3: Optional[str] = None
    crc32: Optional[str] = None
    pickle_scan: Optional[str] = None
    virus_scan: Optional[str] = None
    autov1: Optional[str] = Field(default=None, max_length=64)
    autov3: Optional[str] = Field(default=None, max_length=64)
    size_type: Optional[str] = Field(default=None, max_length=64)  # metadata.size: full | pruned
    pickle_scan_message: Optional[str] = Field(
        default=None, sa_column=sa.Column(sa.Text(), nullable=True)
    )
    virus_scan_message: Optional[str] = Field(
        default=None, sa_column=sa.Column(sa.Text(), nullable=True)
    )
    scanned_at: Optional[datetime] = timestamp_field()
    # pending | verified | failed | unsupported | quarantined | skipped
    # | deferred (early access: not attempted until it is public) | unavailable (model Archived/TakenDown)
    state: str = Field(default="pending", max_length=16, index=True)
    local_path: Optional[str] = None  # relative to the artifacts dir
    error: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    attempts: int = 0
    verified_at: Optional[datetime] = timestamp_field()
    updated_at: Optional[datetime] = timestamp_field()


# ---------------------------------------------------------------- your own LoRA folders (scan)


class LocalFile(SQLModel, table=True):
    """A file found by ``carlos-reg scan`` where it lives: used in place, never copied by default.

    The row is the hash cache (``path`` + ``size_bytes`` + ``mtime_ns``: unchanged means not read
    again) and the link to the version it was identified as. ``path`` is the path as found (absolute,
    symlinks not resolved); it is shown, never opened without a fresh ``stat``. A file that vanished
    is ``missing`` (``missing_since``), one whose content changed keeps its ``previous_sha256``.
    """

    __tablename__ = "local_file"
    id: Optional[int] = Field(default=None, primary_key=True)
    path: str = Field(sa_column=sa.Column(sa.Text(), nullable=False, unique=True))
    size_bytes: int = Field(default=0, sa_column=sa.Column(sa.BigInteger(), nullable=False))
    mtime_ns: int = Field(default=0, sa_column=sa.Column(sa.BigInteger(), nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, index=True))
    autov2: Optional[str] = Field(default=None, max_length=16)
    previous_sha256: Optional[str] = Field(default=None, max_length=64)
    status: str = Field(default="present", max_length=16)  # present | missing
    match: str = Field(default="pending", max_length=16)  # registry | civitai | local | pending
    signable: bool = True
    reason: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    version_id: Optional[int] = Field(default=None, foreign_key="version.id", index=True)
    first_seen_at: Optional[datetime] = timestamp_field()
    last_seen_at: Optional[datetime] = timestamp_field()
    hashed_at: Optional[datetime] = timestamp_field()
    changed_at: Optional[datetime] = timestamp_field()
    missing_since: Optional[datetime] = timestamp_field()


class HashLookup(SQLModel, table=True):
    """What Civitai's by-hash endpoint answered for a SHA-256 (asked once; ``scan --refresh`` asks again)."""

    __tablename__ = "hash_lookup"
    sha256: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)  # found | not_found
    version_id: Optional[int] = None
    looked_up_at: Optional[datetime] = timestamp_field()


# ---------------------------------------------------------------- crawling


class CrawlRun(SQLModel, table=True):
    __tablename__ = "crawl_run"
    id: Optional[int] = Field(default=None, primary_key=True)
    started_at: Optional[datetime] = timestamp_field()
    finished_at: Optional[datetime] = timestamp_field()
    status: str = Field(default="running", max_length=16)  # running | ok | partial | failed
    params: dict = json_field(dict)
    cursor: Optional[str] = None
    pages: int = 0
    requests: int = 0
    models_seen: int = 0
    models_written: int = 0
    versions_new: int = 0
    versions_gone: int = 0
    files_verified: int = 0
    files_failed: int = 0
    bytes_downloaded: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger(), nullable=False, server_default="0")
    )
    error_count: int = 0


class CrawlError(SQLModel, table=True):
    __tablename__ = "crawl_error"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="crawl_run.id", index=True, ondelete="CASCADE")
    at: Optional[datetime] = timestamp_field()
    stage: str = Field(max_length=16)  # page | model | download
    ref: Optional[str] = None  # request path (never a query string) or version/file id
    status_code: Optional[int] = None
    message: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))


# ---------------------------------------------------------------- signing


class SignerProfile(SQLModel, table=True):
    """Content-hashed signer settings; a signature points at the exact settings that made it."""

    __tablename__ = "signer_profile"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    settings: dict = json_field(dict)
    created_at: Optional[datetime] = timestamp_field()


class SignJob(SQLModel, table=True):
    """A leased unit of signer work: one LoRA under one profile, or a profile's base branch."""

    __tablename__ = "sign_job"
    __table_args__ = (sa.Index("ix_sign_job_claim", "state", "priority", "available_at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(default="lora", max_length=8)  # lora | base
    version_id: Optional[int] = Field(default=None, foreign_key="version.id", index=True)
    profile_id: int = Field(foreign_key="signer_profile.id", index=True)
    dedupe_key: str = Field(sa_column=sa.Column(sa.String(128), nullable=False, unique=True))
    state: str = Field(default="queued", max_length=8)  # queued | running | done | dead
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 3
    available_at: float = 0.0  # epoch seconds, database clock
    lease_owner: Optional[str] = None
    lease_token: Optional[str] = Field(default=None, max_length=64)
    lease_expires_at: Optional[float] = None
    heartbeat_at: Optional[float] = None
    last_error: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    payload: Optional[dict] = json_field()
    enqueued_at: Optional[datetime] = timestamp_field()
    started_at: Optional[datetime] = timestamp_field()
    finished_at: Optional[datetime] = timestamp_field()


class Signature(SQLModel, table=True):
    """Direction / Strength / Consistency of one version under one profile."""

    __table_args__ = (sa.UniqueConstraint("version_id", "profile_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="version.id", index=True)
    profile_id: int = Field(foreign_key="signer_profile.id", index=True)
    dim: int
    direction: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    strength: float
    consistency: float
    n_samples: int = 0
    valid: bool = True
    flags: list = json_field(list)  # e.g. no_effect, degenerate_images, dora_as_lora
    estimates: Optional[dict] = json_field()  # adaptive sampling: achieved fidelity and tolerances
    file_sha256: Optional[str] = Field(default=None, max_length=64)
    ensemble_path: Optional[str] = None  # float16 per-sample diffs, relative to artifacts dir
    job_id: Optional[int] = Field(default=None, foreign_key="sign_job.id")
    source: str = Field(default="signed", max_length=16)  # signed | imported
    # Registry-wide write order (see registry.signatures): readers refresh with "seq > last seen".
    seq: int = Field(
        default=0,
        sa_column=sa.Column(sa.BigInteger(), nullable=False, server_default="0", index=True),
    )
    created_at: Optional[datetime] = timestamp_field()


class ChangeCounter(SQLModel, table=True):
    """Monotonic counters; incrementing one takes its row lock, so values commit in order."""

    __tablename__ = "change_counter"
    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger(), nullable=False, server_default="0")
    )


class BaseCache(SQLModel, table=True):
    """The base branch of a profile, computed once and shared by every LoRA of that profile."""

    __tablename__ = "base_cache"
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(
        sa_column=sa.Column(
            sa.Integer(), sa.ForeignKey("signer_profile.id"), nullable=False, unique=True
        )
    )
    n_samples: int
    dim: int
    artifact_path: str  # float32 per-sample base image features, relative to artifacts dir
    mean_feature: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    job_id: Optional[int] = Field(default=None, foreign_key="sign_job.id")
    created_at: Optional[datetime] = timestamp_field()


class SampleImage(SQLModel, table=True):
    """A kept before/after image of a profile's sample: the base branch's once per profile
    (``version_id`` None), the LoRA branch's per signed version (a small WebP in the artifact store)."""

    __tablename__ = "sample_image"
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="signer_profile.id", index=True)
    version_id: Optional[int] = Field(default=None, foreign_key="version.id", index=True)
    position: int  # the sample's place in the profile's visiting order
    prompt: str = Field(
        default="", sa_column=sa.Column(sa.Text(), nullable=False, server_default="")
    )
    artifact_path: str = Field(max_length=255)
    width: int
    height: int
    created_at: Optional[datetime] = timestamp_field()


class VectorCache(SQLModel, table=True):
    """Cached vectors: query vectors, text features of a prompt set, image means (by namespace)."""

    __tablename__ = "vector_cache"
    __table_args__ = (sa.UniqueConstraint("namespace", "key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    namespace: str = Field(max_length=32)
    key: str = Field(max_length=128)
    rows: int = 1
    dim: int
    data: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    meta: Optional[dict] = json_field()
    created_at: Optional[datetime] = timestamp_field()


# ---------------------------------------------------------------- service


class ServiceRun(SQLModel, table=True):
    """One scheduled crawl-and-index run (or a skipped one, when another service held the lock)."""

    __tablename__ = "service_run"
    id: Optional[int] = Field(default=None, primary_key=True)
    owner: str = Field(max_length=128)
    trigger: str = Field(default="schedule", max_length=16)  # schedule | manual
    status: str = Field(
        default="running", max_length=16
    )  # running | ok | failed | skipped | interrupted
    started_at: Optional[datetime] = timestamp_field()
    finished_at: Optional[datetime] = timestamp_field()
    steps: dict = json_field(dict)
    error: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))


class ServiceLock(SQLModel, table=True):
    """A named lease held in the database, so that work never overlaps across processes or machines."""

    __tablename__ = "service_lock"
    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=128)
    token: str = Field(max_length=64)
    expires_at: float = 0.0  # epoch seconds, database clock
