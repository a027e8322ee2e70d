"""Benchmark of ``carlos-reg scan``: hashing throughput against ``sha256sum``, and a rescan of unchanged files.

Two folders of real safetensors files (one kohya-named F16 tensor pair each, so the signer's
validator accepts them): ``--big`` files of ``--big-mib`` MiB for throughput, and ``--small``
small files for the rescan. Each scan runs ``carlos-reg scan --offline --json`` in its own process
against a fresh SQLite registry; the scan's own ``bytes_hashed`` and ``hashed_files`` are printed
with the wall time. ``sha256sum`` runs over the same big files, best of three; the page cache is
warm for both (every file is read once before timing).

    python bench/scan.py [--big 8] [--big-mib 64] [--small 500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crawler import stfile  # noqa: E402


def lora_bytes(n_bytes: int, seed: int) -> bytes:
    """A kohya-format LoRA of about ``n_bytes`` (one down/up pair, F16), different per seed."""
    width = max(8, n_bytes // (2 * 2 * 8))
    rank = 8
    pattern = struct.pack("<e", (seed % 97 + 1) / 1000.0) * (rank * width)
    key = "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q"
    return stfile.build(
        {
            f"{key}.lora_down.weight": ("F16", [rank, width], pattern),
            f"{key}.lora_up.weight": ("F16", [width, rank], pattern),
            f"{key}.alpha": ("F32", [], struct.pack("<f", 8.0)),
        }
    )


def scan(folder: Path, home: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARLOS_REG_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "scan", str(folder), "--offline", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return time.perf_counter() - t0, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--small", type=int, default=500)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="carlos-scan-bench-"))
    try:
        big, small = root / "big", root / "small"
        big.mkdir()
        small.mkdir()
        for i in range(args.big):
            (big / f"lora_{i}.safetensors").write_bytes(lora_bytes(args.big_mib << 20, i))
        for i in range(args.small):
            (small / f"lora_{i}.safetensors").write_bytes(lora_bytes(64 << 10, i))
        files = sorted(big.iterdir())
        total = sum(f.stat().st_size for f in files)
        subprocess.run(
            ["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True
        )  # warm the page cache
        sums = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(["sha256sum", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
            sums.append(time.perf_counter() - t0)
        t_big, doc_big = scan(big, root / "home-big")
        t_again, doc_again = scan(big, root / "home-big")
        t_small, doc_small = scan(small, root / "home-small")
        t_rescan, doc_rescan = scan(small, root / "home-small")
        mib = total / 2**20
        own = doc_big["seconds"]
        print(f"{'what':44} {'scan s':>7} {'process s':>9} {'MiB/s':>7}  detail")
        print(
            f"{'sha256sum, best of 3':44} {min(sums):7.2f} {'':>9} {mib / min(sums):7.0f}  {len(files)} files, "
            f"{mib:.0f} MiB"
        )
        print(
            f"{'scan (hash + AutoV2 + screen + register)':44} {own:7.2f} {t_big:9.2f} {mib / own:7.0f}  "
            f"{doc_big['hashed_files']} files hashed, {doc_big['bytes_hashed']} bytes"
        )
        print(
            f"{'rescan of the same files':44} {doc_again['seconds']:7.2f} {t_again:9.2f} {'':>7}  "
            f"{doc_again['hashed_files']} hashed, {doc_again['bytes_hashed']} bytes"
        )
        print(
            f"{f'first scan of {args.small} small files':44} {doc_small['seconds']:7.2f} {t_small:9.2f} {'':>7}  "
            f"{doc_small['hashed_files']} hashed"
        )
        print(
            f"{f'rescan of {args.small} unchanged files':44} {doc_rescan['seconds']:7.2f} {t_rescan:9.2f} {'':>7}  "
            f"{doc_rescan['hashed_files']} hashed, {doc_rescan['bytes_hashed']} bytes"
        )
        print(
            f"ratio scan/sha256sum throughput: {(mib / own) / (mib / min(sums)):.2f} "
            "(scan s: the command's own time; process s: with interpreter start and schema creation)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
