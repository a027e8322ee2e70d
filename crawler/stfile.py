"""The safetensors container format, read and written without torch.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object), then the
tensor data. ``validate_header`` checks what a loader relies on: the length is sane and within the
file, the JSON is an object without duplicate keys, ``__metadata__`` maps strings to strings,
each tensor has a known dtype, a shape of non-negative ints and ``data_offsets`` whose span equals
dtype size × element count, and the offsets tile the data buffer exactly (no overlap, no hole, no
trailing bytes; so a file cannot also be another format). Tensor *names* are not judged here:
whether the keys form an SDXL LoRA is the signer's check.

``build`` writes a valid file from raw tensor bytes (tests, mirrors and demos use it).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # the safetensors reference limit
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class InvalidSafetensors(ValueError):
    """The bytes are not a well-formed safetensors file."""


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise InvalidSafetensors(f"duplicate key {key[:80]!r} in the header")
        out[key] = value
    return out


def _looks_like_pickle(prefix: bytes) -> bool:
    """torch.save output: a zip archive, or a raw pickle (PROTO opcode, protocol 2 to 5)."""
    return prefix[:4] == b"PK\x03\x04" or (
        prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


PICKLE_MESSAGE = (
    "the file is a pickle/zip archive (torch.save) named .safetensors; it was not unpickled"
)


def _split(prefix: bytes, file_size: int) -> tuple[dict | None, dict, int]:
    """``(metadata, tensors, header_length)`` of a validated header (see ``parse_header``).

    Pickle/zip magic is judged only when the bytes are not a plausible safetensors header: the
    first bytes are the header *length*, and a valid length can start with 0x80 or "PK".
    """
    n = _header_length(prefix, file_size)
    header = _decode_header(prefix, n)
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise InvalidSafetensors("__metadata__ is not a map of strings to strings")
    if not header:
        raise InvalidSafetensors("no tensors")
    _check_tiling(
        sorted(_tensor_span(name, entry) for name, entry in header.items()), file_size - 8 - n
    )
    return meta, header, n


def _header_length(prefix: bytes, file_size: int) -> int:
    if file_size < 8 or len(prefix) < 8:
        raise InvalidSafetensors(
            PICKLE_MESSAGE
            if _looks_like_pickle(prefix)
            else "shorter than the 8-byte header length"
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > file_size:
        if _looks_like_pickle(prefix):
            raise InvalidSafetensors(PICKLE_MESSAGE)
        if 8 + n > file_size and 2 <= n <= MAX_HEADER_BYTES:
            raise InvalidSafetensors(
                f"header length {n} runs past the end of the file (truncated?)"
            )
        raise InvalidSafetensors(f"header length {n} out of range")
    if len(prefix) < 8 + n:
        raise ValueError("prefix does not hold the whole header")
    return n


def _decode_header(prefix: bytes, n: int) -> dict:
    """The header's JSON object: UTF-8, no duplicate keys, no hostile nesting."""
    raw = prefix[8 : 8 + n]
    if not raw.lstrip(b" ").startswith(b"{"):
        raise InvalidSafetensors(
            PICKLE_MESSAGE if _looks_like_pickle(prefix) else "header is not a JSON object"
        )
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise InvalidSafetensors("header is not UTF-8") from None
    except RecursionError:  # hostile nesting: malformed input, not a crash
        raise InvalidSafetensors("header is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, InvalidSafetensors):
            raise
        raise InvalidSafetensors(
            f"header is not valid JSON ({exc.args[0][:80] if exc.args else ''})"
        ) from None
    if not isinstance(header, dict):
        raise InvalidSafetensors("header is not a JSON object")
    return header


def _tensor_span(name: str, entry: object) -> tuple[int, int]:
    """A tensor entry's ``(begin, end)`` in the data area, once its dtype, shape and size agree."""
    label = repr(name[:80])
    if not isinstance(entry, dict):
        raise InvalidSafetensors(f"tensor {label}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        shown = (
            dtype[:20] if isinstance(dtype, str) else type(dtype).__name__
        )  # never repr a nested value
        raise InvalidSafetensors(f"tensor {label}: unknown dtype {shown!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise InvalidSafetensors(f"tensor {label}: bad shape")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise InvalidSafetensors(f"tensor {label}: bad data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise InvalidSafetensors(f"tensor {label}: bad data_offsets")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise InvalidSafetensors(
            f"tensor {label}: {end - begin} bytes for shape {shape} of {dtype}"
        )
    return begin, end


def _check_tiling(spans: list[tuple[int, int]], data_len: int) -> None:
    """Sorted tensor spans must tile the data area exactly: no overlap, no hole, nothing after."""
    if spans[-1][1] > data_len:
        raise InvalidSafetensors(
            f"truncated: the header describes {spans[-1][1]} bytes of tensor data but the file "
            f"has only {data_len} (an interrupted download?)"
        )
    position = 0
    for begin, end in spans:
        if begin != position:
            raise InvalidSafetensors(
                "tensor data overlaps" if begin < position else "hole in the tensor data"
            )
        position = end
    if position != data_len:
        raise InvalidSafetensors(f"{data_len - position} bytes after the last tensor")


def parse_header(prefix: bytes, file_size: int) -> dict:
    """Validate the header of a file of ``file_size`` bytes starting with ``prefix``.

    ``prefix`` must hold at least the 8-byte length and the header. Returns the tensor entries
    (``__metadata__`` excluded).
    """
    return _split(prefix, file_size)[1]


def read_header(path: str | Path) -> tuple[dict, int]:
    """The one header check the crawler and the signer share: ``(header, data_start)`` of a file,
    ``__metadata__`` included; ``InvalidSafetensors`` says why a file is refused. Reads at most
    8 + 100 MB."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) == 8:
            (n,) = struct.unpack("<Q", first)
            if 2 <= n <= MAX_HEADER_BYTES and 8 + n <= size:
                first += fh.read(n)
    meta, tensors, n = _split(first, size)
    return ({"__metadata__": meta, **tensors} if meta is not None else tensors), 8 + n


def validate_file(path: str | Path) -> dict:
    """Validate a file's header (reads at most 8 + 100 MB); returns the tensor entries."""
    header, _ = read_header(path)
    header.pop("__metadata__", None)
    return header


def build(
    tensors: dict[str, tuple[str, list[int], bytes]], metadata: dict[str, str] | None = None
) -> bytes:
    """A safetensors file from ``{name: (dtype, shape, raw little-endian bytes)}``."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        if len(data) != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(
                f"tensor {name!r}: {len(data)} bytes do not fit shape {shape} of {dtype}"
            )
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)
