"""Scale benchmark: a registry of N signed LoRAs (default 100,000) behind the HTTP API.

    PYTHONPATH=. .venv/bin/python bench/scale.py [--n 100000] [--backend sqlite,postgres] [--clients 8]

For each backend it builds the registry (synthetic signatures drawn around the published CARLoS
database's Directions, Strength/Consistency resampled from its joint distribution, generated
metadata; a Gaussian stand-in when the file is absent), starts ``carlos-reg serve`` and measures:
search latency p50/p99 with filters under concurrent clients (query vectors already cached, as in
a warm service — encoding a new query is measured by bench/search.py), ``similar``, the API's
LoRA listing, the full copyright report (CLI, cold process, and API), the first search of a fresh
process (ranking matrix from the database vs from its cache file), database size and the API
process's memory. PostgreSQL runs in a throwaway cluster (tests/pg.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REFERENCE = REPO.parent / "shared" / "reference" / "carlos_metrics_database.parquet"
BASE_MODELS = [
    ("SDXL 1.0", 0.55),
    ("Pony", 0.2),
    ("Illustrious", 0.15),
    ("NoobAI", 0.05),
    ("SDXL Lightning", 0.05),
]
WORDS = (
    "ink wash watercolor neon cyber pastel anime film grain portrait armor dragon forest city retro pixel "
    "oil sketch gothic baroque glow chibi comic lego vapor cinematic soft moody gold"
).split()
QUERIES = [
    "watercolor painting",
    "pencil sketch",
    "neon city",
    "anime style",
    "film photograph",
    "pixel art",
    "oil painting",
    "dark and moody",
    "golden armor",
    "vibrant colors",
    "coloring book",
    "3d render",
]


def reference_distribution(rng):
    if REFERENCE.is_file():
        import pyarrow.parquet as pq

        t = pq.read_table(REFERENCE).to_pydict()
        return (
            np.asarray(t["direction"], np.float32),
            np.asarray(t["strength"], np.float32),
            np.asarray(t["consistency"], np.float32),
            "published CARLoS database (740 rows)",
        )
    d = rng.normal(size=(740, 512)).astype(np.float32) * 0.25
    return (
        d,
        rng.gamma(9, 0.65, 740).astype(np.float32),
        rng.gamma(2, 0.05, 740).astype(np.float32),
        "Gaussian stand-in",
    )


def build(url: str, n: int, seed: int = 0) -> dict:
    import sqlalchemy as sa

    from registry.db import Database
    from registry.importer import IMPORTED_PROFILE_SETTINGS
    from registry.migrate import ensure_schema
    from registry.models import ChangeCounter, Model, Signature, VectorCache, Version, utcnow
    from registry.profiles import IMPORTED_PROFILE_NAME, get_or_create_profile
    from registry.vectors import to_blob

    rng = np.random.default_rng(seed)
    dirs, strength, consistency, source = reference_distribution(rng)
    db = Database(url)
    ensure_schema(db)
    t0 = time.perf_counter()
    with db.write() as s:
        pid = get_or_create_profile(s, IMPORTED_PROFILE_NAME, IMPORTED_PROFILE_SETTINGS).id
    noise = float(np.std(dirs)) * 0.35
    names = np.array(WORDS)
    bm_names = [b for b, _ in BASE_MODELS]
    bm_p = np.array([p for _, p in BASE_MODELS])
    now = utcnow()
    chunk = 5000
    for start in range(0, n, chunk):
        ids = np.arange(start + 1, min(n, start + chunk) + 1)
        pick = rng.integers(0, len(dirs), size=ids.size)
        vecs = dirs[pick] * rng.uniform(0.8, 1.2, (ids.size, 1)).astype(np.float32) + rng.normal(
            scale=noise, size=(ids.size, dirs.shape[1])
        ).astype(np.float32)
        s_val = np.clip(strength[pick] * rng.uniform(0.95, 1.05, ids.size), 0.01, None)
        c_val = np.clip(consistency[pick] * rng.uniform(0.9, 1.1, ids.size), 0.0, 1.0)
        bms = rng.choice(bm_names, size=ids.size, p=bm_p)
        models = [
            dict(
                id=int(v),
                name=" ".join(rng.choice(names, 3)).title(),
                type="LORA",
                nsfw=bool(rng.random() < 0.2),
                nsfw_level=int(rng.choice([1, 2, 4, 8, 16])),
                source="bench",
                first_seen_at=now,
            )
            for v in ids
        ]
        versions = [
            dict(
                id=int(v),
                model_id=int(v),
                name="v1.0",
                base_model=str(b),
                trained_words=[str(rng.choice(names))],
                source="bench",
                first_seen_at=now,
            )
            for v, b in zip(ids, bms)
        ]
        sigs = [
            dict(
                version_id=int(v),
                profile_id=pid,
                dim=int(vecs.shape[1]),
                direction=to_blob(vec),
                strength=float(a),
                consistency=float(b),
                n_samples=4480,
                valid=True,
                flags=[],
                source="imported",
                seq=int(v),
                created_at=now,
            )
            for v, vec, a, b in zip(ids, vecs, s_val, c_val)
        ]
        with db.write() as s:
            s.execute(sa.insert(Model), models)
            s.execute(sa.insert(Version), versions)
            s.execute(sa.insert(Signature), sigs)
    with db.write() as s:
        s.execute(sa.update(ChangeCounter).where(ChangeCounter.name == "signature").values(value=n))
    build_s = time.perf_counter() - t0
    # Query vectors as a warm service has them cached (shaped like Directions).
    from registry.app import App
    from registry.models import SignerProfile
    from registry.settings import Settings
    from signer.query_encoder import QueryEncoder

    app = App(Settings.load(db=url))
    with db.read() as s:
        row = s.get(SignerProfile, pid)
    enc = QueryEncoder(app, row)
    with db.write() as s:
        for q in QUERIES:
            vec = dirs[rng.integers(0, len(dirs), 3)].mean(axis=0)
            s.add(
                VectorCache(
                    namespace="query",
                    key=enc.text_key(q),
                    dim=vec.shape[0],
                    data=to_blob(vec),
                    created_at=now,
                )
            )
    db.dispose()
    return {"n": n, "build_s": round(build_s, 1), "source": source}


def db_size(url: str, sqlite_path: Path | None) -> int:
    if sqlite_path is not None:
        return sum(p.stat().st_size for p in sqlite_path.parent.glob(sqlite_path.name + "*"))
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as c:
        return c.execute("SELECT pg_database_size(current_database())").fetchone()[0]


class Serve:
    def __init__(self, url: str, home: Path):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "CARLOS_REG_HOME": str(home),
            "CARLOS_REG_DB": url,
            "CARLOS_REG_LOAD_PLUGINS": "serve,search,reports,listing",
        }
        self.log = open(home / "serve.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry", "serve", "--port", "0", "--schedule", "off"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        for _ in range(600):
            text = Path(self.log.name).read_text()
            if "serving http://" in text:
                hostport = text.split("serving http://", 1)[1].split("/", 1)[0]
                self.host, self.port = hostport.split(":")
                return
            time.sleep(0.1)
        raise RuntimeError(Path(self.log.name).read_text())

    def get(self, path: str, conn=None) -> tuple[int, bytes, float]:
        c = conn or http.client.HTTPConnection(self.host, int(self.port), timeout=600)
        t0 = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - t0

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def load(server: Serve, paths: list[str], clients: int, per_client: int) -> dict:
    lat: list[float] = []
    errors = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(server.host, int(server.port), timeout=600)
        for j in range(per_client):
            status, body, dt = server.get(paths[(i * per_client + j) % len(paths)], conn)
            with lock:
                (lat.append(dt) if status == 200 else errors.append(body[:200]))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    arr = np.array(lat) * 1e3
    return {
        "requests": len(lat),
        "errors": len(errors),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "rps": round(len(lat) / wall, 1),
    }


def run_backend(
    name: str, url: str, n: int, clients: int, per_client: int, sqlite_path: Path | None, home: Path
) -> dict:
    out = {"backend": name, **build(url, n)}
    out["db_mib"] = round(db_size(url, sqlite_path) / 2**20, 1)
    server = Serve(url, home)
    try:
        q = "&".join(["max_strength=9.8", "min_consistency=0.041", "k=10"])
        status, body, first = server.get(f"/api/search?q={urllib.parse.quote(QUERIES[0])}&{q}")
        assert status == 200, body[:500]
        out["first_search_from_db_s"] = round(first, 2)
        search = [f"/api/search?q={urllib.parse.quote(t)}&{q}" for t in QUERIES]
        filtered = [p + "&base_model=SDXL%201.0&nsfw=false" for p in search]
        out["search_1_client"] = load(server, search, 1, per_client)
        out["search"] = load(server, search, clients, per_client)
        out["search_base_model_nsfw"] = load(server, filtered, clients, per_client)
        rng = np.random.default_rng(1)
        out["similar"] = load(
            server,
            [f"/api/similar/{v}?k=10" for v in rng.integers(1, n + 1, 50)],
            clients,
            max(1, per_client // 2),
        )
        out["listing"] = load(
            server,
            [f"/api/loras?limit=50&offset={o}&base_model=Pony" for o in (0, 1000, 5000)],
            clients,
            max(1, per_client // 4),
        )
        status, body, report = server.get("/api/report/copyright?format=json")
        assert status == 200, body[:300]
        out["report_api_s"] = round(report, 1)
        out["api_rss_mib"] = round(server.rss_mib(), 0)
    finally:
        server.stop()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CARLOS_REG_HOME": str(home),
        "CARLOS_REG_DB": url,
    }
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "registry",
            "report",
            "copyright",
            "--format",
            "json",
            "--out",
            str(home / "report.json"),
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    out["report_cli_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()  # a fresh process: the ranking matrix comes from its cache file
    subprocess.run(
        [sys.executable, "-m", "registry", "search", QUERIES[0], "--json"],
        env=env,
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    out["cli_search_cached_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--backend", default="sqlite,postgres")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=40, help="per client, per measurement")
    args = ap.parse_args()
    results = []
    for backend in args.backend.split(","):
        with tempfile.TemporaryDirectory(prefix=f"carlos-scale-{backend}-") as tmp:
            home = Path(tmp)
            if backend == "sqlite":
                path = home / "registry.db"
                results.append(
                    run_backend(
                        backend,
                        f"sqlite:///{path}",
                        args.n,
                        args.clients,
                        args.requests,
                        path,
                        home,
                    )
                )
            else:
                from tests.pg import PgServer

                pg = PgServer()
                try:
                    results.append(
                        run_backend(
                            backend,
                            pg.create_database(),
                            args.n,
                            args.clients,
                            args.requests,
                            None,
                            home,
                        )
                    )
                finally:
                    pg.close()
        print(json.dumps(results[-1], indent=1), flush=True)


if __name__ == "__main__":
    main()
