"""The library plugin: ``carlos-reg scan DIR…`` (your own LoRA folders, identified by hash, used in place).

It composes the crawler's Civitai client and registry writes with the signer's file validator and
queue; nothing heavy is imported until a command runs (hashing never imports torch).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from registry import hookimpl
from registry.app import App, pass_app
from registry.errors import CarlosError
from registry.output import emit_json, info, output_options, table
from registry.settings import PROFILE_HELP

CATEGORY_TITLES = {
    "registry": "found in registry",
    "civitai": "identified on Civitai",
    "local": "local only",
    "unsignable": "unsignable",
    "unresolved": "not identified yet (lookup failed)",
}


@click.command(name="scan")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--offline", is_flag=True, help="Ask Civitai nothing; unknown files become local LoRAs."
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Ask Civitai again about files it did not know before (local-only ones).",
)
@click.option(
    "--sign", "sign", is_flag=True, help="Queue every unsigned signable file for the profile."
)
@click.option("--profile", default=None, help="Profile for --sign. " + PROFILE_HELP)
@click.option(
    "--copy",
    is_flag=True,
    help="Copy files into the artifact store when a hardlink is impossible (another filesystem).",
)
@output_options
@pass_app
def scan_command(app: App, dirs, offline, refresh, sign, profile, copy, as_json):
    """Hash the LoRAs in your folders (ComfyUI, Forge, A1111, any), identify them, use them in place.

    Each .safetensors file is matched by SHA-256 against the registry, else against Civitai's
    by-hash lookup, else registered as a local LoRA; pickles and files the signer cannot sign are
    listed with the reason. A rescan reads only new or changed files.
    """
    from plugins.library.scan import Scanner

    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise CarlosError(f"no such file or folder: {missing[0]}")
    started = time.monotonic()
    res = Scanner(
        app, offline=offline, refresh=refresh, copy=copy, sign=sign, profile=profile, say=info
    ).run(list(dirs))
    seconds = round(time.monotonic() - started, 3)
    counts = res.counts()
    if as_json:
        emit_json(
            {
                "files": res.files,
                "counts": counts,
                "missing": res.missing,
                "skipped": res.skipped,
                "hashed_files": res.hashed_files,
                "bytes_hashed": res.bytes_hashed,
                "lookups": res.lookups,
                "errors": res.errors,
                "seconds": seconds,
            }
        )
        return
    rows = [
        (
            CATEGORY_TITLES[f["category"]],
            f["ref"] or "",
            f["name"] or "",
            f["path"],
            f["reason"] or f["signing"] or ("changed" if f["changed"] else ""),
        )
        for f in res.files
    ]
    table(["found", "ref", "name", "path", "note"], rows, title="Scanned LoRA files")
    for p in res.missing:
        info(f"missing since the last scan (kept in the registry): {p}")
    for s in res.skipped:
        info(f"skipped {s['path']}: {s['reason']}")
    for e in res.errors:
        info(f"error: {e}")
    info(
        ", ".join(f"{counts[k]} {CATEGORY_TITLES[k]}" for k in CATEGORY_TITLES if counts[k])
        + f"; {counts['missing']} missing; {res.hashed_files} files hashed ({res.bytes_hashed} bytes), "
        f"{res.lookups['asked']} Civitai lookups"
    )


@hookimpl
def register_commands(cli):
    cli.add_command(scan_command)
