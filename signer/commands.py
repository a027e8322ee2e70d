"""The signer's built-in plugin: ``carlos-reg sign`` (``signer.sign_command``), ``carlos-reg signer
work|status`` and ``signer profiles|prompts|samples`` (``signer.profile_commands``), the
``lora_file_verified`` hook (a verified download is queued for the default profile) and the
nightly signing step.

Nothing heavy is imported at module level: ``carlos-reg --help`` must not import torch.
"""

from __future__ import annotations

import sys

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.cli_options import limit_option, seconds_option
from registry.output import emit_json, info, output_options, table
from signer.cli_support import (
    DEVICE_HELP,
    default_device,
    registered_profile,
    run_worker,
    say_line,
)
from signer.profile_commands import profiles_command, prompts_command, samples_command
from signer.sign_command import sign

_REPORTED: set[str] = set()


@click.group(name="signer")
def signer_group():
    """The signer worker, the queue and the profiles."""


signer_group.add_command(profiles_command)
signer_group.add_command(prompts_command)
signer_group.add_command(samples_command)

WORKER_POOL_SIZE = 3  # connections of one worker: main loop, heartbeat thread, one spare


@signer_group.command()
@click.option(
    "--device",
    metavar="DEV",
    help=DEVICE_HELP[:-1] + "; 'all': one worker per visible CUDA device.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Worker processes per device. With N > 1 or --device all, a launcher starts the workers, "
    "restarts crashed ones and forwards SIGTERM/Ctrl-C to them.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Exit when no job is left to claim instead of waiting for new ones.",
)
@click.option(
    "--max-jobs", type=click.IntRange(min=1), metavar="N", help="Exit after N jobs (per worker)."
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="NAME",
    help="Only jobs of this profile (repeatable) [default: every profile this machine defines].",
)
@seconds_option(
    "--lease-seconds",
    minimum=0.5,
    metavar="S",
    help="Lease length; the heartbeat renews it every S/3 seconds [default: 300].",
)
@pass_app
def work(app: App, device, workers, once, max_jobs, profiles, lease_seconds):
    """Claim and run signing jobs from the shared queue (SIGTERM/Ctrl-C release the current job).

    \b
    A worker rides out a registry database restart: it retries with backoff for up to
    $CARLOS_REG_DB_RETRY_SECONDS (default 300) and goes on. Each worker process opens at most
    $CARLOS_REG_DB_POOL (default 3) PostgreSQL connections.
    \b
    Several workers on one machine:
      carlos-reg signer work --device all              # one per CUDA device (cuda:0, cuda:1, ...)
      carlos-reg signer work --device cpu --workers 2  # two CPU workers sharing the cores
    """
    from registry.retry import retry_call
    from signer.launcher import die_with_launcher

    die_with_launcher()  # a no-op unless this worker was started by the launcher
    app.default_pool_size = WORKER_POOL_SIZE
    retry_call(
        lambda: app.db, what="opening the registry"
    )  # upgrade an older schema once, before any worker
    if device == "all" or workers > 1:
        _launch(
            app,
            device=device,
            workers=workers,
            once=once,
            max_jobs=max_jobs,
            profiles=profiles,
            lease_seconds=lease_seconds,
        )
        return
    report = run_worker(
        app,
        device=device,
        profiles=list(profiles) or None,
        once=once,
        max_jobs=max_jobs,
        lease_seconds=lease_seconds,
    )
    info(
        f"worker finished: {report.done} done, {report.failed} failed, {report.released} released"
        + (f" ({report.interrupted})" if report.interrupted else "")
    )


def _launch(app: App, *, device, workers, once, max_jobs, profiles, lease_seconds) -> None:
    from registry.settings import environment
    from signer.launcher import Launcher, plan_devices

    app.close()  # the launcher itself holds no connection
    devices = plan_devices(device or default_device(None), workers)
    args = (["--once"] if once else []) + (["--max-jobs", str(max_jobs)] if max_jobs else [])
    args += [a for p in profiles for a in ("--profile", p)]
    args += ["--lease-seconds", repr(lease_seconds)] if lease_seconds else []
    env = (
        environment()
        .with_values(CARLOS_REG_DB=app.settings.db_url, CARLOS_REG_HOME=str(app.settings.home))
        .for_subprocess()
    )
    launcher = Launcher(
        devices, args, global_args=["-v"] * min(app.settings.verbose, 2), env=env, say=say_line
    )
    info(f"launching {len(devices)} workers ({', '.join(devices)}); SIGTERM or Ctrl-C stops them")
    code = launcher.run()
    info(
        "launcher: every worker has exited"
        + ("" if code == 0 else "; some did not end cleanly (see above)")
    )
    if code:
        sys.exit(code)


@signer_group.command()
@output_options
@limit_option("Dead jobs to list.")
@pass_app
def status(app: App, as_json, limit):
    """Queue counts per profile and state, dead jobs with their reasons, base caches."""
    from signer.status import queue_status

    with app.db.read() as s:
        doc = queue_status(s, limit=limit)
    if as_json:
        emit_json(doc)
        return
    table(
        ["profile", "hash", "kind", "queued", "running", "done", "dead", "base cache"],
        [
            (
                p["name"],
                p["hash"][:12],
                kind,
                c["queued"],
                c["running"],
                c["done"],
                c["dead"],
                p["base_cache"]["state"] if kind == "base" else "",
            )
            for p in doc["profiles"]
            for kind, c in p["jobs"].items()
        ],
        title="signer queue",
    )
    if doc["running"]:
        table(
            ["job", "profile", "kind", "version", "owner", "heartbeat age s"],
            _columns(
                doc["running"],
                "job_id",
                "profile",
                "kind",
                "version_id",
                "owner",
                "heartbeat_age_s",
            ),
            title="running",
        )
    if doc["dead"]:
        table(
            ["job", "profile", "kind", "version", "name", "attempts", "reason"],
            _columns(
                doc["dead"], "job_id", "profile", "kind", "version_id", "name", "attempts", "reason"
            ),
            title="dead jobs",
        )


def _columns(rows: list[dict], *keys: str) -> list[tuple]:
    """Table rows: these keys' values of each document row, in this order."""
    return [tuple(r[k] for k in keys) for r in rows]


# ---------------------------------------------------------------- hooks


@hookimpl
def register_commands(cli):
    cli.add_command(sign)
    cli.add_command(signer_group)


@hookimpl
def lora_file_verified(app, session, version_id: int, file_id: int):
    """Queue a verified file for the default profile (no model is loaded here)."""
    from signer.errors import ProfileError
    from signer.profiles import load_profile, register
    from signer.queueing import enqueue_lora

    try:
        profile = load_profile(app.settings.default_profile, app.settings)
    except ProfileError as exc:  # never let a bad profile setting roll back the crawler's write
        if str(exc) not in _REPORTED:  # once per process, not once per file
            _REPORTED.add(str(exc))
            info(f"not queued for signing: {exc}")
        return
    enqueue_lora(session, app.queue, register(session, profile).id, version_id)


def nightly_sign(app: App, options: dict) -> dict:
    """The scheduled run's signing step: queue every verified, unsigned version for the default
    profile; with ``serve --sign-local``, drain that queue here (stopping cleanly on shutdown)."""
    import threading

    from signer.queueing import enqueue_lora, unsigned_verified_versions
    from signer.worker import Worker

    profile, pid = registered_profile(app, None)
    with app.db.write() as s:
        vids = unsigned_verified_versions(s, pid)
        queued = sum(bool(enqueue_lora(s, app.queue, pid, v)) for v in vids)
    out = {"profile": profile.name, "unsigned": len(vids), "newly_queued": queued}
    if not options.get("sign_local"):
        return out
    worker = Worker(
        app.db,
        app.settings,
        device=default_device(options.get("device")),
        profiles=[profile.name],
        once=True,
        say=say_line,
    )
    stop = options.get("stop")
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            if stop is not None and stop.is_set():
                worker.request_stop("shutdown")
                return

    threading.Thread(target=watch, daemon=True, name="nightly-sign-stop").start()
    try:
        report = worker.run()
    finally:
        done.set()
    out.update(
        signed=report.done,
        failed=report.failed,
        released=report.released,
        interrupted=report.interrupted,
    )
    return out


@hookimpl
def register_nightly_steps(register):
    register("sign", nightly_sign, 200)
