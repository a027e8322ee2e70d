"""Building mirror catalogs in code: model, version and file entries shaped as Civitai returns
them, and a tiny valid kohya LoRA file (tests, the demo, benchmarks)."""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any, Iterable

from crawler import stfile


def file_entry(
    file_id: int,
    data: bytes | None = None,
    *,
    name: str | None = None,
    primary: bool | None = True,
    format: str | None = "SafeTensor",
    type: str = "Model",
    sha256: str | None = None,
    size_kb: float | None = None,
    fp: str | None = "fp16",
) -> dict:
    """A Civitai file object; hashes come from ``data`` unless ``sha256`` overrides them."""
    digest = sha256 or (hashlib.sha256(data).hexdigest() if data is not None else None)
    entry: dict[str, Any] = {
        "id": file_id,
        "name": name if name is not None else f"file_{file_id}.safetensors",
        "sizeKB": size_kb
        if size_kb is not None
        else (len(data) / 1024 if data is not None else 0.0),
        "type": type,
        "metadata": {k: v for k, v in (("format", format), ("fp", fp), ("size", "full")) if v},
        "pickleScanResult": "Success",
        "pickleScanMessage": "No Pickle imports",
        "virusScanResult": "Success",
        "virusScanMessage": None,
        "scannedAt": "2026-01-01T00:00:00.000Z",
        "hashes": {"AutoV2": digest[:10].upper(), "SHA256": digest.upper()} if digest else {},
    }
    if primary:
        entry["primary"] = True  # Civitai omits the key on non-primary files of list answers
    return entry


def version_entry(
    version_id: int,
    *,
    files: list[dict],
    base_model: str = "SDXL 1.0",
    name: str | None = None,
    trained_words: Iterable[str] = (),
    published_at: str | None = None,
    index: int = 0,
    description: str | None = None,
) -> dict:
    return {
        "id": version_id,
        "index": index,
        "name": name if name is not None else f"v{version_id}",
        "description": description,
        "baseModel": base_model,
        "baseModelType": "Standard",
        "trainedWords": list(trained_words),
        "publishedAt": published_at or "2026-01-01T00:00:00.000Z",
        "availability": "Public",
        "nsfwLevel": 1,
        "stats": {"downloadCount": 0, "thumbsUpCount": 0, "thumbsDownCount": 0},
        "files": files,
        "images": [],
    }


def model_entry(
    model_id: int,
    *,
    versions: list[dict],
    name: str | None = None,
    type: str = "LORA",
    nsfw: bool = False,
    nsfw_level: int = 1,
    tags: Iterable[str] = (),
    creator: str | None = "mirror",
    description: str | None = None,
    mode: str | None = None,
) -> dict:
    entry: dict[str, Any] = {
        "id": model_id,
        "name": name if name is not None else f"Model {model_id}",
        "description": description,
        "type": type,
        "nsfw": nsfw,
        "nsfwLevel": nsfw_level,
        "minor": False,
        "poi": False,
        "sfwOnly": False,
        "availability": "Public",
        "allowNoCredit": True,
        "allowCommercialUse": "{Image}",
        "allowDerivatives": True,
        "allowDifferentLicense": False,
        "supportsGeneration": False,
        "stats": {
            "downloadCount": 0,
            "thumbsUpCount": 0,
            "thumbsDownCount": 0,
            "commentCount": 0,
            "tippedAmountCount": 0,
        },
        "tags": list(tags),
        "modelVersions": versions,
    }
    if creator is not None:
        entry["creator"] = {"username": creator, "image": None}
    if mode:
        entry["mode"] = mode
    return entry


def tiny_lora(seed: int = 0, rank: int = 2, width: int = 32) -> bytes:
    """A small, structurally valid kohya-format SDXL LoRA file (random weights, no model behind it)."""
    rng = random.Random(seed)

    def floats(n: int) -> bytes:
        return struct.pack(f"<{n}f", *(rng.uniform(-0.1, 0.1) for _ in range(n)))

    base = "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q"
    return stfile.build(
        {
            f"{base}.alpha": ("F32", [], struct.pack("<f", float(rank))),
            f"{base}.lora_down.weight": ("F32", [rank, width], floats(rank * width)),
            f"{base}.lora_up.weight": ("F32", [width, rank], floats(width * rank)),
        },
        metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(rank)},
    )
