"""Progress on stderr for signing: bars (samples of the current job, jobs so far, ETA) on a terminal;
elsewhere (logs, pipes, CI) one plain line every few seconds, so a long job is never silent."""

from __future__ import annotations

import time

PLAIN_EVERY_S = 5.0


class Bars:
    def __init__(self, total_jobs: int | None = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal
        # markup=False: a description holds a LoRA name, which must not be parsed as rich markup
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.enabled,
        )
        self._jobs = self._progress.add_task("LoRAs", total=total_jobs)
        self._samples = None
        self._plain = {"name": "", "done": 0, "total": 0, "last": 0.0}

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def start_job(self, description: str, total: int) -> None:
        if self._samples is not None:
            self._progress.remove_task(self._samples)
        from registry.output import clean

        self._samples = self._progress.add_task(
            f"  {clean(description, one_line=True)[:60]} (samples)", total=total
        )
        self._plain.update(name=description, done=0, total=total, last=time.monotonic())

    def advance(self, n: int) -> None:
        if self._samples is not None:
            self._progress.advance(self._samples, n)
        if not self.enabled:
            p = self._plain
            p["done"] += n
            if time.monotonic() - p["last"] >= PLAIN_EVERY_S and p["done"] < p["total"]:
                from registry.output import say

                say(f"  {p['name']}: {p['done']}/{p['total']} samples")
                p["last"] = time.monotonic()

    def job_finished(self) -> None:
        self._progress.advance(self._jobs, 1)
