"""Prompt sets: the index set P (signing) and the disjoint query set P' (retrieval suffixes).

A prompt file is JSON, either the structured form the built-ins use::

    {"name": "...", "version": 1,
     "categories": [{"name": "...", "subcategories": [{"name": "...", "prompts": ["...", ...]}]}]}

or a plain list of strings (one category), or a ``.txt`` file with one prompt per line.
A set's ``sha256`` covers its name, version and every (category, subcategory, text) in order,
so a signer profile records exactly which prompts produced a signature.

``stratified_order`` visits prompts so that every prefix is spread over categories and
subcategories in proportion to their size: adaptive sampling and the small subsets of the tiny
profile rely on that.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence, TypeVar

HERE = Path(__file__).resolve().parent
BUILTIN = {"carlos-reg-index": HERE / "index.json", "carlos-reg-query": HERE / "query.json"}
MAX_PROMPTS = 100_000

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    subcategory: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    version: str
    prompts: tuple[Prompt, ...]
    sha256: str

    def describe(self, subset: int | None = None) -> dict:
        """What a profile's settings record about this set (hashed with the profile)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "size": len(self.prompts),
                "subset": subset}

    def stratified(self, subset: int | None = None) -> list[Prompt]:
        """Prompts in stratified order; the first ``subset`` of them when given."""
        groups: dict[str, dict[str, list[Prompt]]] = {}
        for p in self.prompts:
            groups.setdefault(p.category, {}).setdefault(p.subcategory, []).append(p)
        order = stratified_order([stratified_order(list(subs.values())) for subs in groups.values()])
        return order[:subset] if subset else order


def stratified_order(groups: Sequence[Sequence[T]]) -> list[T]:
    """Interleave groups proportionally: item i of a group of n sits at position (i + ½)/n."""
    keyed = [((i + 0.5) / len(g), gi, i, item) for gi, g in enumerate(groups) for i, item in enumerate(g)]
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


def _digest(name: str, version: str, prompts: Sequence[Prompt]) -> str:
    doc = {"name": name, "version": version, "prompts": [[p.category, p.subcategory, p.text] for p in prompts]}
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def parse_prompt_file(path: Path) -> PromptSet:
    from signer.errors import ProfileError

    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read prompt file {path}: {exc.strerror}") from None
    name, version, prompts = path.stem, "1", []
    if path.suffix.lower() == ".txt":
        prompts = [Prompt(line.strip(), "all", "all") for line in raw.splitlines() if line.strip()]
    else:
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"prompt file {path} is not valid JSON: {exc}") from None
        if isinstance(doc, list):
            prompts = [Prompt(str(t).strip(), "all", "all") for t in doc]
        elif isinstance(doc, dict) and isinstance(doc.get("categories"), list):
            name, version = str(doc.get("name") or name), str(doc.get("version", "1"))
            try:
                for cat in doc["categories"]:
                    for sub in cat["subcategories"]:
                        prompts += [Prompt(str(t).strip(), str(cat["name"]), str(sub["name"])) for t in sub["prompts"]]
            except (KeyError, TypeError):
                raise ProfileError(f"prompt file {path}: every category needs 'name' and 'subcategories', every "
                                   "subcategory 'name' and 'prompts'") from None
        else:
            raise ProfileError(f"prompt file {path}: expected a list of prompts or an object with 'categories'")
    if not prompts or any(not p.text for p in prompts):
        raise ProfileError(f"prompt file {path} has no prompts, or an empty one")
    if len(prompts) > MAX_PROMPTS:
        raise ProfileError(f"prompt file {path} has {len(prompts)} prompts (at most {MAX_PROMPTS})")
    return PromptSet(name, version, tuple(prompts), _digest(name, version, prompts))


@lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int) -> PromptSet:
    return parse_prompt_file(Path(path))


def load_prompt_set(name_or_path: str | Path) -> PromptSet:
    """A built-in set by name (``carlos-reg-index``, ``carlos-reg-query``) or a prompt file."""
    path = BUILTIN.get(str(name_or_path)) or Path(name_or_path).expanduser()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        from signer.errors import ProfileError

        raise ProfileError(f"no prompt set {str(name_or_path)!r}: give a built-in name "
                           f"({', '.join(BUILTIN)}) or a .json/.txt prompt file") from None
    return _load_cached(str(path.resolve()), mtime)
