"""Crawler benchmark (not a test): crawl a generated mirror on loopback.

Part 1, listing: a generated N-model mirror (default 20,000; 1–3 SDXL versions each) served by
``carlos-reg mirror serve`` in its own process, crawled by ``carlos-reg crawl --no-download
--json`` in another, into a fresh SQLite registry: models/s, requests per model and the crawler's
peak RSS, for a first crawl and for a second crawl of the unchanged catalog.

Part 2, downloads: F files of S MiB each (default 8 × 64 MiB) crawled with downloads on
(streamed, SHA256-hashed, header-validated, renamed into the store), against a plain
``shutil.copyfile`` of the same bytes, measured side by side in the same run.

    python bench/crawl_mirror.py [--models 20000] [--files 8] [--file-mib 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crawler import stfile  # noqa: E402
from crawler.mirror import file_entry, model_entry, version_entry, write_catalog  # noqa: E402
from crawler.parse import SDXL_BASE_MODELS  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def generate_listing_mirror(root: Path, n: int) -> int:
    models, versions = [], 0
    for i in range(n):
        mid = 1_000 + i
        vs = []
        for j in range(1 + i % 3):
            vid = mid * 10 + j
            digest = hashlib.sha256(f"{vid}".encode()).hexdigest()
            vs.append(
                version_entry(
                    vid,
                    index=j,
                    base_model=SDXL_BASE_MODELS[(i + j) % len(SDXL_BASE_MODELS)],
                    trained_words=[f"word{i}", "style"],
                    description="<p>generated</p>" * 5,
                    files=[
                        file_entry(
                            vid * 10,
                            sha256=digest,
                            size_kb=110_000.0,
                            name=f"lora_{vid}.safetensors",
                        )
                    ],
                )
            )
        versions += len(vs)
        models.append(
            model_entry(
                mid,
                versions=vs,
                type=("LORA", "LoCon", "DoRA")[i % 3],
                tags=[f"t{i % 50}", "style"],
                creator=f"user{i % 2000}",
                description="<p>A generated model.</p>" * 10,
            )
        )
    write_catalog(root, models)
    return versions


def generate_download_mirror(root: Path, files: int, mib: int) -> list[Path]:
    models, blobs = [], {}
    for i in range(files):
        data = stfile.build(
            {"lora_unet_w.lora_down.weight": ("U8", [mib << 20], os.urandom(mib << 20))}
        )
        blobs[500 + i] = data
        models.append(
            model_entry(
                10 + i, versions=[version_entry(100 + i, files=[file_entry(500 + i, data)])]
            )
        )
    write_catalog(root, models, blobs)
    return [root / "files" / str(500 + i) for i in range(files)]


class Mirror:
    def __init__(self, root: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry", "mirror", "serve", str(root), "--port", "0"],
            env=ENV,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = ""
        while not (m := re.search(r"http://127\.0\.0\.1:\d+", seen)):
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"mirror serve failed: {seen}")
            seen += line
        self.url = m.group(0)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


# `carlos-reg crawl …` that reports its own peak RSS on stderr when it ends
CRAWL = (
    "import resource, sys\nfrom registry.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
    "    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def crawl(home: Path, url: str, *args: str) -> tuple[dict, float, float]:
    """Run a crawl in a child process; returns its JSON summary, wall seconds and peak RSS (MiB).

    The parent stays small (catalogs are generated in children): a child's peak RSS starts from
    its parent's at fork time.
    """
    env = {**ENV, "CARLOS_REG_HOME": str(home), "CIVITAI_BASE_URL": url}
    env.pop("CIVITAI_API_KEY", None)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CRAWL, "crawl", "--json", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"crawl failed: {proc.stderr}")
    rss = int(re.search(r"PEAK_RSS_KIB (\d+)", proc.stderr).group(1)) / 1024
    return json.loads(proc.stdout), wall, rss


def generate(kind: str, root: Path, *numbers: int):
    """Generate a mirror in a child process; returns what the generator returned."""
    proc = subprocess.run(
        [sys.executable, __file__, "--generate", kind, str(root), *map(str, numbers)],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    ap.add_argument("--generate", nargs="+", help=argparse.SUPPRESS)  # internal: KIND DIR NUMBERS…
    args = ap.parse_args()
    if args.generate:
        kind, root, *numbers = args.generate
        if kind == "listing":
            print(json.dumps(generate_listing_mirror(Path(root), int(numbers[0]))))
        else:
            print(
                json.dumps(
                    [str(p) for p in generate_download_mirror(Path(root), *map(int, numbers))]
                )
            )
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="carlos-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        t = time.perf_counter()
        n_versions = generate("listing", work / "listing", args.models)
        print(
            f"generated {args.models} models / {n_versions} versions in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        mirror = Mirror(work / "listing")
        try:
            first, wall1, rss = crawl(work / "home-listing", mirror.url, "--no-download")
            second, wall2, rss2 = crawl(work / "home-listing", mirror.url, "--no-download")
        finally:
            mirror.close()
        assert (
            first["versions_new"] == n_versions
            and second["versions_new"] == second["versions_updated"] == 0
        )
        for label, doc, wall in (
            ("first crawl", first, wall1),
            ("unchanged recrawl", second, wall2),
        ):
            rows.append(
                (
                    f"listing, {label}",
                    f"{doc['models_seen'] / doc['seconds']:,.0f} models/s",
                    f"{doc['requests'] / doc['models_seen']:.4f} req/model",
                    f"{doc['seconds']:.1f} s crawl ({wall:.1f} s with process start)",
                )
            )
        rows.append(
            (
                "listing, crawler peak RSS",
                f"{rss:,.0f} MiB",
                "",
                f"{args.models} models, {n_versions} versions; {rss2:,.0f} MiB on the recrawl",
            )
        )

        paths = [Path(p) for p in generate("download", work / "dl", args.files, args.file_mib)]
        total = sum(p.stat().st_size for p in paths)
        mirror = Mirror(work / "dl")
        try:
            runs = []
            for i in range(2):  # best of two fresh registries
                os.sync()
                runs.append(
                    crawl(
                        work / f"home-dl{i}",
                        mirror.url,
                        "--concurrency",
                        "4",
                        "--min-free-space",
                        "64M",
                    )[0]
                )
            dl = min(runs, key=lambda d: d["seconds"])
        finally:
            mirror.close()
        assert dl["files_verified"] == args.files and dl["bytes_downloaded"] == total
        copy_dir = work / "copy"

        def best_of_3(fn) -> float:
            times = []
            for _ in range(3):
                shutil.rmtree(copy_dir, ignore_errors=True)
                copy_dir.mkdir()
                os.sync()  # start each measurement with no dirty pages of an earlier one
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        def copy():
            for p in paths:
                shutil.copyfile(p, copy_dir / p.name)

        def copy_fsync():  # the crawler fsyncs each file before its rename: the same durability
            for p in paths:
                shutil.copyfile(p, copy_dir / p.name)
                with open(copy_dir / p.name, "rb+") as fh:
                    os.fsync(fh.fileno())

        def sha256_only():
            for p in paths:
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)

        copy_s, copy_sync_s, hash_s = best_of_3(copy), best_of_3(copy_fsync), best_of_3(sha256_only)
        mib = total / (1 << 20)
        crawl_rate, copy_rate, hash_rate = mib / dl["seconds"], mib / copy_s, mib / hash_s
        sync_rate = mib / copy_sync_s
        rows.append(
            (
                "download + SHA256 + verify",
                f"{crawl_rate:,.0f} MiB/s",
                f"ratio {crawl_rate / copy_rate:.2f}",
                f"{args.files} × {args.file_mib} MiB in {dl['seconds']:.2f} s (best of 2), "
                f"{dl['requests']} requests",
            )
        )
        rows.append(
            (
                "plain file copy",
                f"{copy_rate:,.0f} MiB/s",
                "ratio 1.00",
                f"shutil.copyfile, {copy_s:.2f} s (best of 3)",
            )
        )
        rows.append(
            (
                "file copy + fsync",
                f"{sync_rate:,.0f} MiB/s",
                f"ratio {sync_rate / copy_rate:.2f}",
                f"as durable as the crawler's files, {copy_sync_s:.2f} s (best of 3)",
            )
        )
        rows.append(
            (
                "SHA256 alone (reference)",
                f"{hash_rate:,.0f} MiB/s",
                f"ratio {hash_rate / copy_rate:.2f}",
                f"hashlib, {hash_s:.2f} s (best of 3)",
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    widths = [
        max(len(str(r[i])) for r in rows + [("what", "rate", "ratio / per model", "detail")])
        for i in range(4)
    ]
    header = ("what", "rate", "ratio / per model", "detail")
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
