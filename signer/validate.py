"""Screening of untrusted LoRA files before and after they touch a pipeline (docs/security.md).

Contract:
- ``inspect_lora_file(path, context_dim=2048)`` reads only the safetensors header and the tensor
  bytes it describes (never a pickle) and returns a ``LoraFileInfo`` or raises ``LoraRejected``
  whose message is the reason recorded for the job. Checks: the ``.safetensors`` suffix (pickle
  suffixes are refused by name, pickle/zip content by magic bytes); file and header size limits;
  the header's offsets cover the data exactly (a truncated or padded file is refused); every key
  is a LoRA key; known unsupported formats (LoHa, LoKr, Tucker ``lora_mid``, full ``diff``
  weights, DoRA, textual-inversion embeddings) and SD1.x/2.x LoRAs (by cross-attention width
  and key layout) are named; text-encoder-only files are refused; every tensor is finite; alphas
  are positive scalars; ranks are bounded.
- ``count_lora_modules(info)`` is how many modules the file adapts, per component; after loading,
  ``attached_modules(pipe, adapter)`` must match it (a partial or empty match is a failure).

Why DoRA is refused rather than signed with a caveat: diffusers drops ``dora_scale`` and runs
the file as a plain LoRA, so the signature would describe a different adapter from the one
people download; a wrong signature is worse than none.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from crawler import stfile
from registry.errors import first_line
from signer.errors import LoraRejected

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
MAX_FILE_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap
MAX_TENSORS = 20_000
MAX_RANK = 1024
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
DOWN_SUFFIXES = (".lora_down.weight", ".lora.down.weight", ".lora_A.weight", "_lora.down.weight")
SDXL_CONTEXT_DIM = 2048
SD1_CONTEXT_DIM, SD2_CONTEXT_DIM = 768, 1024

UNSUPPORTED = (  # (key fragment, reason)
    (
        "hada_w1",
        "LoHa (LyCORIS Hadamard product, hada_w* keys): diffusers cannot load it, so it cannot be signed",
    ),
    (
        "lokr_w",
        "LoKr (LyCORIS Kronecker product, lokr_w* keys): diffusers cannot load it, so it cannot be signed",
    ),
    (
        ".lora_mid.",
        "LyCORIS LoCon with Tucker decomposition (lora_mid keys): diffusers cannot load it",
    ),
    (
        "dora_scale",
        "DoRA (dora_scale keys): diffusers would drop the magnitudes and sign a different, plain LoRA",
    ),
    (
        "lora_magnitude_vector",
        "DoRA (lora_magnitude_vector keys): the magnitudes would not be applied as trained",
    ),
)


@dataclass
class LoraFileInfo:
    path: Path
    size: int
    n_tensors: int
    key_format: str  # kohya | diffusers | peft
    modules: dict = field(default_factory=dict)  # component -> number of adapted modules
    max_rank: int = 0
    conv: bool = False  # LoCon (convolution LoRA)
    metadata: dict = field(default_factory=dict)

    @property
    def total_modules(self) -> int:
        return sum(self.modules.values())


def _reject(path: Path, reason: str):
    raise LoraRejected(reason)  # the job already names the file; stored files are named by hash


def read_header(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[dict, int]:
    """The parsed safetensors header and the byte offset where tensor data starts.

    The checks are the crawler's (``crawler.stfile.read_header``): one validator, so a file the
    crawler verifies is a file the signer accepts, and pickle/zip is judged by content, never by
    the first bytes of the length field alone.
    """
    size = path.stat().st_size
    if size > max_bytes:
        _reject(
            path,
            f"file is {size / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB limit for a LoRA",
        )
    try:
        return stfile.read_header(path)
    except stfile.InvalidSafetensors as exc:
        message = str(exc)
        _reject(
            path,
            message
            if message.startswith(("truncated", "the file is"))
            else f"not a safetensors file ({message})",
        )


def _check_layout(path: Path, header: dict, data_start: int) -> dict[str, dict]:
    """Tensor entries of the header; offsets must tile the data area exactly (truncation shows here)."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if not entries:
        _reject(path, "the file holds no tensors")
    if len(entries) > MAX_TENSORS:
        _reject(path, f"{len(entries)} tensors, over the limit of {MAX_TENSORS} for a LoRA")
    spans = []
    for key, e in entries.items():
        try:
            dtype, shape, (begin, end) = e["dtype"], e["shape"], e["data_offsets"]
            nbytes = DTYPE_BYTES[dtype] * math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            _reject(path, f"corrupt header entry for tensor {key!r}")
        if end - begin != nbytes or begin < 0:
            _reject(
                path,
                f"corrupt header: tensor {key!r} spans {end - begin} bytes, its shape needs {nbytes}",
            )
        spans.append((begin, end))
    spans.sort()
    cursor = 0
    for begin, end in spans:
        if begin != cursor:
            _reject(path, "corrupt header: tensor data has holes or overlaps")
        cursor = end
    available = path.stat().st_size - data_start
    if cursor > available:
        _reject(
            path,
            f"truncated: the header describes {cursor} bytes of tensor data but the file has only "
            f"{available} (an interrupted download?)",
        )
    if cursor < available:
        _reject(path, f"corrupt: {available - cursor} bytes of data after the last tensor")
    return entries


def _component(key: str) -> str | None:
    for prefix, comp in (
        ("lora_unet_", "unet"),
        ("lora_te1_", "text_encoder"),
        ("lora_te2_", "text_encoder_2"),
        ("lora_te_", "text_encoder"),
        ("unet.", "unet"),
        ("text_encoder_2.", "text_encoder_2"),
        ("text_encoder.", "text_encoder"),
        ("base_model.model.", "unet"),
    ):
        if key.startswith(prefix):
            return comp
    return None


def _cross_attention_width(entries: dict) -> int | None:
    """in_features of the cross-attention key/value projections (text width the LoRA was made for)."""
    for key, e in entries.items():
        if (
            (
                "attn2_to_k" in key
                or "attn2.to_k" in key
                or "attn2_to_v" in key
                or "attn2.to_v" in key
            )
            and any(key.endswith(s) for s in DOWN_SUFFIXES)
            and len(e["shape"]) == 2
        ):
            return int(e["shape"][1])
    return None


def inspect_lora_file(
    path: str | os.PathLike,
    *,
    context_dim: int = SDXL_CONTEXT_DIM,
    max_bytes: int = MAX_FILE_BYTES,
    check_values: bool = True,
) -> LoraFileInfo:
    """Screen a LoRA file; returns what it adapts or raises ``LoraRejected`` with the reason."""
    path = Path(path)
    _check_file_kind(path)
    header, data_start = read_header(path, max_bytes=max_bytes)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        _reject(path, "corrupt header: __metadata__ is not a string map")
    entries = _check_layout(path, header, data_start)
    keys = list(entries)
    downs = _lora_down_keys(path, keys)
    fmt = (
        "kohya"
        if all(k.startswith(("lora_unet_", "lora_te")) for k in keys)
        else ("peft" if any("lora_A" in k for k in keys) else "diffusers")
    )
    modules: dict[str, int] = {}
    for k in downs:
        comp = _component(k)
        if comp is None:
            _reject(path, f"cannot tell which model part key {k!r} adapts")
        modules[comp] = modules.get(comp, 0) + 1
    _check_made_for_sdxl(path, entries, metadata, fmt, context_dim)
    if "unet" not in modules:
        _reject(
            path,
            "text-encoder-only LoRA (no UNet weights): it would change only the prompt encoding, which "
            "carlos-reg does not sign",
        )
    max_rank = max(int(entries[k]["shape"][0]) for k in downs)
    conv = any(len(entries[k]["shape"]) == 4 for k in downs)
    if max_rank > MAX_RANK:
        _reject(path, f"rank {max_rank} is over the limit of {MAX_RANK}")
    if check_values:
        _check_values(path, entries)
    return LoraFileInfo(
        path=path,
        size=path.stat().st_size,
        n_tensors=len(entries),
        key_format=fmt,
        modules=modules,
        max_rank=max_rank,
        conv=conv,
        metadata={
            k: v
            for k, v in metadata.items()
            if k
            in ("ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha")
        },
    )


def _check_file_kind(path: Path) -> None:
    """Only an existing .safetensors file goes further; pickles are refused by name, never opened."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        _reject(
            path,
            f"pickle format ({suffix}): never unpickled (it can run code); only .safetensors is signed",
        )
    if suffix != ".safetensors":
        _reject(
            path, f"not a .safetensors file ({suffix or 'no suffix'}); only .safetensors is signed"
        )
    if not path.is_file():
        _reject(path, "file not found")


def _lora_down_keys(path: Path, keys: list[str]) -> list[str]:
    """The down-projection keys of a low-rank LoRA; any other kind of file is rejected with what it is."""
    for fragment, reason in UNSUPPORTED:
        if any(fragment in k for k in keys):
            _reject(path, reason)
    if any(k.endswith((".diff", ".diff_b")) for k in keys):
        _reject(
            path,
            "full weight differences (.diff keys), not a low-rank LoRA: diffusers cannot load it",
        )
    if any(k in ("clip_l", "clip_g", "emb_params", "string_to_param") for k in keys):
        _reject(path, "a textual-inversion embedding, not a LoRA")
    not_lora = [k for k in keys if "lora" not in k and not k.endswith(".alpha")]
    if not_lora:
        _reject(
            path,
            f"{len(not_lora)} keys are not LoRA weights (e.g. {not_lora[0]!r}): a full checkpoint or "
            "another adapter type, not a LoRA",
        )
    downs = [k for k in keys if k.endswith(DOWN_SUFFIXES)]
    if not downs:
        _reject(path, "no LoRA down/up weight pairs found")
    return downs


def _check_made_for_sdxl(
    path: Path, entries: dict, metadata: dict, fmt: str, context_dim: int
) -> None:
    """SD 1.x/2.x LoRAs give themselves away by their cross-attention width, metadata or key names."""
    keys = list(entries)
    base_version = str(
        metadata.get("ss_base_model_version", "") or metadata.get("modelspec.architecture", "")
    )
    width = _cross_attention_width(entries)
    if width is not None and width != context_dim:
        family = {SD1_CONTEXT_DIM: "SD 1.x", SD2_CONTEXT_DIM: "SD 2.x"}.get(
            width, "another base model"
        )
        _reject(
            path,
            f"made for {family}: its cross-attention takes {width}-wide text features, this base model "
            f"uses {context_dim} (an SDXL LoRA is needed)",
        )
    if base_version.startswith(
        ("sd_v1", "sd_v2", "stable-diffusion-v1", "stable-diffusion-v2")
    ) or (fmt == "kohya" and any(k.startswith("lora_te_") for k in keys)):
        _reject(
            path,
            f"made for SD 1.x/2.x (metadata {base_version or 'n/a'}; single text encoder keys "
            "lora_te_*), not SDXL",
        )
    if fmt == "kohya" and any(k.startswith("lora_unet_down_blocks_0_attentions") for k in keys):
        _reject(
            path,
            "made for SD 1.x/2.x: it adapts attention in down_blocks.0, which SDXL does not have",
        )


def _check_values(path: Path, entries: dict) -> None:
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in entries:
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    _reject(
                        path,
                        f"tensor {key!r} holds NaN or infinite values (a broken training run or export)",
                    )
                if key.endswith(".alpha"):
                    if t.numel() != 1 or not float(t.reshape(-1)[0]) > 0:
                        _reject(path, f"alpha {key!r} must be one positive number")
    except LoraRejected:
        raise
    except Exception as exc:  # safetensors' own parser disagrees with ours: refuse, explained
        _reject(path, f"unreadable safetensors data: {first_line(exc, default=type(exc).__name__)}")


def attached_modules(pipe, adapter_name: str) -> dict[str, int]:
    """How many modules of each pipeline component carry the adapter after ``load_lora_weights``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    counts = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        n = sum(
            1
            for _, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and adapter_name in getattr(m, "lora_A", {})
        )
        if n:
            counts[comp] = n
    return counts
