"""Helpers to run ``carlos-reg serve`` as a real process on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import REPO


class Server:
    def __init__(self, *args: str, env: dict | None = None, timeout: float = 120):
        self.log = (
            Path(os.environ.get("TMPDIR", "/tmp"))
            / f"carlos-serve-{os.getpid()}-{time.monotonic_ns()}.log"
        )
        self._log = self.log.open("w+")
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry", *args, "serve", "--port", "0", *self._serve_args],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving (http://[\d.]+:\d+)/", self.log.read_text())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()}")

    _serve_args: tuple[str, ...] = ()

    @classmethod
    def start(
        cls, *global_args: str, serve_args: tuple[str, ...] = (), env: dict | None = None
    ) -> "Server":
        obj = cls.__new__(cls)
        obj._serve_args = serve_args
        obj.__init__(*global_args, env=env)
        return obj

    def get(self, path: str):
        """(status, parsed JSON or text) for a GET."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=120) as resp:
                body, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            body, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        return status, (json.loads(body) if "json" in ctype else body.decode())

    def post(self, path: str, data: bytes, content_type: str):
        req = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": content_type}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "carlosboundary7f3a"
    out = b""
    for name, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    for name, filename, data in files:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"
