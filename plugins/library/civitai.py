"""Asking Civitai about the hashes ``carlos-reg scan`` could not place (the *Identity* step 2 of the
contract in ``plugins.library.scan``): ``/api/v1/model-versions/by-hash/{sha256}`` once per hash,
through the crawler's client, in batches committed as they finish (an interrupted scan keeps what
finished); each model found is fetched and stored exactly as a crawl stores it, and every answer
(found or not) is remembered in ``hash_lookup``."""

from __future__ import annotations

import asyncio
from typing import Callable

from registry.models import HashLookup, utcnow

LOOKUP_BATCH = 50


class HashLookups:
    def __init__(self, app, result, client_kwargs: dict, say: Callable[[str], None]):
        self.app, self.db = app, app.db
        self.result = result  # the scan's ScanResult: lookups counts and errors
        self.client_kwargs = client_kwargs
        self.say = say

    async def run(self, hashes: list[str]) -> None:
        from crawler.client import CivitaiClient

        settings = self.app.settings
        async with CivitaiClient(
            settings.civitai_base_url, settings.civitai_api_key, **self.client_kwargs
        ) as client:
            fetched_models: dict[int, dict | None] = {}
            for i in range(0, len(hashes), LOOKUP_BATCH):
                batch = hashes[i : i + LOOKUP_BATCH]
                self.say(
                    f"asking Civitai about {len(batch)} file hashes ({i + len(batch)}/{len(hashes)})"
                )
                answers = await asyncio.gather(*(_ask(client, h) for h in batch))
                if all(problem is not None and problem.status is None for _, _, problem in answers):
                    self._unreachable(answers, left=len(hashes) - i)
                    break
                docs = self._tally(answers)
                await self._fetch_models(client, docs, fetched_models)
                self._store_batch(docs, fetched_models)

    def _unreachable(self, answers: list, left: int) -> None:
        lookups = self.result.lookups
        lookups["asked"] += len(answers)
        lookups["errors"] += len(answers)
        self.result.errors.append(
            f"Civitai unreachable ({answers[0][2]}): stopped asking; the next scan "
            f"asks again about the {left} hashes left"
        )

    def _tally(self, answers: list) -> list[tuple[str, dict | None]]:
        """Count the answers; the usable ones (None: Civitai does not know the hash)."""
        res = self.result
        docs = []
        for h, doc, problem in answers:
            res.lookups["asked"] += 1
            if problem is not None:
                if problem.status == 404:
                    res.lookups["not_found"] += 1
                    docs.append((h, None))
                else:
                    res.lookups["errors"] += 1
                    res.errors.append(f"by-hash {h[:12]}…: {problem}")
                continue
            docs.append((h, doc))
        return docs

    async def _fetch_models(self, client, docs, fetched_models: dict[int, dict | None]) -> None:
        """Each model found, fetched once per scan (None: it could not be)."""
        from crawler.http_errors import CivitaiError

        res = self.result
        for _h, doc in docs:
            mid = _model_id(doc)
            if mid is not None and mid not in fetched_models:
                try:
                    fetched_models[mid] = await client.get_json(f"/api/v1/models/{mid}")
                    res.lookups["models_fetched"] += 1
                except CivitaiError as exc:
                    fetched_models[mid] = None
                    if exc.status != 404:
                        res.errors.append(f"model {mid}: {exc}")

    def _store_batch(
        self, docs: list[tuple[str, dict | None]], models: dict[int, dict | None]
    ) -> None:
        """One batch's answers, committed together (an interrupted scan keeps what finished)."""
        from crawler.parse import ApiSchemaError, parse_model, parse_version
        from crawler.registry_writer import RegistryStore

        res = self.result
        now = utcnow()
        store = RegistryStore(self.db, self.app)
        outcomes: list[tuple[str, str, int | None]] = []
        for h, doc in docs:
            if doc is None:
                outcomes.append((h, "not_found", None))
                continue
            try:
                mid = _model_id(doc)
                vid = parse_version(doc, mid or 0)[0].id
                item = models.get(mid) if mid is not None else None
                if not isinstance(item, dict) or not any(
                    isinstance(v, dict) and v.get("id") == vid
                    for v in item.get("modelVersions") or []
                ):
                    summary = doc.get("model") if isinstance(doc.get("model"), dict) else {}
                    item = {**summary, "id": mid, "modelVersions": [doc]}
                pm = parse_model(item)
                keep = [v for v in pm.versions if v.is_sdxl or v.id == vid]
                store.apply_models([(pm, keep)], now)
            except (ApiSchemaError, ValueError, TypeError) as exc:
                res.errors.append(f"by-hash {h[:12]}…: unusable answer ({exc})")
                res.lookups["errors"] += 1
                continue
            res.lookups["found"] += 1
            outcomes.append((h, "found", vid))
        if outcomes:
            with self.db.write() as s:
                for h, status, vid in outcomes:
                    row = s.get(HashLookup, h)
                    if row is None:
                        s.add(HashLookup(sha256=h, status=status, version_id=vid, looked_up_at=now))
                    else:
                        row.status, row.version_id, row.looked_up_at = status, vid, now


async def _ask(client, h: str):
    from crawler.http_errors import CivitaiError

    try:
        return h, await client.get_json(f"/api/v1/model-versions/by-hash/{h.upper()}"), None
    except CivitaiError as exc:
        return h, None, exc


def _model_id(doc) -> int | None:
    mid = doc.get("modelId") if isinstance(doc, dict) else None
    return mid if type(mid) is int and mid > 0 else None
