"""The HTTP API: an aiohttp application with the registry's own routes, plus the routes plugins
add through ``register_routes`` (search, reports, compare, the search page).

Conventions: JSON in and out; the same parameters and documents as the CLI's ``--json``; a bad
parameter (or one the route does not know) is a 400 and an unknown REF a 404, both as
``{"error": "..."}``; a database that is restarting or unreachable is a 503 with ``Retry-After``
(requests fail fast; the pool reconnects once it is back); a model the server lacks is the
operator's problem, not a passing one: a 500 with ``"code": "model_unavailable"``, a short message
for the visitor and the detail in the log; blocking work (the database, models) runs in a thread pool so the event loop
keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from registry import __version__
from registry.app import App
from registry.errors import CarlosError, DatabaseError, ModelUnavailable, NotFound, UsageError
from registry.retry import describe, is_transient
from registry.states import JobState

log = logging.getLogger(__name__)

APP = web.AppKey("carlos_app", App)
EXECUTOR = web.AppKey("carlos_executor", ThreadPoolExecutor)
API_THREADS = 8  # blocking queries run on this many threads (each may hold a database connection)
OPTIONS = web.AppKey("carlos_options", dict)
STARTED = web.AppKey("carlos_started", float)
# The server's one warm search engine (signer.search.SearchEngine), shared by the plugins whose
# routes query it (search, the LoRA page); whichever needs it first creates it.
SEARCH_ENGINE = web.AppKey("carlos_search_engine", object)
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DB_RETRY_AFTER_SECONDS = 5


class BadRequest(UsageError):
    pass


def respond(doc, status: int = 200) -> web.Response:
    """A strict-JSON response (NaN/inf become null), like the CLI's --json."""
    import json

    from registry.output import json_safe

    return web.json_response(
        json_safe(doc), status=status, dumps=lambda o: json.dumps(o, default=str)
    )


def json_error(status: int, message: str, code: str | None = None) -> web.Response:
    return respond({"error": message, **({"code": code} if code else {})}, status=status)


MODEL_UNAVAILABLE_MESSAGE = (
    "this server cannot answer that query now: a model it needs is not installed"
)
SERVER_ERROR_MESSAGE = (
    "this server is not set up to answer that (the operator finds the reason in its log)"
)


class _JsonParseErrors(RequestHandler):
    """Requests aiohttp cannot parse (an overlong URL or header, a bad request line) never reach the
    middleware; aiohttp would answer them in plain text that quotes the request, and log a traceback."""

    __slots__ = ()

    def handle_error(
        self,
        request,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.info(
            "unparsable request from %s: %s", request.remote, type(exc).__name__ if exc else status
        )
        resp = json_error(
            status,
            f"malformed HTTP request ({HTTPStatus(status).phrase.lower()}): "
            "an overlong URL or header, or a bad request line",
        )
        resp.force_close()
        return resp


class _JsonParseErrorServer(Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = (
            _JsonParseErrors  # same layout (no new slots): only handle_error differs
        )
        return handler


def json_parse_errors(runner: web.AppRunner) -> None:
    """After ``runner.setup()``: answer unparsable requests with a JSON error (see ``_JsonParseErrors``)."""
    runner.server.__class__ = _JsonParseErrorServer


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(
                exc.status, exc.reason
            )  # unknown routes, bad methods, oversized bodies
        raise
    except NotFound as exc:
        return json_error(404, str(exc))
    except ModelUnavailable as exc:  # a configuration error: permanent until the operator acts
        log.error("%s %s: %s", request.method, request.path, exc)
        return json_error(500, MODEL_UNAVAILABLE_MESSAGE, ModelUnavailable.code)
    except (UsageError, ValueError) as exc:
        return json_error(400, str(exc))
    except Exception as exc:
        if is_transient(
            exc
        ):  # the database is restarting or unreachable: the client should come back
            log.warning(
                "%s %s: registry database unavailable: %s",
                request.method,
                request.path,
                describe(exc),
            )
            response = json_error(503, "the registry database is unavailable; retry shortly")
            response.headers["Retry-After"] = str(DB_RETRY_AFTER_SECONDS)
            return response
        if isinstance(
            exc, DatabaseError
        ):  # e.g. a schema newer than this code: the operator's to fix
            log.error("%s %s: %s", request.method, request.path, exc)
            return json_error(500, SERVER_ERROR_MESSAGE, "server_misconfigured")
        if isinstance(exc, CarlosError):  # refused for this request (a LoRA with no Direction, ...)
            return json_error(422, str(exc))
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error (see the server log)")


async def blocking(request: web.Request, fn, *args, **kwargs):
    """Run a blocking function (database, models) off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args, **kwargs))


def check_params(query, known) -> None:
    """A parameter the route does not take is refused by name (a typo would otherwise be ignored)."""
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]}; this route takes {', '.join(sorted(known)) or 'none'}"
        )


def _given(query, name: str) -> str | None:
    """A parameter's text, or None when it is absent or empty (an empty one means the default)."""
    raw = query.get(name)
    return None if raw is None or raw == "" else raw


def param_int(
    query, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer query parameter (``query`` is any mapping: request.query, form fields)."""
    raw = _given(query, name)
    if raw is None:
        return default
    try:
        if len(raw) > 30:  # int() of thousands of digits is slow, and no parameter is that large
            raise ValueError
        value = int(raw)
    except ValueError:
        raise BadRequest(f"parameter {name} must be an integer, got {raw!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(f"parameter {name} must be between {lo} and {hi}, got {value}")
    return value


def param_float(query, name: str) -> float | None:
    """A finite number, or None when the parameter is not given."""
    raw = _given(query, name)
    return None if raw is None else _finite_number(name, raw)


def _finite_number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"parameter {name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"parameter {name} must be finite")
    return value


_BOOLEAN_WORDS = {  # what param_bool accepts, lowered
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def param_bool(query, name: str) -> bool | None:
    """true, yes, on, 1 or false, no, off, 0 in any case; None when the parameter is not given."""
    raw = _given(query, name)
    if raw is None:
        return None
    if raw.lower() not in _BOOLEAN_WORDS:
        raise BadRequest(f"parameter {name} must be true or false, got {raw!r}")
    return _BOOLEAN_WORDS[raw.lower()]


# ---------------------------------------------------------------- core routes


async def health(request: web.Request) -> web.Response:
    app = request.app[APP]

    def gather():
        from registry.migrate import current_revisions, head_revision
        from registry.service import recent_runs

        revs = current_revisions(app.db)
        return {
            "schema": {"current": list(revs), "head": head_revision()},
            "queue": app.queue.counts(),
            "runs": recent_runs(app, 5),
        }

    try:
        doc = await blocking(request, gather)
        status = "ok"
    except CarlosError as exc:
        doc, status = {"error": str(exc)}, "degraded"
    scheduler = request.app[OPTIONS].get("scheduler")
    job = scheduler.get_job("nightly") if scheduler is not None else None
    return respond(
        {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.monotonic() - request.app[STARTED], 1),
            "schedule": request.app[OPTIONS].get("schedule"),
            "next_run": job.next_run_time.isoformat()
            if job is not None and job.next_run_time
            else None,
            **doc,
        },
        status=200 if status == "ok" else 503,
    )


LORAS_PARAMS = ("signed", "limit", "offset", "base_model", "profile", "nsfw", "mode")


async def loras(request: web.Request) -> web.Response:
    from registry.profiles import find_profile
    from registry.queries import lora_rows

    app = request.app[APP]
    check_params(request.query, LORAS_PARAMS)
    signed = param_bool(request.query, "signed")
    limit = param_int(request.query, "limit", 100, 0, 10_000)
    offset = param_int(request.query, "offset", 0, 0, 2**62)
    base_model, profile = request.query.get("base_model"), request.query.get("profile")
    nsfw, mode = param_bool(request.query, "nsfw"), request.query.get("mode") or None
    if mode is not None and mode.lower() not in ("live", "archived", "takendown"):
        raise BadRequest("mode must be one of live, archived, takendown")

    def query():
        with app.db.read() as session:
            pid = find_profile(session, profile).id if profile else None
            return lora_rows(
                session,
                signed=signed,
                base_model=base_model,
                profile_id=pid,
                limit=limit or None,
                offset=offset,
                nsfw=nsfw,
                mode=mode,
            )

    total, rows = await blocking(request, query)
    return respond({"total": total, "offset": offset, "count": len(rows), "loras": rows})


async def lora(request: web.Request) -> web.Response:
    from registry.lora_detail import lora_detail
    from registry.refs import resolve_ref

    app = request.app[APP]
    check_params(request.query, ())

    def query():
        with app.db.read() as session:
            return lora_detail(session, resolve_ref(session, request.match_info["ref"]))

    return respond(await blocking(request, query))


async def stats(request: web.Request) -> web.Response:
    from registry.queries import registry_stats

    app = request.app[APP]
    check_params(request.query, ())

    def query():
        with app.db.read() as session:
            return registry_stats(session)

    return respond(await blocking(request, query))


async def queue(request: web.Request) -> web.Response:
    app = request.app[APP]

    def query():
        import sqlalchemy as sa

        from registry.models import SignerProfile, SignJob

        with app.db.read() as session:
            per_profile = session.execute(
                sa.select(SignerProfile.name, SignJob.kind, SignJob.state, sa.func.count())
                .join(SignerProfile, SignerProfile.id == SignJob.profile_id)
                .group_by(SignerProfile.name, SignJob.kind, SignJob.state)
            ).all()
            dead = session.execute(
                sa.select(SignJob.id, SignJob.version_id, SignJob.last_error)
                .where(SignJob.state == JobState.DEAD)
                .order_by(SignJob.id.desc())
                .limit(50)
            ).all()
        by_profile: dict = {}
        for name, kind, state, n in per_profile:
            by_profile.setdefault(name, {}).setdefault(kind, {})[state] = n
        return {
            "counts": app.queue.counts(),
            "profiles": by_profile,
            "dead": [{"job_id": j, "version_id": v, "reason": e} for j, v, e in dead],
        }

    return respond(await blocking(request, query))


async def runs(request: web.Request) -> web.Response:
    from registry.service import recent_runs

    check_params(request.query, ("limit",))
    limit = param_int(request.query, "limit", 20, 1, 500)
    return respond({"runs": await blocking(request, recent_runs, request.app[APP], limit)})


def create_web_app(
    app: App, options: dict | None = None, *, threads: int = API_THREADS
) -> web.Application:
    from registry.plugins import load_plugins, pm

    web_app = web.Application(middlewares=[errors], client_max_size=MAX_UPLOAD_BYTES)
    web_app[APP] = app
    web_app[OPTIONS] = options if options is not None else {}
    web_app[STARTED] = time.monotonic()
    web_app[EXECUTOR] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="carlos-api")
    web_app.add_routes(
        [
            web.get("/api/health", health),
            web.get("/api/loras", loras),
            web.get("/api/loras/{ref}", lora),
            web.get("/api/stats", stats),
            web.get("/api/queue", queue),
            web.get("/api/runs", runs),
        ]
    )
    load_plugins()
    pm.hook.register_routes(web_app=web_app, app=app)

    async def close_executor(_web_app):
        _web_app[EXECUTOR].shutdown(wait=False, cancel_futures=True)

    web_app.on_cleanup.append(close_executor)
    return web_app
