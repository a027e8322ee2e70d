"""Prompt sets: the index set P (signing) and the disjoint query set P' (retrieval suffixes).

A prompt file is JSON, either the structured form the built-ins use::

    {"name": "...", "version": 1,
     "categories": [{"name": "...", "subcategories": [{"name": "...", "prompts": ["...", ...]}]}]}

or a plain list of strings (one category), or a ``.txt`` file with one prompt per line. The
reference implementation's ``generative_prompts.py`` (``carlos-reference``, or a path to a ``.py``
file) is read as literal data by ``signer.prompts.reference``: its index part (first 8 prompts of
every subcategory) or its query part (last 8).
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
MAX_FILE_BYTES = 16 * 1024 * 1024

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
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": len(self.prompts),
            "subset": subset,
        }

    def stratified(self, subset: int | None = None) -> list[Prompt]:
        """Prompts in stratified order; the first ``subset`` of them when given."""
        groups: dict[str, dict[str, list[Prompt]]] = {}
        for p in self.prompts:
            groups.setdefault(p.category, {}).setdefault(p.subcategory, []).append(p)
        order = stratified_order(
            [stratified_order(list(subs.values())) for subs in groups.values()]
        )
        return order[:subset] if subset else order


def stratified_order(groups: Sequence[Sequence[T]]) -> list[T]:
    """Interleave groups proportionally: item i of a group of n sits at position (i + ½)/n."""
    keyed = [
        ((i + 0.5) / len(g), gi, i, item) for gi, g in enumerate(groups) for i, item in enumerate(g)
    ]
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


def _digest(name: str, version: str, prompts: Sequence[Prompt]) -> str:
    doc = {
        "name": name,
        "version": version,
        "prompts": [[p.category, p.subcategory, p.text] for p in prompts],
    }
    return hashlib.sha256(
        json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()


def parse_prompt_file(path: Path) -> PromptSet:
    from signer.errors import ProfileError

    try:
        if not path.is_file():
            raise ProfileError(f"prompt file {path} is not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProfileError(f"prompt file {path} is larger than {MAX_FILE_BYTES // 1024**2} MiB")
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"prompt file {path} is not UTF-8 text") from None
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
                        prompts += [
                            Prompt(str(t).strip(), str(cat["name"]), str(sub["name"]))
                            for t in sub["prompts"]
                        ]
            except (KeyError, TypeError):
                raise ProfileError(
                    f"prompt file {path}: every category needs 'name' and 'subcategories', every "
                    "subcategory 'name' and 'prompts'"
                ) from None
        else:
            raise ProfileError(
                f"prompt file {path}: expected a list of prompts or an object with 'categories'"
            )
    if not prompts or any(not p.text for p in prompts):
        raise ProfileError(f"prompt file {path} has no prompts, or an empty one")
    if len(prompts) > MAX_PROMPTS:
        raise ProfileError(f"prompt file {path} has {len(prompts)} prompts (at most {MAX_PROMPTS})")
    return PromptSet(name, version, tuple(prompts), _digest(name, version, prompts))


PARTS = ("index", "query")


def _reference_set(path: Path, part: str) -> PromptSet:
    from signer.prompts.reference import REFERENCE_COMMIT, SOURCE_NAME, read_reference_file

    ref = read_reference_file(path)
    name = f"{SOURCE_NAME}-{part}"
    version = REFERENCE_COMMIT if ref.is_pinned else f"file-{ref.file_sha256[:16]}"
    prompts = tuple(Prompt(text, cat, sub) for cat, sub, text in ref.part(part))
    return PromptSet(name, version, prompts, _digest(name, version, prompts))


@lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int, part: str, reference: bool) -> PromptSet:
    return _reference_set(Path(path), part) if reference else parse_prompt_file(Path(path))


def is_reference_source(source: str | Path) -> bool:
    from signer.prompts.reference import SOURCE_NAME

    return str(source) == SOURCE_NAME or str(source).lower().endswith(".py")


def resolve_source(
    source: str | Path, *, home: Path | None = None, allow_download: bool = False
) -> str:
    """A built-in set name as it is, ``carlos-reference`` as the path of the user's reference file,
    anything else as an absolute path."""
    from signer.prompts.reference import SOURCE_NAME, locate_reference_file

    if str(source) in BUILTIN:
        return str(source)
    if str(source) == SOURCE_NAME:
        return str(locate_reference_file(home, allow_download=allow_download).resolve())
    return str(Path(source).expanduser().resolve())


def load_prompt_set(
    name_or_path: str | Path,
    part: str = "index",
    *,
    home: Path | None = None,
    allow_download: bool = False,
) -> PromptSet:
    """A built-in set by name (``carlos-reg-index``, ``carlos-reg-query``), the reference's prompts
    (``carlos-reference`` or a ``.py`` path; ``part`` picks index or query), or a .json/.txt file."""
    from signer.errors import ProfileError

    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}")
    source = resolve_source(name_or_path, home=home, allow_download=allow_download)
    path = BUILTIN.get(source) or Path(source)
    try:
        st = path.stat()
    except OSError:
        raise ProfileError(
            f"no prompt set {str(name_or_path)!r}: give a built-in name "
            f"({', '.join(BUILTIN)}, carlos-reference) or a .json/.txt/.py prompt file"
        ) from None
    reference = (
        path.suffix.lower() == ".py"
    )  # carlos-reference resolves to a .py path (see locate_reference_file)
    return _load_cached(
        str(path.resolve()), st.st_mtime_ns, part if reference else "index", reference
    )
