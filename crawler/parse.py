"""Tolerant parsing of Civitai model / version / file payloads.

Contract: ``parse_model(item)`` returns a ``ParsedModel`` or raises ``ApiSchemaError``; it never
raises ``KeyError``/``TypeError``/``AttributeError`` whatever the JSON holds. Fields may be null,
absent or of the wrong type (Civitai drops null and empty keys on some endpoints): a wrong-typed
optional field reads as absent. Only a model without a usable integer ``id`` is refused whole; a
version or file without one is skipped and named in ``ParsedModel.skipped``.

Quirks handled: ``modelVersions`` empty or absent; license field ``allowCommercialUse`` as a
string, a list or a Postgres array literal ``"{Image,RentCivit}"``; ``trainedWords`` kept verbatim
(a list of entries, order kept; an entry may hold several comma-joined words and is not split);
``primary`` absent (then Civitai's own scoring picks the primary file); ``hashes`` absent or
partial; ``sizeKB`` in KiB; 2023-shaped versions with ``createdAt`` and no ``publishedAt`` (the
publish time falls back to ``createdAt``); early access in every era's fields (``availability``
EarlyAccess, ``earlyAccessEndsAt``, ``earlyAccessDeadline``, ``paidAccess.endsAt``,
``earlyAccessTimeFrame`` days).

The raw payload is kept (``raw``) with a hash of its canonical JSON (``raw_hash``) so an unchanged
item is recognised without comparing fields, and so the registry can be re-parsed later. A
model's raw payload excludes ``modelVersions``; each version keeps its own.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

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
_MAX_INT = 2**63 - 1


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


# ---------------------------------------------------------------- scalar coercion


def _text(value: Any, limit: int | None = None) -> str | None:
    if not isinstance(value, str):
        return None
    # PostgreSQL text holds neither NUL nor lone surrogates (which JSON can encode)
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit else value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= _MAX_INT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return _int(int(value))
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,19}\s*", value):
        return _int(int(value))
    return None


def _id(value: Any) -> int | None:
    n = _int(value)
    return n if n is not None and 0 < n <= 2**31 - 1 else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0 if value in (0, 1) else None
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def license_list(value: Any) -> list[str] | None:
    """``allowCommercialUse`` in any of its shapes, as a list of names (None when absent)."""
    if isinstance(value, list):
        return _dedupe([s.strip() for s in value if isinstance(s, str) and s.strip()])
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        return _dedupe(
            [p.strip().strip('"').strip() for p in text.split(",") if p.strip().strip('"').strip()]
        )
    return None


def trained_words(value: Any) -> list[str]:
    """Trigger words exactly as Civitai gives them: the list's string entries, verbatim and in order.

    Nothing is split, stripped or de-duplicated here (an entry such as ``"(hands on own chest,
    deep skin:1.2)"`` is one prompt fragment, and the signer appends each entry as it is); only
    non-string entries are dropped, and NUL characters, which a database cannot hold. A missing or
    null list, or a single string in place of a list, is stored as ``[]`` / ``[string]``; whether
    the list was missing stays visible in the raw payload (see ``registry.catalog.words_missing``).
    Cleaning for display or for claims happens where the words are used.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [w for w in (_text(x) for x in value) if w is not None]


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


def early_access_end(item: dict) -> datetime | None:
    """When a version's early access ends, from whichever field the payload's era uses."""
    for key in ("earlyAccessEndsAt", "earlyAccessDeadline"):
        when = _datetime(item.get(key))
        if when is not None:
            return when
    paid = _dict(item.get("paidAccess"))
    when = _datetime(paid.get("endsAt"))
    if when is not None:
        return when
    days = _int(item.get("earlyAccessTimeFrame"))  # 2023: days after publication
    start = _datetime(item.get("publishedAt")) or _datetime(item.get("createdAt"))
    if days and days > 0 and start is not None and days < 10000:
        return start + timedelta(days=days)
    return None


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


def parse_file(item: Any) -> ParsedFile:
    if not isinstance(item, dict):
        raise ApiSchemaError("file is not an object")
    file_id = _id(item.get("id"))
    if file_id is None:
        raise ApiSchemaError("file without a valid id")
    meta = _dict(item.get("metadata"))
    hashes = {str(k).lower(): v for k, v in _dict(item.get("hashes")).items()}
    sha = hashes.get("sha256")
    size_kb = _float(item.get("sizeKB"))
    return ParsedFile(
        civitai_file_id=file_id,
        name=_text(item.get("name"), 1000) or "",
        size_bytes=round(size_kb * 1024) if size_kb is not None and 0 <= size_kb < 2**50 else None,
        type=_text(item.get("type"), 64),
        format=_text(meta.get("format"), 64),
        fp=_text(meta.get("fp"), 64),
        size=_text(meta.get("size"), 64),
        primary=_bool(item.get("primary")),
        sha256=sha.lower() if isinstance(sha, str) and _HEX64.match(sha) else None,
        autov2=_text(hashes.get("autov2"), 64),
        blake3=_text(hashes.get("blake3"), 128),
        crc32=_text(hashes.get("crc32"), 16),
        pickle_scan=_text(item.get("pickleScanResult"), 32),
        virus_scan=_text(item.get("virusScanResult"), 32),
        autov1=_text(hashes.get("autov1"), 64),
        autov3=_text(hashes.get("autov3"), 64),
        pickle_scan_message=_text(item.get("pickleScanMessage"), 4000),
        virus_scan_message=_text(item.get("virusScanMessage"), 4000),
        scanned_at=_datetime(item.get("scannedAt")),
    )


def parse_version(
    item: Any, model_id: int, model_type: str | None = None
) -> tuple[ParsedVersion, list[str]]:
    if not isinstance(item, dict):
        raise ApiSchemaError("version is not an object")
    version_id = _id(item.get("id"))
    if version_id is None:
        raise ApiSchemaError("version without a valid id")
    files, skipped = [], []
    for i, f in enumerate(_list(item.get("files"))):
        try:
            files.append(parse_file(f))
        except ApiSchemaError as exc:
            skipped.append(f"version {version_id} file #{i}: {exc}")
    base = _text(item.get("baseModel"), 64)
    air = _text(item.get("air"), 255) or air_for(base, model_type, model_id, version_id)
    created = _datetime(item.get("createdAt"))
    stats = _dict(item.get("stats"))
    version = ParsedVersion(
        id=version_id,
        model_id=_id(item.get("modelId")) or model_id,
        name=_text(item.get("name"), 1000) or "",
        description=_text(item.get("description")),
        base_model=(canonical_base_model(base) or base) if base else None,
        base_model_type=_text(item.get("baseModelType"), 64),
        trained_words=trained_words(item.get("trainedWords")),
        published_at=_datetime(item.get("publishedAt")) or created,
        availability=_text(item.get("availability"), 32),
        nsfw_level=_int(item.get("nsfwLevel")),
        download_count=_int(stats.get("downloadCount")),
        download_url=_text(item.get("downloadUrl"), 1000),
        air=air,
        files=files,
        raw=item,
        raw_hash=raw_hash(item),
        created_at=created,
        civitai_updated_at=_datetime(item.get("updatedAt")),
        status=_text(item.get("status"), 32),
        early_access_ends_at=early_access_end(item),
        usage_control=_text(item.get("usageControl"), 32),
        previews=preview_images(item.get("images")),
    )
    return version, skipped


MAX_PREVIEWS = 20


def preview_images(items: Any) -> list[dict]:
    """The author's preview images (``images[]``): http(s) URL, size, NSFW level and type, as listed."""
    out = []
    for item in _list(items):
        url = _text(_dict(item).get("url"))
        if not url or len(url) > 2000 or not url.lower().startswith(("https://", "http://")):
            continue
        out.append(
            {
                "url": url,
                "width": _int(item.get("width")),
                "height": _int(item.get("height")),
                "nsfw_level": _int(item.get("nsfwLevel")),
                "type": _text(item.get("type"), 16) or "image",
            }
        )
        if len(out) == MAX_PREVIEWS:
            break
    return out


def parse_model(item: Any) -> ParsedModel:
    """Parse one element of ``/api/v1/models`` or the body of ``/api/v1/models/{id}``."""
    if not isinstance(item, dict):
        raise ApiSchemaError("model is not an object")
    model_id = _id(item.get("id"))
    if model_id is None:
        raise ApiSchemaError("model without a valid id")
    model_type = _text(item.get("type"), 32)
    versions, skipped = [], []
    for i, v in enumerate(_list(item.get("modelVersions"))):
        try:
            version, notes = parse_version(v, model_id, model_type)
        except ApiSchemaError as exc:
            skipped.append(f"model {model_id} version #{i}: {exc}")
            continue
        versions.append(version)
        skipped += notes
    stats, creator = _dict(item.get("stats")), _dict(item.get("creator"))
    raw = {k: v for k, v in item.items() if k != "modelVersions"}
    return ParsedModel(
        id=model_id,
        name=_text(item.get("name"), 1000) or "",
        description=_text(item.get("description")),
        type=model_type,
        nsfw=bool(_bool(item.get("nsfw"))),
        nsfw_level=_int(item.get("nsfwLevel")),
        poi=bool(_bool(item.get("poi"))),
        minor=bool(_bool(item.get("minor"))),
        availability=_text(item.get("availability"), 32),
        mode=_text(item.get("mode"), 32),
        allow_no_credit=_bool(item.get("allowNoCredit")),
        allow_derivatives=_bool(item.get("allowDerivatives")),
        allow_different_license=_bool(item.get("allowDifferentLicense")),
        allow_commercial_use=license_list(item.get("allowCommercialUse")),
        download_count=_int(stats.get("downloadCount")),
        thumbs_up_count=_int(stats.get("thumbsUpCount")),
        creator_username=(_text(creator.get("username"), 255) or None),
        creator_image=_text(creator.get("image"), 1000),
        tags=_dedupe(
            [
                t.strip()
                for t in (
                    _text(x.get("name") if isinstance(x, dict) else x, 255)
                    for x in _list(item.get("tags"))
                )
                if t and t.strip()
            ]
        ),
        versions=versions,
        raw=raw,
        raw_hash=raw_hash(raw),
        skipped=skipped,
    )
