"""Test helpers for the crawler: a fault-injecting middleware around the real mirror server, a
standard catalog, an in-process crawl, and a change counter on the catalog tables."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Callable

import sqlalchemy as sa
from aiohttp import web

from crawler.client import HTTP_RETRY
from crawler.crawl_types import CrawlOptions
from crawler.mirror import (
    CATALOG,
    BackgroundServer,
    file_entry,
    make_app,
    model_entry,
    tiny_lora,
    version_entry,
    write_catalog,
)
from crawler.sync import Crawler
from registry.app import App
from registry.settings import Secret, Settings


def LISTING(r) -> bool:
    return r.path == "/api/v1/models"


FILES = "/mirror-files/"
DOWNLOADS = "/api/download/models/"
FAST = replace(HTTP_RETRY, max_attempts=4, initial=0.001, cap=0.005)
FILE_ROUTE = re.compile(r"^/mirror-files/(\d+)$")


# ---------------------------------------------------------------- faults


@dataclass
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    at: float


@dataclass
class Rule:
    match: Callable[[web.Request], bool]
    action: Callable[[web.Request, Callable], Awaitable[web.StreamResponse]]
    times: int | None = 1  # None: forever
    hits: int = 0


@dataclass
class Faults:
    """A middleware: records every request, and answers matching ones with a fault instead."""

    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def add(self, match, action, times: int | None = 1) -> Rule:
        if isinstance(match, str):
            prefix = match
            match = lambda r: r.path.startswith(prefix)  # noqa: E731
        rule = Rule(match, action, times)
        self.rules.append(rule)
        return rule

    def requests(self, prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.seen.append(
            Seen(
                request.method,
                request.path,
                list(request.query.items()),
                dict(request.headers),
                time.monotonic(),
            )
        )
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            for rule in self.rules:
                if (rule.times is None or rule.hits < rule.times) and rule.match(request):
                    rule.hits += 1
                    return await rule.action(request, handler)
            return await handler(request)
        finally:
            self.in_flight -= 1


def respond(
    status: int,
    body: dict | str | bytes = b"",
    headers: dict | None = None,
    content_type: str = "application/json",
):
    async def action(request, handler):
        data = (
            json.dumps(body).encode()
            if isinstance(body, dict)
            else body.encode()
            if isinstance(body, str)
            else body
        )
        return web.Response(status=status, body=data, headers=headers, content_type=content_type)

    return action


MAINTENANCE = "<!DOCTYPE html><html><body><h1>We're adjusting a few things, be back in a few minutes</h1></body></html>"
html_page = respond(200, MAINTENANCE, content_type="text/html")
malformed_json = respond(200, '{"items": [{"id": 1, "name": ', content_type="application/json")


def redirect(location: str):
    async def action(request, handler):
        raise web.HTTPTemporaryRedirect(location)

    return action


def transform_json(fn: Callable[[dict], dict]):
    """Let the real handler answer, then rewrite its JSON."""

    async def action(request, handler):
        resp = await handler(request)
        doc = fn(json.loads(resp.body))
        return web.json_response(doc, status=resp.status)

    return action


def unfiltered(request_rewrite=("types", "baseModels")):
    """The real listing, but with the type/base-model filters dropped (a server that ignores them)."""

    async def action(request, handler):
        kept = [(k, v) for k, v in request.query.items() if k not in request_rewrite]
        clone = request.clone(rel_url=request.rel_url.with_query(kept))
        return await handler(clone)

    return action


def file_bytes(request: web.Request) -> bytes:
    file_id = int(FILE_ROUTE.match(request.path).group(1))
    return request.app[CATALOG].file_path(file_id).read_bytes()


def broken_body(
    *,
    cut_at: float = 0.5,
    mode: str = "truncate",
    honor_range: bool = True,
    stall_seconds: float = 30,
    on_cut: Callable[[], None] | None = None,
):
    """Serve a file route's bytes but break the body: truncate (FIN), reset (RST) or stall."""

    async def action(request, handler):
        data = file_bytes(request)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if m and honor_range:
            start = int(m.group(1))
        body = data[start:]
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(body)
        resp.content_type = "application/octet-stream"
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        await resp.write(body[: max(1, int(len(body) * cut_at))])
        if on_cut:
            on_cut()
        if mode == "stall":
            await asyncio.sleep(stall_seconds)
        elif mode == "reset":
            request.transport.abort()
        else:
            request.transport.close()
        return resp

    return action


def ignore_range():
    """Serve a file route whole with 200, whatever Range asks."""

    async def action(request, handler):
        return web.Response(body=file_bytes(request), content_type="application/octet-stream")

    return action


# ---------------------------------------------------------------- catalogs


@dataclass
class Catalog:
    models: list[dict]
    blobs: dict[int, bytes]
    expected_versions: set[int]  # SDXL LoRA versions the registry must end up with
    expected_files: dict[int, str]  # version id -> sha256 of the file that must verify

    def write(self, root: Path) -> Path:
        return write_catalog(root, self.models, self.blobs)


def lora_model(
    model_id: int,
    version_ids: list[int],
    *,
    base_model: str = "SDXL 1.0",
    type: str = "LORA",
    blobs: dict[int, bytes] | None = None,
    tags=("style",),
    creator="alice",
    **file_kw,
) -> dict:
    versions = []
    for i, vid in enumerate(version_ids):
        fid = vid * 10
        data = tiny_lora(vid)
        if blobs is not None:
            blobs[fid] = data
        versions.append(
            version_entry(
                vid,
                index=i,
                base_model=base_model,
                trained_words=[f"trig{vid}"],
                files=[file_entry(fid, data, **file_kw)],
            )
        )
    return model_entry(
        model_id, versions=versions, type=type, tags=tags, creator=creator, name=f"LoRA {model_id}"
    )


def standard_catalog(n_models: int = 6) -> Catalog:
    """SDXL LoRAs of every family type, plus items a crawl must drop (SD 1.5, a checkpoint, Pony V7)."""
    blobs: dict[int, bytes] = {}
    models, expected = [], set()
    families = [
        ("LORA", "SDXL 1.0"),
        ("LoCon", "Pony"),
        ("DoRA", "Illustrious"),
        ("LORA", "NoobAI"),
        ("LORA", "SDXL Lightning"),
        ("LoCon", "SDXL 1.0"),
    ]
    for i in range(n_models):
        kind, base = families[i % len(families)]
        mid = 100 + i
        vids = [1000 + 10 * i, 1001 + 10 * i] if i % 3 == 0 else [1000 + 10 * i]
        models.append(
            lora_model(
                mid, vids, base_model=base, type=kind, blobs=blobs, tags=("style", f"tag{i % 2}")
            )
        )
        expected.update(vids)
    # a model with one SDXL and one SD 1.5 version: only the SDXL one counts
    mixed = lora_model(900, [9000], blobs=blobs)
    sd15 = lora_model(0, [9001], base_model="SD 1.5", blobs=blobs)["modelVersions"][0]
    mixed["modelVersions"].append({**sd15, "index": 1})
    models.append(mixed)
    expected.add(9000)
    models.append(lora_model(901, [9010], base_model="SD 1.5", blobs=blobs))
    models.append(lora_model(902, [9020], type="Checkpoint", blobs=blobs))
    models.append(lora_model(903, [9030], base_model="Pony V7", blobs=blobs))
    files = {}
    for m in models:
        for v in m["modelVersions"]:
            if v["id"] in expected:
                files[v["id"]] = hashlib.sha256(blobs[v["files"][0]["id"]]).hexdigest()
    return Catalog(models, blobs, expected, files)


def serve(root: Path, faults: Faults | None = None, **kw) -> BackgroundServer:
    middlewares = [faults.middleware] if faults is not None else []
    return BackgroundServer(make_app(root, middlewares=middlewares, **kw))


# ---------------------------------------------------------------- crawling


def make_app_obj(home: Path, db_url: str, base_url: str, token: str | None = None) -> App:
    return App(
        Settings(home=home, db_url=db_url, civitai_base_url=base_url, civitai_api_key=Secret(token))
    )


def run(app: App, *, sleeps: list | None = None, **options):
    """Crawl in this process with fast retries; ``sleeps`` collects the waits instead of sleeping."""
    options.setdefault("policy", FAST)
    options.setdefault("timeout", 2.0)
    kwargs = {}
    if sleeps is not None:

        async def fake_sleep(seconds):
            sleeps.append(seconds)
            await asyncio.sleep(0)

        kwargs["client_kwargs"] = {"sleep": fake_sleep}
    crawler = Crawler(app, CrawlOptions(**options), **kwargs)
    asyncio.run(crawler.run())
    return crawler.stats


# ---------------------------------------------------------------- inspecting the registry

CATALOG_TABLES = ("creator", "model", "tag", "model_tag", "version", "file")


def install_change_counter(db) -> None:
    """Triggers that count every INSERT/UPDATE/DELETE on the catalog tables (both backends)."""
    with db.write() as s:
        s.execute(sa.text("CREATE TABLE _changes (tbl VARCHAR(32), op VARCHAR(8))"))
        if db.is_sqlite:
            for t in CATALOG_TABLES:
                for op in ("INSERT", "UPDATE", "DELETE"):
                    s.execute(
                        sa.text(
                            f"CREATE TRIGGER _count_{t}_{op.lower()} AFTER {op} ON {t} "
                            f"BEGIN INSERT INTO _changes VALUES ('{t}', '{op}'); END"
                        )
                    )
        else:
            s.execute(
                sa.text(
                    "CREATE FUNCTION _count_change() RETURNS trigger AS $$ BEGIN "
                    "INSERT INTO _changes VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            for t in CATALOG_TABLES:
                s.execute(
                    sa.text(
                        f"CREATE TRIGGER _count_{t} AFTER INSERT OR UPDATE OR DELETE ON {t} "
                        f"FOR EACH ROW EXECUTE FUNCTION _count_change()"
                    )
                )


def changes(db) -> list[tuple[str, str]]:
    with db.read() as s:
        return [tuple(r) for r in s.execute(sa.text("SELECT tbl, op FROM _changes"))]


def dump(db) -> dict[str, list]:
    """Every catalog row, as plain tuples sorted by their first column."""
    out = {}
    with db.read() as s:
        for t in CATALOG_TABLES:
            rows = [tuple(str(v) for v in r) for r in s.execute(sa.text(f"SELECT * FROM {t}"))]
            out[t] = sorted(rows)
    return out


def versions_in(db, *, alive: bool | None = True) -> set[int]:
    from registry.models import Version

    stmt = sa.select(Version.id)
    if alive is True:
        stmt = stmt.where(Version.gone_at.is_(None))
    elif alive is False:
        stmt = stmt.where(Version.gone_at.is_not(None))
    with db.read() as s:
        return set(s.execute(stmt).scalars())


def files_by_version(db) -> dict[int, dict]:
    from registry.models import File

    with db.read() as s:
        rows = s.execute(sa.select(File)).scalars().all()
    return {f.version_id: f for f in rows if f.state != "skipped"}
