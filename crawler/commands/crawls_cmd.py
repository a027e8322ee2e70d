"""``crawls``: recent crawl runs, or one run with its recorded problems (``crawl_error``)."""

from __future__ import annotations

import click

from registry.app import App, pass_app
from registry.cli_options import limit_option
from registry.output import emit_json, info, output_options, table


@click.command()
@click.argument("run_id", required=False, type=int)
@limit_option("Runs (or errors) shown.", minimum=1)
@output_options
@pass_app
def crawls(app: App, run_id, limit, as_json):
    """List recent crawl runs, or show one run with its recorded problems."""
    if run_id is None:
        _list_runs(app, limit, as_json)
    else:
        _show_run(app, run_id, limit, as_json)


def _run_dict(r) -> dict:
    return {
        "id": r.id,
        "status": r.status,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "params": r.params,
        "cursor": r.cursor,
        "pages": r.pages,
        "requests": r.requests,
        "models_seen": r.models_seen,
        "models_written": r.models_written,
        "versions_new": r.versions_new,
        "versions_gone": r.versions_gone,
        "files_verified": r.files_verified,
        "files_failed": r.files_failed,
        "bytes_downloaded": r.bytes_downloaded,
        "error_count": r.error_count,
    }


def _list_runs(app: App, limit: int, as_json: bool) -> None:
    import sqlalchemy as sa

    from registry.models import CrawlRun

    with app.db.read() as s:
        runs = (
            s.execute(sa.select(CrawlRun).order_by(CrawlRun.id.desc()).limit(limit)).scalars().all()
        )
        docs = [_run_dict(r) for r in runs]
    if as_json:
        emit_json({"runs": docs})
        return
    table(
        [
            "#",
            "status",
            "started",
            "pages",
            "models",
            "versions new",
            "files verified",
            "failed",
            "problems",
        ],
        [
            (
                d["id"],
                d["status"],
                _when(d["started_at"]),
                d["pages"],
                d["models_seen"],
                d["versions_new"],
                d["files_verified"],
                d["files_failed"],
                d["error_count"],
            )
            for d in docs
        ],
    )
    if not docs:
        info("no crawl yet: try `carlos-reg crawl`")


def _show_run(app: App, run_id: int, limit: int, as_json: bool) -> None:
    doc = _run_doc(app, run_id, limit)
    if as_json:
        emit_json(doc)
        return
    table(["field", "value"], _run_rows(doc), title=f"crawl run {run_id}", wrap=True)
    if doc["errors"]:
        table(
            ["stage", "item", "status", "message"],
            [(e["stage"], e["item"], e["status"], e["message"]) for e in doc["errors"]],
            title="problems",
            wrap=True,
        )
        if doc["error_count"] > len(doc["errors"]):
            info(f"{len(doc['errors'])} of {doc['error_count']} shown; use --limit")


def _run_doc(app: App, run_id: int, limit: int) -> dict:
    """One run with its first ``limit`` recorded problems."""
    import sqlalchemy as sa

    from registry.errors import NotFound
    from registry.models import CrawlError, CrawlRun

    with app.db.read() as s:
        run = s.get(CrawlRun, run_id)
        if run is None:
            raise NotFound(f"no crawl run {run_id}")
        errors = s.execute(
            sa.select(CrawlError)
            .where(CrawlError.run_id == run_id)
            .order_by(CrawlError.id)
            .limit(limit)
        ).scalars()
        doc = _run_dict(run)
        doc["errors"] = [
            {
                "at": e.at,
                "stage": e.stage,
                "item": e.ref,
                "status": e.status_code,
                "message": e.message,
            }
            for e in errors
        ]
    return doc


def _when(value) -> str:
    """A timestamp to the second, in UTC (the registry stores UTC)."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _run_rows(doc: dict) -> list[tuple[str, object]]:
    """One crawl run as readable (label, value) rows: times to the second, parameters one per line."""
    started, finished = doc["started_at"], doc["finished_at"]
    params = doc["params"] or {}
    rows = [
        ("run", doc["id"]),
        ("status", doc["status"]),
        ("started", _when(started)),
        (
            "finished",
            _when(finished)
            + (f" ({(finished - started).total_seconds():.0f} s)" if started and finished else ""),
        ),
        (
            "parameters",
            "\n".join(
                f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in params.items()
                if v is not None and v != []
            ),
        ),
        ("resume cursor", doc["cursor"] or ""),
    ]
    labels = {
        "pages": "pages",
        "requests": "requests",
        "models_seen": "models seen",
        "models_written": "models written",
        "versions_new": "versions new",
        "versions_gone": "versions gone",
        "files_verified": "files verified",
        "files_failed": "files failed",
        "bytes_downloaded": "bytes downloaded",
        "error_count": "problems",
    }
    rows += [(label, doc[key]) for key, label in labels.items()]
    return rows
