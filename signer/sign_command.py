"""``carlos-reg sign``: sign LoRAs now, in this process (REFs, local files, or --all).

Nothing heavy is imported at module level: ``carlos-reg --help`` must not import torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from registry.app import App, pass_app
from registry.cli_options import profile_option
from registry.output import emit_json, info, output_options, table
from registry.states import FileState, JobState
from signer.cli_support import DEVICE_HELP, default_device, registered_profile, run_worker


@click.command()
@click.argument("targets", nargs=-1)
@click.option(
    "--all", "all_", is_flag=True, help="Every version with a verified file and no signature yet."
)
@profile_option
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
    from signer.local_loras import collect_paths

    profile_obj, pid = registered_profile(app, profile)
    from signer.weights import check_weights

    check_weights(profile_obj)  # before anything is queued or torch is imported
    files, skipped = collect_paths([Path(t) for t in targets if os.path.exists(t)])
    for p in skipped:
        info(f"skipped {p.name}: not a LoRA file suffix (.safetensors)")
    refs = [t for t in targets if not os.path.exists(t)]
    with app.db.write() as s:
        inputs, entries = _sign_inputs(app, s, files, refs, all_, pid, triggers)
        wanted, jobs, job_ids, retry = _queue_inputs(app, s, pid, inputs, entries)
    todo = [j for j in jobs.values() if j.state != JobState.DONE or j.id in retry]
    if todo:
        # --all drains the profile's queue (no id list: 100,000 ids would exceed SQL parameter limits)
        _sign_here(app, profile_obj, device, len(todo), job_ids=None if all_ else job_ids)
    results = _sign_results(app, pid, inputs, wanted)
    bad = sum(r["outcome"] not in ("signed", "reused", "already signed") for r in results)
    _print_results(profile_obj, results, bad, as_json)
    if bad:
        sys.exit(1)


def _sign_here(app: App, profile_obj, device, n_jobs: int, *, job_ids: list[int] | None) -> None:
    """Run the queued jobs in this process: those ids, or (None) the profile's whole queue."""
    info(
        f"signing {n_jobs} LoRA(s) with profile {profile_obj.name!r} ({profile_obj.hash[:12]}) on "
        f"{default_device(device)}"
        + (
            " — tiny random-weight models: mechanics only, meaningless rankings"
            if profile_obj.is_tiny
            else ""
        )
    )
    report = run_worker(
        app,
        device=device,
        job_ids=job_ids,
        once=job_ids is None,
        profiles=[profile_obj.name],
        total_jobs=n_jobs,
    )
    if report.interrupted:
        info(f"interrupted ({report.interrupted}); unfinished jobs stay queued")


def _print_results(profile_obj, results: list[dict], bad: int, as_json: bool) -> None:
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
        return
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


def _sign_inputs(
    app: App, s, files: list[Path], refs: list[str], all_: bool, pid: int, triggers
) -> tuple[list[dict], list]:
    """What ``sign`` was asked for: local files (registered here), REFs, and with --all every
    verified unsigned version; each with the reason it cannot be signed, if any."""
    from registry.refs import resolve_ref
    from signer.local_loras import register_local_files
    from signer.queueing import unsigned_verified_versions

    inputs: list[dict] = []
    entries = register_local_files(
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
        known = {i["version_id"] for i in inputs}
        inputs += [
            {"input": str(v), "version_id": v, "unsupported": None}
            for v in unsigned_verified_versions(s, pid)
            if v not in known
        ]
    return inputs, entries


def _queue_inputs(app: App, s, pid: int, inputs: list[dict], entries: list):
    """Queue the signable inputs; returns (version ids, their jobs, the job ids to run, the ids re-queued)."""
    from signer.queueing import base_job, enqueue_lora, find_jobs

    wanted = list(dict.fromkeys(i["version_id"] for i in inputs if not i["unsupported"]))
    for vid in wanted:
        enqueue_lora(s, app.queue, pid, vid)
    jobs = find_jobs(s, pid, wanted)
    base = base_job(s, pid)
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
    from signer.queueing import find_jobs

    with app.db.read() as s:
        jobs = find_jobs(s, pid, wanted)
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
