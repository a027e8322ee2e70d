"""Tolerant parsing of Civitai model / version / file payloads.

Contract: ``parse_model(item)`` returns a ``ParsedModel`` or raises ``ApiSchemaError``; it never
raises ``KeyError``/``TypeError``/``AttributeError`` whatever the JSON holds. Fields may be null,
absent or of the wrong type (Civitai drops null and empty keys on some endpoints): a wrong-typed
optional field reads as absent. Only a model without a usable integer ``id`` is refused whole; a
version or file without one is skipped and named in ``ParsedModel.skipped``.

Quirks handled here: ``modelVersions`` empty or absent; ``primary`` absent (then Civitai's own
scoring picks the primary file); ``hashes`` absent or partial; ``sizeKB`` in KiB; 2023-shaped
versions with ``createdAt`` and no ``publishedAt`` (the publish time falls back to
``createdAt``). Single fields (licences, trigger words, early access, previews) are read by
``crawler.fields``.

The raw payload is kept (``raw``) with a hash of its canonical JSON (``raw_hash``) so an unchanged
item is recognised without comparing fields, and so the registry can be re-parsed later. A
model's raw payload excludes ``modelVersions``; each version keeps its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crawler.fields import (
    as_bool,
    as_datetime,
    as_dict,
    as_float,
    as_id,
    as_int,
    as_list,
    as_text,
    dedupe,
    early_access_end,
    license_list,
    preview_images,
    trained_words,
)
from registry.catalog import in_early_access  # noqa: F401  (re-exported for the crawler)
from registry.profile_identity import canonical_json

# Base models of the SDXL architecture (not "Pony V7", which is AuraFlow).
SDXL_BASE_MODELS: tuple[str, ...] = (
    "SDXL 1.0",
    "SDXL 0.9",
    "SDXL 1.0 LCM",
    "SDXL Turbo",
    "SDXL Lightning",
    "SDXL Hyper",
    "Pony",
    "Illustrious",
    "NoobAI",
)
LORA_TYPES: tuple[str, ...] = ("LORA", "LoCon", "DoRA")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MODEL_FILE_TYPES = ("Model", "Pruned Model")
_AIR_TYPE = {"LORA": "lora", "LoCon": "lycoris", "DoRA": "dora"}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ApiSchemaError(ValueError):
    """A payload too broken to use (e.g. a model without an id)."""


_CANONICAL = {b.casefold(): b for b in SDXL_BASE_MODELS}


def canonical_base_model(name: str) -> str | None:
    """The canonical spelling of an SDXL-architecture base model name, or None."""
    if name in _CANONICAL.values():  # the common case: already canonical
        return name
    return _CANONICAL.get(" ".join(name.split()).casefold())


def raw_hash(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8", "surrogatepass")).hexdigest()


# Civitai's AIR ecosystem segment per SDXL-architecture base model (``urn:air:ECO:TYPE:civitai:M@V``).
# Civitai names the *root* ecosystem (its getAirEcosystem, research notes §10.1): Pony, Illustrious
# and NoobAI versions are ``urn:air:sdxl:…`` too. A payload's own ``air`` always wins.
AIR_ECOSYSTEM = {
    "SDXL 1.0": "sdxl",
    "SDXL 0.9": "sdxl",
    "SDXL 1.0 LCM": "sdxl",
    "SDXL Turbo": "sdxl",
    "SDXL Lightning": "sdxl",
    "SDXL Hyper": "sdxl",
    "Pony": "sdxl",
    "Illustrious": "sdxl",
    "NoobAI": "sdxl",
}


def air_for(
    base_model: str | None, model_type: str | None, model_id: int, version_id: int
) -> str | None:
    """The AIR of a version, its ecosystem taken from the version's base model."""
    if model_type not in _AIR_TYPE:
        return None
    canon = canonical_base_model(base_model) if base_model else None
    ecosystem = AIR_ECOSYSTEM.get(canon) if canon else None
    if ecosystem is None:
        ecosystem = re.sub(r"[^a-z0-9]+", "", (base_model or "").lower()) or "other"
    return f"urn:air:{ecosystem}:{_AIR_TYPE[model_type]}:civitai:{model_id}@{version_id}"


# ---------------------------------------------------------------- records


@dataclass
class ParsedFile:
    civitai_file_id: int
    name: str
    size_bytes: int | None
    type: str | None
    format: str | None
    fp: str | None
    size: str | None
    primary: bool | None  # None: the payload did not say
    sha256: str | None  # lowercase hex, only when well-formed
    autov2: str | None
    blake3: str | None
    crc32: str | None
    pickle_scan: str | None
    virus_scan: str | None
    autov1: str | None = None
    autov3: str | None = None
    pickle_scan_message: str | None = None
    virus_scan_message: str | None = None
    scanned_at: datetime | None = None

    @property
    def is_pickle(self) -> bool:
        return self.format == "PickleTensor" or self.name.lower().endswith(PICKLE_SUFFIXES)

    @property
    def is_safetensors(self) -> bool:
        if self.is_pickle or (self.type is not None and self.type not in MODEL_FILE_TYPES):
            return False
        return self.format == "SafeTensor" or (
            self.format is None and self.name.lower().endswith(".safetensors")
        )

    def score(self) -> int:
        """Civitai's primary-file score: weights file, then SafeTensor, pruned, fp16."""
        return (
            (1000 if self.type in MODEL_FILE_TYPES or self.type is None else 0)
            + (100 if self.format == "SafeTensor" else 0)
            + (10 if self.size == "pruned" else 0)
            + (1 if self.fp == "fp16" else 0)
        )


@dataclass
class ParsedVersion:
    id: int
    model_id: int
    name: str
    description: str | None
    base_model: str | None
    base_model_type: str | None
    trained_words: list[str]
    published_at: datetime | None
    availability: str | None
    nsfw_level: int | None
    download_count: int | None
    download_url: str | None
    air: str | None
    files: list[ParsedFile]
    raw: dict
    raw_hash: str
    created_at: datetime | None = (
        None  # Civitai's; 2023-shaped payloads have it, current lists do not
    )
    civitai_updated_at: datetime | None = None
    status: str | None = None
    early_access_ends_at: datetime | None = None
    usage_control: str | None = None
    previews: list[dict] = field(default_factory=list)

    def early_access(self, now: datetime) -> bool:
        return in_early_access(self.availability, self.early_access_ends_at, now)

    @property
    def is_sdxl(self) -> bool:
        return self.base_model is not None and canonical_base_model(self.base_model) is not None

    def primary_file(self) -> ParsedFile | None:
        """The file Civitai serves by default: flagged primary, else the best-scored one."""
        flagged = [f for f in self.files if f.primary]
        if flagged:
            return flagged[0]
        return max(self.files, key=lambda f: f.score(), default=None)

    def download_choice(self) -> tuple[ParsedFile | None, str | None]:
        """The one file to download (the primary, or the best safetensors weights file) and,
        when there is none, why."""
        primary = self.primary_file()
        if primary is not None and primary.is_safetensors:
            return primary, None
        candidates = [f for f in self.files if f.is_safetensors]
        if candidates:
            return max(candidates, key=lambda f: f.score()), None
        if primary is None:
            return None, "the version lists no files"
        if primary.is_pickle:
            return None, "pickle format (PickleTensor): never downloaded or loaded"
        return (
            None,
            f"no safetensors weights file (primary is {primary.format or primary.type or 'unknown'})",
        )


@dataclass
class ParsedModel:
    id: int
    name: str
    description: str | None
    type: str | None
    nsfw: bool
    nsfw_level: int | None
    poi: bool
    minor: bool
    availability: str | None
    mode: str | None
    allow_no_credit: bool | None
    allow_derivatives: bool | None
    allow_different_license: bool | None
    allow_commercial_use: list[str] | None
    download_count: int | None
    thumbs_up_count: int | None
    creator_username: str | None
    creator_image: str | None
    tags: list[str]
    versions: list[ParsedVersion]
    raw: dict
    raw_hash: str
    skipped: list[str] = field(default_factory=list)

    @property
    def is_lora(self) -> bool:
        return self.type in LORA_TYPES

    def keep_versions(self, base_models: tuple[str, ...] | frozenset[str]) -> list[ParsedVersion]:
        """The SDXL versions whose (canonical) base model is in ``base_models``."""
        return [
            v
            for v in self.versions
            if v.is_sdxl and canonical_base_model(v.base_model) in base_models
        ]


# ---------------------------------------------------------------- parsers


def _object_id(item: Any, what: str) -> int:
    """The id of a payload object, or ``ApiSchemaError`` when it is no object or has no valid id."""
    if not isinstance(item, dict):
        raise ApiSchemaError(f"{what} is not an object")
    object_id = as_id(item.get("id"))
    if object_id is None:
        raise ApiSchemaError(f"{what} without a valid id")
    return object_id


def parse_file(item: Any) -> ParsedFile:
    file_id = _object_id(item, "file")
    meta = as_dict(item.get("metadata"))
    hashes = {str(k).lower(): v for k, v in as_dict(item.get("hashes")).items()}
    sha = hashes.get("sha256")
    size_kb = as_float(item.get("sizeKB"))
    return ParsedFile(
        civitai_file_id=file_id,
        name=as_text(item.get("name"), 1000) or "",
        size_bytes=round(size_kb * 1024) if size_kb is not None and 0 <= size_kb < 2**50 else None,
        type=as_text(item.get("type"), 64),
        format=as_text(meta.get("format"), 64),
        fp=as_text(meta.get("fp"), 64),
        size=as_text(meta.get("size"), 64),
        primary=as_bool(item.get("primary")),
        sha256=sha.lower() if isinstance(sha, str) and _HEX64.match(sha) else None,
        autov2=as_text(hashes.get("autov2"), 64),
        blake3=as_text(hashes.get("blake3"), 128),
        crc32=as_text(hashes.get("crc32"), 16),
        pickle_scan=as_text(item.get("pickleScanResult"), 32),
        virus_scan=as_text(item.get("virusScanResult"), 32),
        autov1=as_text(hashes.get("autov1"), 64),
        autov3=as_text(hashes.get("autov3"), 64),
        pickle_scan_message=as_text(item.get("pickleScanMessage"), 4000),
        virus_scan_message=as_text(item.get("virusScanMessage"), 4000),
        scanned_at=as_datetime(item.get("scannedAt")),
    )


def parse_version(
    item: Any, model_id: int, model_type: str | None = None
) -> tuple[ParsedVersion, list[str]]:
    version_id = _object_id(item, "version")
    files, skipped = [], []
    for i, f in enumerate(as_list(item.get("files"))):
        try:
            files.append(parse_file(f))
        except ApiSchemaError as exc:
            skipped.append(f"version {version_id} file #{i}: {exc}")
    base = as_text(item.get("baseModel"), 64)
    air = as_text(item.get("air"), 255) or air_for(base, model_type, model_id, version_id)
    created = as_datetime(item.get("createdAt"))
    stats = as_dict(item.get("stats"))
    version = ParsedVersion(
        id=version_id,
        model_id=as_id(item.get("modelId")) or model_id,
        name=as_text(item.get("name"), 1000) or "",
        description=as_text(item.get("description")),
        base_model=(canonical_base_model(base) or base) if base else None,
        base_model_type=as_text(item.get("baseModelType"), 64),
        trained_words=trained_words(item.get("trainedWords")),
        published_at=as_datetime(item.get("publishedAt")) or created,
        availability=as_text(item.get("availability"), 32),
        nsfw_level=as_int(item.get("nsfwLevel")),
        download_count=as_int(stats.get("downloadCount")),
        download_url=as_text(item.get("downloadUrl"), 1000),
        air=air,
        files=files,
        raw=item,
        raw_hash=raw_hash(item),
        created_at=created,
        civitai_updated_at=as_datetime(item.get("updatedAt")),
        status=as_text(item.get("status"), 32),
        early_access_ends_at=early_access_end(item),
        usage_control=as_text(item.get("usageControl"), 32),
        previews=preview_images(item.get("images")),
    )
    return version, skipped


def parse_model(item: Any) -> ParsedModel:
    """Parse one element of ``/api/v1/models`` or the body of ``/api/v1/models/{id}``."""
    model_id = _object_id(item, "model")
    model_type = as_text(item.get("type"), 32)
    versions, skipped = [], []
    for i, v in enumerate(as_list(item.get("modelVersions"))):
        try:
            version, notes = parse_version(v, model_id, model_type)
        except ApiSchemaError as exc:
            skipped.append(f"model {model_id} version #{i}: {exc}")
            continue
        versions.append(version)
        skipped += notes
    stats, creator = as_dict(item.get("stats")), as_dict(item.get("creator"))
    raw = {k: v for k, v in item.items() if k != "modelVersions"}
    return ParsedModel(
        id=model_id,
        name=as_text(item.get("name"), 1000) or "",
        description=as_text(item.get("description")),
        type=model_type,
        nsfw=bool(as_bool(item.get("nsfw"))),
        nsfw_level=as_int(item.get("nsfwLevel")),
        poi=bool(as_bool(item.get("poi"))),
        minor=bool(as_bool(item.get("minor"))),
        availability=as_text(item.get("availability"), 32),
        mode=as_text(item.get("mode"), 32),
        allow_no_credit=as_bool(item.get("allowNoCredit")),
        allow_derivatives=as_bool(item.get("allowDerivatives")),
        allow_different_license=as_bool(item.get("allowDifferentLicense")),
        allow_commercial_use=license_list(item.get("allowCommercialUse")),
        download_count=as_int(stats.get("downloadCount")),
        thumbs_up_count=as_int(stats.get("thumbsUpCount")),
        creator_username=(as_text(creator.get("username"), 255) or None),
        creator_image=as_text(creator.get("image"), 1000),
        tags=dedupe(
            [
                t.strip()
                for t in (
                    as_text(x.get("name") if isinstance(x, dict) else x, 255)
                    for x in as_list(item.get("tags"))
                )
                if t and t.strip()
            ]
        ),
        versions=versions,
        raw=raw,
        raw_hash=raw_hash(raw),
        skipped=skipped,
    )
