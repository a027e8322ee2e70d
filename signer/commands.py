"""The signer's built-in plugin: ``carlos-reg sign``, ``carlos-reg signer work|status|profiles``,
and the ``lora_file_verified`` hook (a verified download is queued for the default profile).

Nothing heavy is imported at module level: ``carlos-reg --help`` must not import torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.output import emit_json, info, output_options, say, table
from registry.settings import PROFILE_HELP
from registry.states import FileState, JobState

_REPORTED: set[str] = set()
DEVICE_HELP = "cuda, cuda:N, mps or cpu [default: cuda if available, else mps, else cpu]."


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _say(message: str) -> None:
    say(message)  # one unwrapped, cleaned line per job: readable in logs


def _profile(app: App, name: str | None):
    from signer.profiles import load_profile, register

    profile = load_profile(name or app.settings.default_profile, app.settings)
    with app.db.write() as s:
        row_id = register(s, profile).id
    return profile, row_id


def _run_worker(
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
    from signer.progress import Bars
    from signer.worker import Worker

    with Bars(total_jobs) as bars:
        worker = Worker(
            app.db,
            app.settings,
            device=_device(device),
            profiles=profiles,
            job_ids=job_ids,
            once=once,
            max_jobs=max_jobs,
            lease_seconds=lease_seconds,
            progress=bars,
            say=_say,
        )
        return worker.run()


# ---------------------------------------------------------------- sign


@click.command()
@click.argument("targets", nargs=-1)
@click.option(
    "--all", "all_", is_flag=True, help="Every version with a verified file and no signature yet."
)
@click.option("--profile", metavar="NAME", help=PROFILE_HELP)
@click.option("--device", metavar="DEV", help=DEVICE_HELP)
@click.option(
    "--trigger",
    "triggers",
    multiple=True,
    metavar="WORD",
    help="Trigger word for local files (repeatable); appended to the LoRA-branch prompts.",
)
@output_options
@pass_app
def sign(app: App, targets, all_, profile, device, triggers, as_json):
    """Sign LoRAs now, in this process: REFs, local .safetensors files or folders of them.

    \b
    Each TARGET that exists on disk is a file or a folder of files (local LoRAs get negative
    version ids, REF local:N, and are copied into the artifact store); anything else is a REF. Bad files
    (pickle, LoHa, SD1.5, truncated, ...) are reported with their reason; the rest are signed.
    Exits 1 when any target could not be signed validly.
    """
    from registry.errors import UsageError

    if not targets and not all_:
        raise UsageError("give REFs, .safetensors files or folders, or --all")
    from signer import store

    profile_obj, pid = _profile(app, profile)
    from signer.weights import check_weights

    check_weights(profile_obj)  # before anything is queued or torch is imported
    files, skipped = store.collect_paths([Path(t) for t in targets if os.path.exists(t)])
    for p in skipped:
        info(f"skipped {p.name}: not a LoRA file suffix (.safetensors)")
    refs = [t for t in targets if not os.path.exists(t)]
    with app.db.write() as s:
        inputs, entries = _sign_inputs(app, s, files, refs, all_, pid, triggers)
        wanted, jobs, job_ids, retry = _queue_inputs(app, s, pid, inputs, entries)
    todo = [j for j in jobs.values() if j.state != JobState.DONE or j.id in retry]
    if todo:
        info(
            f"signing {len(todo)} LoRA(s) with profile {profile_obj.name!r} ({profile_obj.hash[:12]}) on "
            f"{_device(device)}"
            + (
                " — tiny random-weight models: mechanics only, meaningless rankings"
                if profile_obj.is_tiny
                else ""
            )
        )
        # --all drains the profile's queue (no id list: 100,000 ids would exceed SQL parameter limits)
        report = _run_worker(
            app,
            device=device,
            job_ids=None if all_ else job_ids,
            once=all_,
            profiles=[profile_obj.name],
            total_jobs=len(todo),
        )
        if report.interrupted:
            info(f"interrupted ({report.interrupted}); unfinished jobs stay queued")
    results = _sign_results(app, pid, inputs, wanted)
    bad = sum(r["outcome"] not in ("signed", "reused", "already signed") for r in results)
    if as_json:
        emit_json(
            {
                "profile": profile_obj.name,
                "profile_hash": profile_obj.hash,
                "results": results,
                "signed": len(results) - bad,
                "not_signed": bad,
            }
        )
    else:
        table(
            ["input", "version", "outcome", "strength", "consistency", "samples", "flags / reason"],
            [
                (
                    Path(r["input"]).name,
                    r["version_id"],
                    r["outcome"],
                    r.get("strength"),
                    r.get("consistency"),
                    r.get("n_samples"),
                    r.get("reason") or ", ".join(r.get("flags") or []),
                )
                for r in results
            ],
        )
        info(f"{len(results) - bad} signed, {bad} not signed (reasons above)")
    if bad:
        sys.exit(1)


def _sign_inputs(
    app: App, s, files: list[Path], refs: list[str], all_: bool, pid: int, triggers
) -> tuple[list[dict], list]:
    """What ``sign`` was asked for: local files (registered here), REFs, and with --all every
    verified unsigned version; each with the reason it cannot be signed, if any."""
    import sqlalchemy as sa

    from registry.models import File, Signature
    from registry.refs import resolve_ref
    from signer import store

    inputs: list[dict] = []
    entries = store.register_local_files(
        s, app.settings.artifacts, files, trigger_words=list(triggers) if triggers else None
    )
    for entry in entries:
        inputs.append(
            {
                "input": str(entry.path),
                "version_id": entry.version_id,
                "unsupported": entry.reason if entry.state != FileState.VERIFIED else None,
            }
        )
    for ref in refs:
        inputs.append({"input": ref, "version_id": resolve_ref(s, ref), "unsupported": None})
    if all_:
        signed = sa.select(Signature.version_id).where(Signature.profile_id == pid)
        vids = s.execute(
            sa.select(sa.distinct(File.version_id)).where(
                File.state == FileState.VERIFIED,
                File.local_path.is_not(None),
                File.version_id.not_in(signed),
            )
        ).scalars()
        known = {i["version_id"] for i in inputs}
        inputs += [
            {"input": str(v), "version_id": v, "unsupported": None}
            for v in sorted(vids)
            if v not in known
        ]
    return inputs, entries


def _queue_inputs(app: App, s, pid: int, inputs: list[dict], entries: list):
    """Queue the signable inputs; returns (version ids, their jobs, the job ids to run, the ids re-queued)."""
    from signer import store

    wanted = list(dict.fromkeys(i["version_id"] for i in inputs if not i["unsupported"]))
    for vid in wanted:
        store.enqueue_lora(s, app.queue, pid, vid)
    jobs = store.find_jobs(s, pid, wanted)
    base = store.base_job(s, pid)
    # Asked for explicitly: dead jobs (and a dead base) get a fresh try; new trigger words, a new signature.
    retry = [j.id for j in jobs.values() if j.state == JobState.DEAD] + (
        [base.id] if base and base.state == JobState.DEAD else []
    )
    if retry:
        app.queue.requeue(s, job_ids=retry)
    resign = [jobs[e.version_id].id for e in entries if e.triggers_changed and e.version_id in jobs]
    if resign:
        app.queue.requeue(s, job_ids=resign, state=JobState.DONE)
        retry += resign
    job_ids = [j.id for j in jobs.values()] + ([base.id] if base else [])
    return wanted, jobs, job_ids, retry


def _sign_results(app: App, pid: int, inputs: list[dict], wanted: list[int]) -> list[dict]:
    """One row per input: its outcome (signed, reused, already signed, invalid, failed, ...) and numbers."""
    import sqlalchemy as sa

    from registry.models import Signature, Version
    from signer import store

    with app.db.read() as s:
        jobs = store.find_jobs(s, pid, wanted)
        sigs = {
            r.version_id: r
            for r in s.execute(
                sa.select(Signature).where(
                    Signature.profile_id == pid, Signature.version_id.in_(wanted)
                )
            ).scalars()
        }
        names = dict(
            s.execute(
                sa.select(Version.id, Version.name).where(
                    Version.id.in_([i["version_id"] for i in inputs])
                )
            ).all()
        )
    results = []
    for i in inputs:
        vid = i["version_id"]
        row = {"input": i["input"], "version_id": vid, "name": names.get(vid)}
        row.update(_outcome(i, jobs.get(vid), sigs.get(vid)))
        results.append(row)
    return results


def _outcome(item: dict, job, sig) -> dict:
    if item["unsupported"]:
        return {"outcome": "unsupported", "reason": item["unsupported"]}
    numbers = (
        {}
        if sig is None
        else {
            "strength": sig.strength,
            "consistency": sig.consistency,
            "n_samples": sig.n_samples,
            "flags": list(sig.flags or []),
            "valid": sig.valid,
        }
    )
    if job is None and sig is not None:  # the same file signed before, or a signature imported
        reused = sig.source == "reused"
        reason = (
            f"signature of version {(sig.estimates or {}).get('reused_from')} (same file)"
            if reused
            else f"signature {sig.source} earlier"
        )
        return {"outcome": "reused" if reused else "already signed", **numbers, "reason": reason}
    if job is not None and job.state == JobState.DONE and sig is not None:
        return {"outcome": "signed" if sig.valid else "invalid", **numbers}
    return {
        "outcome": "failed"
        if job is not None and job.state == JobState.DEAD
        else (job.state if job else "?"),
        "reason": job.last_error if job is not None else None,
    }


@click.group(name="signer")
def signer_group():
    """The signer worker, the queue and the profiles."""


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
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0.5),
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
    report = _run_worker(
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
    devices = plan_devices(device or _device(None), workers)
    args = (["--once"] if once else []) + (["--max-jobs", str(max_jobs)] if max_jobs else [])
    args += [a for p in profiles for a in ("--profile", p)]
    args += ["--lease-seconds", repr(lease_seconds)] if lease_seconds else []
    env = (
        environment()
        .with_values(CARLOS_REG_DB=app.settings.db_url, CARLOS_REG_HOME=str(app.settings.home))
        .for_subprocess()
    )
    launcher = Launcher(
        devices, args, global_args=["-v"] * min(app.settings.verbose, 2), env=env, say=_say
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
@click.option(
    "--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Dead jobs to list."
)
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
            [
                (
                    r["job_id"],
                    r["profile"],
                    r["kind"],
                    r["version_id"],
                    r["owner"],
                    r["heartbeat_age_s"],
                )
                for r in doc["running"]
            ],
            title="running",
        )
    if doc["dead"]:
        table(
            ["job", "profile", "kind", "version", "name", "attempts", "reason"],
            [
                (
                    d["job_id"],
                    d["profile"],
                    d["kind"],
                    d["version_id"],
                    d["name"],
                    d["attempts"],
                    d["reason"],
                )
                for d in doc["dead"]
            ],
            title="dead jobs",
        )


@signer_group.command(name="profiles")
@output_options
@pass_app
def profiles_command(app: App, as_json):
    """Signer profiles this machine defines (built-in and profiles.toml) and their hashes."""
    import sqlalchemy as sa

    from registry.models import Signature, SignerProfile
    from signer.errors import ProfileError
    from signer.profiles import available_profiles, load_profile, profiles_file

    rows = []
    for name in available_profiles(app.settings):
        try:
            rows.append(load_profile(name, app.settings).describe())
        except ProfileError as exc:
            rows.append({"name": name, "error": str(exc)})
    # profiles the registry holds signatures of, defined here or not (e.g. the imported carlos-published)
    with app.db.read() as s:
        counts = dict(
            s.execute(
                sa.select(Signature.profile_id, sa.func.count()).group_by(Signature.profile_id)
            ).all()
        )
        stored = (
            s.execute(sa.select(SignerProfile).where(SignerProfile.id.in_(list(counts))))
            .scalars()
            .all()
        )
        stored = [(p.name, p.hash, counts[p.id], dict(p.settings or {})) for p in stored]
    by_hash = {r["hash"]: r for r in rows if "hash" in r}
    for r in rows:
        r["signatures"] = 0
    for name, digest, n, settings in stored:
        if digest in by_hash:
            by_hash[digest]["signatures"] = n
        else:
            rows.append(
                {
                    "name": name,
                    "hash": digest,
                    "settings": settings,
                    "signatures": n,
                    "defined_here": False,
                }
            )
    if as_json:
        emit_json({"profiles_file": str(profiles_file(app.settings)), "profiles": rows})
        return

    def samples(r):
        st = r.get("settings") or {}
        try:
            return (st["prompt_set"].get("subset") or st["prompt_set"]["size"]) * st["seeds"][
                "count"
            ]
        except (KeyError, TypeError, AttributeError):
            return ""

    table(
        ["name", "hash", "signatures", "base model", "clip", "samples", "sampling"],
        [
            (
                r["name"] + ("" if r.get("defined_here", True) else " (registry only)"),
                r.get("hash", "")[:12],
                r.get("signatures", 0),
                r.get("base_model_location") or _short(r.get("error", "")),
                (r.get("settings") or {}).get("clip_model", ""),
                samples(r),
                ((r.get("settings") or {}).get("sampling") or {}).get("mode", ""),
            )
            for r in rows
        ],
    )


@signer_group.command(name="prompts")
@click.argument("profile_name", metavar="PROFILE")
@click.option(
    "--query",
    is_flag=True,
    help="The query prompts P' (search) instead of the index prompts P (signing).",
)
@output_options
@pass_app
def prompts_command(app: App, profile_name, query, as_json):
    """A profile's index prompts (or query prompts) in the set's own order, with their set's hash.

    For ``paper`` these are the reference's prompts_for_indexing() (or prompts_for_retrieval()),
    category by category, subcategory by subcategory: check them before spending GPU hours."""
    from signer.profiles import load_profile

    profile = load_profile(profile_name, app.settings)
    ps = profile.prompt_set(query)
    rows = [
        {"index": i, "category": p.category, "subcategory": p.subcategory, "prompt": p.text}
        for i, p in enumerate(profile.listed_prompts(query))
    ]
    doc = {
        "profile": profile.name,
        "profile_hash": profile.hash,
        "part": "query" if query else "index",
        "prompt_set": {
            "name": ps.name,
            "version": ps.version,
            "sha256": ps.sha256,
            "size": len(ps.prompts),
        },
        "count": len(rows),
        "prompts": rows,
    }
    if as_json:
        emit_json(doc)
        return
    table(
        ["#", "category", "subcategory", "prompt"],
        [(r["index"], r["category"], r["subcategory"], r["prompt"]) for r in rows],
    )
    info(f"{len(rows)} {doc['part']} prompts of {ps.name} {ps.version} (sha256 {ps.sha256})")


@signer_group.command(name="samples")
@click.argument("profile_name", metavar="PROFILE")
@click.option(
    "--trigger",
    "triggers",
    multiple=True,
    metavar="WORD",
    help="A trainedWords entry, verbatim (repeatable, in order); shows the LoRA-branch prompt.",
)
@click.option(
    "--triggers-missing",
    is_flag=True,
    help="The version has no trainedWords list at all (the reference then appends ', ').",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="K")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="How many samples (0: all).",
)
@output_options
@pass_app
def samples_command(app: App, profile_name, triggers, triggers_missing, offset, limit, as_json):
    """A profile's samples in visiting order: prompt, LoRA-branch prompt, image number, noise seed and
    the SHA-256 of each sample's initial noise (standard normal, float16 bytes, shape (4, H/8, W/8))."""
    from registry.errors import UsageError
    from signer.engine import trigger_suffix
    from signer.noise import noise_sha256
    from signer.profiles import load_profile

    if triggers and triggers_missing:
        raise UsageError("--trigger and --triggers-missing contradict each other")
    profile = load_profile(profile_name, app.settings)
    suffix = trigger_suffix(
        None if triggers_missing else list(triggers), profile.settings["trigger_words"]
    )
    samples = profile.samples()
    chosen = samples[offset : offset + limit] if limit else samples[offset:]
    rows = [
        {
            "index": x.index,
            "prompt": x.prompt,
            "lora_prompt": x.prompt + suffix,
            "image_index": x.image,
            "seed": x.seed,
            "noise_row": x.row,
            "noise_sha256": noise_sha256(profile.sample_noise(x)),
        }
        for x in chosen
    ]
    doc = {
        "profile": profile.name,
        "profile_hash": profile.hash,
        "total": len(samples),
        "offset": offset,
        "noise": {
            "batch": profile.noise_batch,
            "dtype": profile.settings.get("noise_dtype"),
            "shape": list(profile.latent_shape),
        },
        "trigger_suffix": suffix,
        "samples": rows,
    }
    if as_json:
        emit_json(doc)
        return
    table(
        ["#", "image", "seed", "row", "noise sha256", "LoRA-branch prompt"],
        [
            (
                r["index"],
                r["image_index"],
                r["seed"],
                r["noise_row"],
                r["noise_sha256"][:16],
                r["lora_prompt"],
            )
            for r in rows
        ],
    )
    info(f"samples {offset}–{offset + len(rows) - 1} of {len(samples)}")


def _short(error: str) -> str:
    if "reference prompts" in error:
        return "needs the reference prompt file (set CARLOS_REG_CARLOS_PROMPTS; --json says more)"
    return error if len(error) <= 90 else error[:89] + "…"


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
    from signer.store import enqueue_lora

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

    import sqlalchemy as sa

    from registry.models import File, Signature
    from signer import store
    from signer.worker import Worker

    profile, pid = _profile(app, None)
    with app.db.write() as s:
        signed = sa.select(Signature.version_id).where(Signature.profile_id == pid)
        vids = (
            s.execute(
                sa.select(sa.distinct(File.version_id)).where(
                    File.state == FileState.VERIFIED,
                    File.local_path.is_not(None),
                    File.version_id.not_in(signed),
                )
            )
            .scalars()
            .all()
        )
        queued = sum(bool(store.enqueue_lora(s, app.queue, pid, v)) for v in vids)
    out = {"profile": profile.name, "unsigned": len(vids), "newly_queued": queued}
    if not options.get("sign_local"):
        return out
    worker = Worker(
        app.db,
        app.settings,
        device=_device(options.get("device")),
        profiles=[profile.name],
        once=True,
        say=_say,
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
