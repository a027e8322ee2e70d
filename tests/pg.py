"""A throwaway PostgreSQL server for tests and benchmarks.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user (in a
temp dir it owns); as any other user it runs as that user. Trust auth on 127.0.0.1, a free port.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def find_bindir() -> Path | None:
    env = os.environ.get("CARLOS_REG_PG_BINDIR")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "pg_ctl").exists():
            return Path(c)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise RuntimeError(
                "PostgreSQL binaries not found (install postgresql or set CARLOS_REG_PG_BINDIR)"
            )
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="carlos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            [
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "carlos",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        self.start()

    def _cmd(self, args: list[str]) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _run(self, args: list[str]) -> None:
        proc = subprocess.run(self._cmd(args), capture_output=True, text=True, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop("fast")
        time.sleep(down_seconds)
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://carlos@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=carlos dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=carlos dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
