"""The demo's Civitai-compatible mirror: a dozen LoRA files with deliberately different effects,
and their Civitai-shaped metadata, in the mirror format (``crawler.mirror``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

WORDS = {"ink": ["inkwash"], "neon": ["neoncity"], "armor": ["goldarmor"]}
SDXL = "SDXL 1.0"


@dataclass(frozen=True)
class DemoLora:
    model_id: int
    name: str
    tags: list[str]
    words: list[str]
    base_model: str
    writer: str | None  # the ``signer.lorafiles`` function that makes the file; None: see below
    options: dict = field(default_factory=dict)  # its arguments

    @property
    def suffix(self) -> str:
        return ".pt" if self.writer == "write_pickle_lora" else ".safetensors"


LORAS = (
    DemoLora(
        101,
        "Ink Wash Painting",
        ["style", "ink"],
        WORDS["ink"],
        SDXL,
        "write_kohya_lora",
        {"seed": 11, "strength": 1.0},
    ),
    DemoLora(
        102,
        "Neon Cyberpunk City",
        ["style", "cyberpunk"],
        WORDS["neon"],
        SDXL,
        "write_kohya_lora",
        {"seed": 22, "strength": 1.0},
    ),
    DemoLora(
        103,
        "Pastel Watercolor",
        ["style", "watercolor"],
        [],
        SDXL,
        "write_kohya_lora",
        {"seed": 33, "strength": 0.6},
    ),
    DemoLora(
        104,
        "Film Grain Photo",
        ["photography"],
        [],
        SDXL,
        "write_kohya_lora",
        {"seed": 44, "strength": 0.15},
    ),
    DemoLora(
        105,
        "Soft Lighting",
        ["lighting"],
        [],
        SDXL,
        "write_kohya_lora",
        {"seed": 55, "strength": 0.08},
    ),
    DemoLora(106, "Does Nothing", ["concept"], [], SDXL, "write_kohya_lora", {"zero_up": True}),
    # no writer: a near duplicate of 101 (its file with a little noise)
    DemoLora(107, "Ink Wash Painting (re-upload)", ["style", "ink"], WORDS["ink"], SDXL, None),
    DemoLora(
        108,
        "Golden Armor",
        ["clothing", "armor"],
        WORDS["armor"],
        SDXL,
        "write_kohya_lora",
        {"seed": 66, "strength": 0.8, "te": True},
    ),
    DemoLora(
        109,
        "Pony Pastel Style",
        ["style"],
        [],
        "Pony",
        "write_kohya_lora",
        {"seed": 77, "strength": 0.9},
    ),
    DemoLora(110, "Sketchy LoHa", ["style", "sketch"], [], SDXL, "write_loha", {"seed": 1}),
    DemoLora(111, "Corrupt Upload", ["style"], [], SDXL, "write_truncated", {"seed": 2}),
    DemoLora(112, "Old Pickle LoRA", ["style"], [], SDXL, "write_pickle_lora", {"seed": 3}),
    DemoLora(113, "SD 1.5 Anime", ["anime"], [], "SD 1.5", "write_sd15_lora", {"seed": 4}),
)


def write_demo_catalog(folder: Path, work: Path) -> dict:
    """LoRA files (made in ``work``) and Civitai-shaped metadata for the demo mirror in ``folder``."""
    from crawler.mirror import write_catalog

    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    models, blobs = [], {}
    for lora in LORAS:
        path = _write_file(files, lora)
        models.append(_model_entry(lora, path.read_bytes()))
        blobs[3000 + lora.model_id] = path
    write_catalog(folder, models, blobs)
    return {"models": len(models)}


def _write_file(files: Path, lora: DemoLora) -> Path:
    from signer import lorafiles as lf

    path = files / f"{lora.model_id}{lora.suffix}"
    if lora.writer is None:
        lf.write_near_duplicate(files / "101.safetensors", path, noise=0.01)
    else:
        getattr(lf, lora.writer)(path, **lora.options)
    return path


def _model_entry(lora: DemoLora, data: bytes) -> dict:
    """The model as Civitai shows it: one version (id 2000 + model id) with one file (3000 + id)."""
    from crawler.mirror import file_entry, model_entry, version_entry

    fmt = "PickleTensor" if lora.suffix == ".pt" else "SafeTensor"
    entry = file_entry(
        3000 + lora.model_id,
        data,
        name=f"{lora.name.replace(' ', '_')}{lora.suffix}",
        format=fmt,
    )
    version = version_entry(
        2000 + lora.model_id,
        name="v1.0",
        files=[entry],
        base_model=lora.base_model,
        trained_words=lora.words,
    )
    return model_entry(
        lora.model_id, name=lora.name, tags=lora.tags, creator="demo", versions=[version]
    )
