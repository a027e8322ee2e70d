"""What the signer's commands share: the device choice, the one-line job messages, the profile
they sign with, and a worker run in this process with progress bars.

Imported when the CLI starts: nothing heavy at module level.
"""

from __future__ import annotations

from registry.app import App
from registry.output import say

DEVICE_HELP = "cuda, cuda:N, mps or cpu [default: cuda if available, else mps, else cpu]."


def default_device(device: str | None) -> str:
    """The device asked for, else the best one torch sees."""
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def say_line(message: str) -> None:
    say(message)  # one unwrapped, cleaned line per job: readable in logs


def registered_profile(app: App, name: str | None):
    """The profile (the default one without a name) and its registry row id, registered if new."""
    from signer.profiles import load_profile, register

    profile = load_profile(name or app.settings.default_profile, app.settings)
    with app.db.write() as s:
        row_id = register(s, profile).id
    return profile, row_id


def run_worker(
    app: App,
    *,
    device,
    job_ids=None,
    profiles=None,
    once=False,
    max_jobs=None,
    lease_seconds=None,
    total_jobs=None,
):
    """Run a worker here with progress bars; its report."""
    from signer.progress import Bars
    from signer.worker import Worker

    with Bars(total_jobs) as bars:
        worker = Worker(
            app.db,
            app.settings,
            device=default_device(device),
            profiles=profiles,
            job_ids=job_ids,
            once=once,
            max_jobs=max_jobs,
            lease_seconds=lease_seconds,
            progress=bars,
            say=say_line,
        )
        return worker.run()
