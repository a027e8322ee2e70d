"""The CARLoS reference prompts, read from the user's copy of the reference's ``generative_prompts.py``.

The project does not ship the reference's sentences; it reads them where the user has them:

1. ``$CARLOS_REG_CARLOS_PROMPTS`` (a path to ``generative_prompts.py``), or a profile's
   ``prompt_set = "/path/to/generative_prompts.py"``;
2. an installed ``carlos`` package (its ``generative_prompts.py`` is *located*, never imported:
   importing would run the package's code);
3. with ``CARLOS_REG_ALLOW_DOWNLOAD=1``, one download of the file at the pinned reference commit,
   accepted only when its SHA-256 is the pinned one, then kept in ``<home>/reference/``.

The file is parsed with ``ast`` as literal data and never executed. Accepted shape: top-level
assignments of literal dictionaries, ``prompts_by_category`` a dictionary of category →
(a literal dictionary or the name of one assigned above) of subcategory → 16 prompt strings,
plus plain function definitions (their bodies are never run). Anything that would run code when
the module is imported (calls, imports, decorators, classes, computed values) is refused.

Index set P = the first 8 prompts of every subcategory, query set P' = the last 8, both in the
file's order: category, then subcategory, then prompt (``prompts_for_indexing()`` and
``prompts_for_retrieval()`` of the reference).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from registry.settings import environment
from signer.errors import ProfileError

SOURCE_NAME = "carlos-reference"
ENV_PATH = "CARLOS_REG_CARLOS_PROMPTS"
ENV_URL = (
    "CARLOS_REG_CARLOS_PROMPTS_URL"  # a mirror of the pinned file (tests serve one on loopback)
)
REFERENCE_COMMIT = "c284094"
REFERENCE_URL = (
    "https://raw.githubusercontent.com/shahar-sarfaty/CARLoS/"
    f"{REFERENCE_COMMIT}/src/carlos/generative_prompts.py"
)
REFERENCE_SHA256 = "5bc1b9fe90ae18f51dc2060cb4f2020b3b1a89bcd82cc20ec7928d9fa4349307"
PROMPTS_PER_SUBCATEGORY = 16
SPLIT = 8  # first 8: index set; last 8: query set
MAX_FILE_BYTES = 4 * 1024 * 1024
HOW_TO_PROVIDE = (
    f"set {ENV_PATH}=/path/to/generative_prompts.py (the file of the reference implementation, "
    f"shahar-sarfaty/CARLoS @{REFERENCE_COMMIT}, src/carlos/generative_prompts.py), install the "
    "reference's 'carlos' package, or allow a one-time SHA-256-checked download with "
    "CARLOS_REG_ALLOW_DOWNLOAD=1; without the reference file use the 'carlos-reg' profile"
)


@dataclass(frozen=True)
class ReferencePrompts:
    """The parsed ``prompts_by_category``: (category, subcategory, [16 prompts]) in file order."""

    path: Path
    file_sha256: str
    subcategories: tuple[tuple[str, str, tuple[str, ...]], ...]

    @property
    def is_pinned(self) -> bool:
        return self.file_sha256 == REFERENCE_SHA256

    def part(self, which: str) -> list[tuple[str, str, str]]:
        """(category, subcategory, prompt) of the index (first 8) or query (last 8) part, in order."""
        pick = slice(None, SPLIT) if which == "index" else slice(SPLIT, None)
        return [(c, s, p) for c, s, prompts in self.subcategories for p in prompts[pick]]


class _Refused(Exception):
    pass


def _literal(node: ast.AST, what: str):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _Refused(
            f"{what} (line {getattr(node, 'lineno', '?')}) is not literal data"
        ) from None


def _check_function(node: ast.FunctionDef) -> None:
    if node.decorator_list:
        raise _Refused(
            f"function {node.name!r} (line {node.lineno}) has a decorator, which runs on import"
        )
    args = node.args
    for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
        if not isinstance(default, ast.Constant):
            raise _Refused(
                f"function {node.name!r} (line {node.lineno}) has a computed default, which runs on import"
            )
    for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if (
            a is not None
            and a.annotation is not None
            and not isinstance(a.annotation, (ast.Name, ast.Constant))
        ):
            raise _Refused(f"function {node.name!r} (line {node.lineno}) has computed annotations")
    if node.returns is not None and not isinstance(node.returns, (ast.Name, ast.Constant)):
        raise _Refused(
            f"function {node.name!r} (line {node.lineno}) has a computed return annotation"
        )


def parse_reference_source(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """The subcategories of a ``generative_prompts.py`` text, or ``_Refused`` with the reason."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Refused(f"not Python source ({type(exc).__name__})") from None
    names, top = _read_module_body(tree)
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for key_node, value_node in zip(top.keys, top.values):
        if key_node is None:
            raise _Refused("prompts_by_category uses ** unpacking")
        category = _literal(key_node, "a category name")
        out += _category_subcategories(category, value_node, names)
    if not out:
        raise _Refused("prompts_by_category is empty")
    return out


def _read_module_body(tree: ast.Module) -> tuple[dict[str, object], ast.Dict]:
    """The literal top-level assignments by name and the ``prompts_by_category`` dict node; any
    statement that would run code on import is refused."""
    names: dict[str, object] = {}
    top = None
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring or a bare constant
        if isinstance(node, ast.FunctionDef):
            _check_function(node)
            continue
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name = node.targets[0].id
            if name == "prompts_by_category":
                if not isinstance(node.value, ast.Dict):
                    raise _Refused(f"prompts_by_category (line {node.lineno}) is not a dictionary")
                top = node.value
                continue
            names[name] = _literal(node.value, name)
            continue
        raise _Refused(
            f"line {getattr(node, 'lineno', '?')}: a {type(node).__name__} statement would run code "
            "on import (only literal assignments and plain functions are read)"
        )
    if top is None:
        raise _Refused("no top-level 'prompts_by_category = {...}'")
    return names, top


def _category_subcategories(
    category, value_node: ast.expr, names: dict[str, object]
) -> list[tuple[str, str, tuple[str, ...]]]:
    """One category's subcategories, each with exactly ``PROMPTS_PER_SUBCATEGORY`` prompts."""
    if isinstance(value_node, ast.Name):
        if value_node.id not in names:
            raise _Refused(
                f"category {category!r} names {value_node.id!r}, which is not assigned above it"
            )
        subs = names[value_node.id]
    else:
        subs = _literal(value_node, f"category {category!r}")
    if not isinstance(category, str) or not isinstance(subs, dict) or not subs:
        raise _Refused(
            f"category {category!r} is not a name mapped to a dictionary of subcategories"
        )
    out = []
    for sub, prompts in subs.items():
        if not isinstance(sub, str) or not isinstance(prompts, list):
            raise _Refused(
                f"subcategory {sub!r} of {category!r} is not a name mapped to a list of prompts"
            )
        if len(prompts) != PROMPTS_PER_SUBCATEGORY:
            raise _Refused(
                f"subcategory {sub!r} of {category!r} has {len(prompts)} prompts, not "
                f"{PROMPTS_PER_SUBCATEGORY} (8 for indexing, 8 for retrieval)"
            )
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise _Refused(
                f"subcategory {sub!r} of {category!r} holds a prompt that is not a non-empty string"
            )
        out.append((category, sub, tuple(prompts)))
    return out


def read_reference_file(path: Path) -> ReferencePrompts:
    """Parse a user's ``generative_prompts.py``; ``ProfileError`` with a one-line reason when refused."""
    try:
        if not path.is_file():
            raise ProfileError(
                f"reference prompt file {path} does not exist or is not a regular file; {HOW_TO_PROVIDE}"
            )
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProfileError(
                f"reference prompt file {path} is larger than {MAX_FILE_BYTES // 1024**2} MiB: "
                "not the reference's generative_prompts.py"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read reference prompt file {path}: {exc.strerror}") from None
    return _parse_bytes(data, path)


def _parse_bytes(data: bytes, path: Path) -> ReferencePrompts:
    try:
        text = data.decode("utf-8")
        subs = parse_reference_source(text)
    except UnicodeDecodeError:
        raise ProfileError(f"reference prompt file {path} is not UTF-8 text") from None
    except _Refused as exc:
        raise ProfileError(f"refused reference prompt file {path}: {exc}") from None
    return ReferencePrompts(path, hashlib.sha256(data).hexdigest(), tuple(subs))


def _installed_package_file() -> Path | None:
    """``generative_prompts.py`` of an installed ``carlos`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("carlos")  # a top-level find_spec runs no package code
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "generative_prompts.py"
        if candidate.is_file():
            return candidate
    return None


def cached_download_path(home: Path) -> Path:
    return Path(home) / "reference" / "carlos_generative_prompts.py"


def _download(home: Path) -> Path:
    """Fetch the pinned file once; keep it only when its SHA-256 is the pinned one."""
    import urllib.request

    from registry.files import write_file

    url = environment().get(ENV_URL) or REFERENCE_URL
    target = cached_download_path(home)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - a fixed https URL or the user's mirror
            data = resp.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ProfileError(
            f"could not download the reference prompt file ({type(exc).__name__}); {HOW_TO_PROVIDE}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != REFERENCE_SHA256:
        raise ProfileError(
            f"the downloaded reference prompt file has SHA-256 {digest[:16]}…, not the pinned "
            f"{REFERENCE_SHA256[:16]}… of commit {REFERENCE_COMMIT}: not kept"
        )
    _parse_bytes(data, target)  # the pinned file parses; checked anyway before it is kept
    write_file(target, data)
    return target


def locate_reference_file(home: Path | None = None, *, allow_download: bool = False) -> Path:
    """Where the reference prompts are on this machine (see the module doc for the order)."""
    env = environment().get(ENV_PATH)
    if env:
        # a .py path: that suffix is how a stored profile's prompt source is known to be this format
        if not env.lower().endswith(".py"):
            raise ProfileError(
                f"{ENV_PATH} must name the reference's generative_prompts.py (a .py file), not {env}"
            )
        return Path(env).expanduser()
    found = _installed_package_file()
    if found is not None:
        return found
    if home is not None and cached_download_path(home).is_file():
        return cached_download_path(home)
    if allow_download and home is not None:
        return _download(home)
    raise ProfileError(
        f"the reference prompts (prompt set {SOURCE_NAME!r}) are not on this machine: {HOW_TO_PROVIDE}"
    )
