"""Models looked up one by one at ``/api/v1/models/{id}``: the by-id crawl and the gone check.

``ModelLookups`` is mixed into ``crawler.sync.Crawler`` and works on its state (``stats``,
``options``, ``writer``, the ids the listing saw) and steps (``_select``, ``_ingest``, ``_write``,
``_error``). Both users fetch through ``lookup_model``, which tells "Civitai says there is no such
model" (404/410) from "the answer did not come".

- By id (``options.model_ids``): each model's SDXL LoRA versions are stored as a listing page
  would store them; a model that cannot be fetched makes the run ``partial``.
- Gone check (the contract is in ``crawler.sync``): a model the registry holds but a full listing
  did not return, or one with a version the listing did not return, is marked gone only when its
  own answer confirms it (404/410, or no longer an SDXL LoRA, or without that version); a model
  that is still there is refreshed from its answer instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from crawler.client import CivitaiClient
from crawler.crawl_types import MODELS_PATH
from crawler.http_errors import CivitaiError
from crawler.parse import SDXL_BASE_MODELS, ApiSchemaError, parse_model
from registry.models import utcnow

GONE_STATUSES = (404, 410)


@dataclass
class ModelAnswer:
    """What ``GET /api/v1/models/{id}`` said: the document, or the error that came instead."""

    doc: Any = None
    error: CivitaiError | None = None

    @property
    def gone(self) -> bool:
        """Civitai says there is no such model (deleted, or never public)."""
        return self.error is not None and self.error.status in GONE_STATUSES


async def lookup_model(
    client: CivitaiClient, model_id: int, limit: asyncio.Semaphore
) -> ModelAnswer:
    """Fetch one model, at most ``limit`` at a time (the slot is held for the request only)."""
    async with limit:
        try:
            return ModelAnswer(doc=await client.get_json(f"{MODELS_PATH}/{model_id}"))
        except CivitaiError as exc:
            return ModelAnswer(error=exc)


@dataclass
class GoneFindings:
    """What the gone check found, model by model."""

    missing_versions: dict[int, int]  # version id -> model id: in the registry, not listed
    models: set[int] = field(default_factory=set)
    versions: set[int] = field(default_factory=set)
    unconfirmed: int = 0


class ModelLookups:
    """The crawler's steps that look models up by id."""

    # -------------------------------------------------------------- by id

    async def _fetch_models(self, client: CivitaiClient, downloads: asyncio.Queue) -> None:
        """Fetch ``options.model_ids`` one by one (``/api/v1/models/{id}``) and store their SDXL LoRA
        versions as a listing page would: for rows known only by id, such as imported signatures."""
        limit = asyncio.Semaphore(self.options.concurrency)
        fetched = await asyncio.gather(
            *(self._fetch_model(client, m, limit, downloads) for m in self.options.model_ids)
        )
        missing = fetched.count(False)
        self.stats.complete = missing == 0
        self.stats.status = "ok" if missing == 0 else "partial"

    async def _fetch_model(
        self,
        client: CivitaiClient,
        model_id: int,
        limit: asyncio.Semaphore,
        downloads: asyncio.Queue,
    ) -> bool:
        """Fetch and store one model; False when it could not be fetched (recorded)."""
        answer = await lookup_model(client, model_id, limit)
        if answer.error is not None:
            self._error(
                "fetch",
                f"model {model_id}",
                "not on Civitai (deleted or never public)"
                if answer.gone
                else f"could not be fetched: {answer.error}",
                answer.error.status,
            )
            return False
        self.stats.pages += 1
        batch = self._select([answer.doc])
        if not batch and isinstance(answer.doc, dict) and answer.doc.get("id") == model_id:
            self._error(
                "fetch", f"model {model_id}", "not an SDXL LoRA on Civitai: nothing to fill in"
            )
        await self._ingest(batch, downloads)
        return True

    # -------------------------------------------------------------- disappearance

    def _gone_check_blocker(self) -> str | None:
        if not self.options.full:
            return "off (not a --full crawl)"
        if not self.options.unfiltered:
            return "skipped: --base-model narrows the listing"
        if self.options.max_models is not None:
            return "skipped: --max-models limits the listing"
        if not self.stats.complete:
            return "skipped: the listing did not reach its end"
        if any(e["stage"] == "page" for e in self.stats.error_samples):
            return "skipped: a page failed"
        return None

    async def _gone_check(self, client: CivitaiClient, downloads: asyncio.Queue) -> None:
        blocker = self._gone_check_blocker()
        if blocker is not None:
            self.stats.gone_check = blocker
            return
        alive_models, alive_versions = await self._write(self.writer.alive_ids)
        found = GoneFindings(
            {vid: mid for vid, mid in alive_versions.items() if vid not in self._seen_versions}
        )
        candidates = sorted((alive_models - self._listed) | set(found.missing_versions.values()))
        limit = asyncio.Semaphore(self.options.concurrency)
        await asyncio.gather(
            *(self._confirm_gone(client, m, limit, found, downloads) for m in candidates)
        )
        n_models, n_versions = await self._write(
            self.writer.mark_gone, found.models, found.versions, utcnow()
        )
        self.stats.models_gone += n_models
        self.stats.versions_gone += n_versions
        self.stats.gone_check = f"done: {len(candidates)} model(s) not listed were checked" + (
            f", {found.unconfirmed} could not be confirmed" if found.unconfirmed else ""
        )

    async def _confirm_gone(
        self,
        client: CivitaiClient,
        model_id: int,
        limit: asyncio.Semaphore,
        found: GoneFindings,
        downloads: asyncio.Queue,
    ) -> None:
        """Ask Civitai whether ``model_id`` (or some of its versions) is gone, into ``found``; a
        model still there as an SDXL LoRA is stored from the answer, as a listing page would be."""
        answer = await lookup_model(client, model_id, limit)
        if answer.gone:
            found.models.add(model_id)
            return
        if answer.error is not None:
            self._unconfirmed(found, model_id, answer.error, answer.error.status)
            return
        try:
            model = parse_model(answer.doc)
            if model.id != model_id:
                raise ApiSchemaError(f"asked for model {model_id}, got {model.id}")
        except ApiSchemaError as exc:
            self._unconfirmed(found, model_id, exc)
            return
        versions = model.keep_versions(frozenset(SDXL_BASE_MODELS)) if model.is_lora else []
        if not versions:
            found.models.add(model_id)  # still upstream, but no longer an SDXL LoRA
            return
        present = {v.id for v in versions}
        found.versions.update(
            vid
            for vid, mid in found.missing_versions.items()
            if mid == model_id and vid not in present
        )
        self._seen_versions.update(present)
        await self._ingest([(model, versions)], downloads)

    def _unconfirmed(
        self, found: GoneFindings, model_id: int, problem: Exception, status: int | None = None
    ) -> None:
        found.unconfirmed += 1
        self._error(
            "gone", f"model {model_id}", f"cannot confirm whether it is gone: {problem}", status
        )
