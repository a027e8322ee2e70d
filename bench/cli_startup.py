"""Wall time of everyday CLI commands, each in a fresh process (median of N runs).

    python bench/cli_startup.py                      # builds a demo registry in a temp dir first (~40 s)
    python bench/cli_startup.py --demo-dir .demo     # reuse the registry `make demo` left behind
    python bench/cli_startup.py --runs 9

Commands: `--help`, `--version`, `plugins`, `loras --limit 5`, `show REF`, and a `search` whose query
vector is already cached (the first search of a text encodes it; later ones read it from the
registry). The floor is `python -c pass` with the same interpreter: what any Python CLI pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall(argv: list[str], env: dict, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, help="a directory `carlos-reg demo --dir` made")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    demo = args.demo_dir
    if demo is None:
        demo = Path(tempfile.mkdtemp()) / "demo"
        print(f"building a demo registry in {demo} ...", file=sys.stderr)
        subprocess.run(
            [py, "-m", "registry", "demo", "--dir", str(demo)],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    env.update(
        CARLOS_REG_HOME=str(demo / "home"),
        CARLOS_REG_PROFILE="tiny",
        CARLOS_REG_MODELS=str(demo / "models"),
    )
    cli = [py, "-m", "registry"]
    query = [*cli, "search", "ink wash painting", "-k", "5", "--no-filter"]
    subprocess.run(
        query, env=env, cwd=REPO, check=True, capture_output=True
    )  # caches the query vector
    cases = [
        ("python -c pass (floor)", [py, "-c", "pass"]),
        ("--help", [*cli, "--help"]),
        ("--version", [*cli, "--version"]),
        ("plugins", [*cli, "plugins"]),
        ("loras --limit 5", [*cli, "loras", "--limit", "5"]),
        ("show 2101", [*cli, "show", "2101"]),
        ("search (cached query)", query),
    ]
    print(f"{'command':<26} {'median s':>9} {'min s':>7}   ({args.runs} runs each, fresh process)")
    for label, argv in cases:
        median, best = wall(argv, env, args.runs)
        print(f"{label:<26} {median:>9.3f} {best:>7.3f}")


if __name__ == "__main__":
    main()
