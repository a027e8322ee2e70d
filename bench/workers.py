"""Worker scaling: signing jobs per minute with 1 and 2 ``signer work`` processes (tiny profile).

    PYTHONPATH=. .venv/bin/python bench/workers.py [--loras 24] [--backend sqlite,postgres] [--seeds 4]

A registry gets ``--loras`` distinct tiny LoRAs queued for a tiny-derived profile (``--seeds``
seeds per prompt, so each job is long enough to measure); the base branch is computed first, then
N worker processes drain the queue. Reported: wall time, jobs per minute, and the speed-up of 2
workers over 1 on this machine (on 2 cores, two workers compete for the same cores: the ratio
shows what the queue costs, not what a second GPU would give).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def prepare(url: str, home: Path, loras: int, seeds: int) -> dict:
    from registry.db import Database
    from registry.migrate import ensure_schema
    from registry.queue import JobQueue
    from registry.settings import Settings
    from signer import lorafiles as lf
    from signer.profiles import load_profile, register
    from signer.queueing import enqueue_lora
    from tests.signer_support import add_local_version

    (home / "profiles.toml").write_text(
        f'[profiles.bench]\nextends = "tiny"\nseeds = {{ count = {seeds} }}\n'
    )
    settings = Settings.load(home=home, db=url)
    db = Database(url)
    ensure_schema(db)
    profile = load_profile("bench", settings)
    with db.write() as s:
        pid = register(s, profile).id
        for i in range(1, loras + 1):
            add_local_version(
                s, settings.artifacts, i, lf.write_kohya_lora(home / f"l{i}.safetensors", seed=i)
            )
            enqueue_lora(s, JobQueue(db), pid, i)
    db.dispose()
    return {"CARLOS_REG_HOME": str(home), "CARLOS_REG_DB": url, "CARLOS_REG_PROFILE": "bench"}


def drain(env: dict, workers: int, extra: list[str] | None = None) -> float:
    """``signer work --workers N``: the launcher splits the cores between its CPU workers."""
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "registry",
            "signer",
            "work",
            "--once",
            "--device",
            "cpu",
            "--workers",
            str(workers),
            *(extra or []),
        ],
        env=full,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"signer work exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def run(backend: str, loras: int, seeds: int, models: Path) -> list[dict]:
    out = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix=f"carlos-workers-{backend}-") as tmp:
            home = Path(tmp)
            pg = None
            if backend == "sqlite":
                url = f"sqlite:///{home / 'registry.db'}"
            else:
                from tests.pg import PgServer

                pg = PgServer()
                url = pg.create_database()
            try:
                env = {**prepare(url, home, loras, seeds), "CARLOS_REG_MODELS": str(models)}
                base_s = drain(
                    env, 1, ["--max-jobs", "1"]
                )  # the base branch (and model loading) first
                wall = drain(env, workers)
                out.append(
                    {
                        "backend": backend,
                        "workers": workers,
                        "jobs": loras,
                        "seconds": round(wall, 1),
                        "jobs_per_min": round(60 * loras / wall, 1),
                        "base_job_s": round(base_s, 1),
                    }
                )
                print(json.dumps(out[-1]), flush=True)
            finally:
                if pg is not None:
                    pg.close()
    out.append(
        {
            "backend": backend,
            "speedup_2_vs_1": round(out[1]["jobs_per_min"] / out[0]["jobs_per_min"], 2),
        }
    )
    print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loras", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--backend", default="sqlite,postgres")
    args = ap.parse_args()
    from signer.tiny import ensure_tiny_sdxl

    models = Path(tempfile.mkdtemp(prefix="carlos-models-"))
    ensure_tiny_sdxl(models)
    for backend in args.backend.split(","):
        run(backend, args.loras, args.seeds, models)


if __name__ == "__main__":
    main()
