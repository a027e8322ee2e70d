"""Mutation testing of the modules where the product's meaning lives (``make mutate``; not in CI).

Each group mutates a few modules with mutmut and runs only the fast tests that exercise them, in a
scratch copy of the repository (mutmut rewrites the code it copies into ``mutants/``), so groups
run one at a time, each under its own time limit. The list below is the one place to update when
a module moves. Results: ``<scratch>/<group>/mutants`` (``mutmut results``, ``mutmut show NAME``)
and a summary per group on stdout and in ``<scratch>/summary.json``.

    python tools/mutate.py                       # every group
    python tools/mutate.py search reports        # some groups
    MUTATE_SCRATCH=/tmp/m MUTATE_TIMEOUT=1800 python tools/mutate.py crawler
    python tools/mutate.py signer --only '*AdaptiveTrackerǁ*'   # part of one group's functions
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# group -> (modules to mutate, the tests that exercise them in process, the functions that carry the
# meaning: mutmut name globs; the rest of a module, mostly messages and plumbing, is left out)
GROUPS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "locks": (["registry/locks.py"], ["tests/test_locks.py"], ["registry.locks.*"]),
    "index": (
        ["registry/ranking.py"],
        ["tests/test_search_index.py", "tests/test_search_rules.py"],
        [
            "*RankingIndexǁrank__*",
            "*RankingIndexǁscores__*",
            "*RankingIndexǁexact_duplicates__*",
            "*RankingIndexǁ_apply__*",
        ],
    ),
    "search": (
        ["signer/search.py", "signer/query_encoder.py"],
        ["tests/test_search_rules.py", "tests/test_similar_rules.py"],
        [
            "*SearchEngineǁdefault_filters__*",
            "*CarlosRetrieverǁrank__*",
            "*QueryEncoderǁ_compute_text__*",
            "*QueryEncoderǁimage_vector__*",
            "*SearchEngineǁsimilar__*",
        ],
    ),
    "reports": (
        [
            "plugins/reports/copyright.py",
            "plugins/reports/copyright_rules.py",
            "plugins/reports/__init__.py",
        ],
        ["tests/test_report_rules.py", "tests/test_report_options.py"],
        [
            "*CopyrightReportǁbuild__*",
            "*x__reference_ranks__*",
            "*x__positions__*",
            "plugins.reports.copyright_rules.*",  # every flag, the tier rule and the ordering
            "*_options_from_query__*",
            "*reference_images__*",
        ],
    ),
    "compare": (
        ["signer/claim_check.py"],
        ["tests/test_compare_rules.py", "tests/test_compare_all.py"],
        ["*ClaimCheckerǁcheck__*", "*ClaimCheckerǁ_add_agreement__*", "*x__add_effects__*"],
    ),
    "crawler": (
        ["crawler/client.py", "crawler/sync.py"],
        [
            "tests/test_crawler_listing.py",
            "tests/test_crawler_sync.py",
            "tests/test_crawler_items.py",
            "tests/test_client_rules.py",  # each redirect, token and status rule's exact outcome
            # the same rules met inside whole crawls; slower
            "tests/test_crawler_faults.py",
            "tests/test_hostile_crawl.py",
        ],
        [
            "*Crawlerǁ_list_params__*",
            "*Crawlerǁ_select__*",
            "*x__item_ids__*",
            "*CivitaiClientǁ_open__*",
            "*CivitaiClientǁ_get__*",
            "*CivitaiClientǁ_status_error__*",
            "*RedirectChainǁ*",  # which hop may carry the token
        ],
    ),
    "queue": (
        ["registry/queue.py"],
        # test_retry: complete_with / completed_by (a retried completion), reached in process there
        ["tests/test_queue.py", "tests/test_queue_rules.py", "tests/test_retry.py"],
        ["registry.queue.*"],
    ),
    "signer": (
        ["signer/maths.py", "signer/engine.py"],
        ["tests/test_signer_maths.py", "tests/test_adaptive_rules.py"],
        ["signer.maths.*", "*x_degenerate_images__*"],  # the maths, and black/NaN detection
    ),
}
# imported once in mutmut's fork server (tests/conftest.py): each mutant's process would otherwise
# spend ~8 s importing open_clip and torch before its first test
PRELOAD = "numpy,sqlalchemy,PIL.Image,torch,torchvision,open_clip,diffusers,transformers"
COPIED = ["registry", "crawler", "signer", "plugins", "migrations", "tests", "pyproject.toml"]
STATUSES = (
    "killed",
    "survived",
    "no tests",
    "timeout",
    "suspicious",
    "skipped",
    "segfault",
    "not checked",
)


def _config(modules: list[str], tests: list[str]) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    # SQLite only: the PostgreSQL variants test the same lines, at twice the cost
    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {toml_list(['registry', 'crawler', 'signer', 'plugins'])}\n"
        f"only_mutate = {toml_list(modules)}\n"
        f"also_copy = {toml_list(['migrations'])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list([*tests, '-k', 'not postgres'])}\n"
        # --timeout=0, not -p no:timeout: tests marked timeout(N) must still collect (strict markers)
        f"pytest_add_cli_args = {toml_list(['-p', 'no:cacheprovider', '--timeout=0', '-q'])}\n"
        'process_isolation = "forkserver"\n'
        # each test's fixtures (a registry, the tiny CLIP) are set up again per mutant; a mutant that
        # hangs (a redirect loop, a lost wake-up) is cut after about 3x the tests' own time
        "timeout_constant = 30.0\n"
        "timeout_multiplier = 3.0\n"
        "use_git_change_detection = false\n"
    )


def _prepare(scratch: Path, modules: list[str], tests: list[str]) -> None:
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, scratch / name, ignore=ignore)
        else:
            shutil.copy2(src, scratch / name)
    # on PYTHONPATH before mutmut fills it: a folder missing at interpreter start is never searched
    (scratch / "mutants").mkdir()
    pyproject = scratch / "pyproject.toml"
    text = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject.read_text())
    pyproject.write_text(text + _config(modules, tests))


def _counts(scratch: Path, functions: list[str]) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=scratch,
        capture_output=True,
        text=True,
        check=False,
    )
    counts = dict.fromkeys(STATUSES, 0)
    for line in proc.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status in counts and any(fnmatch.fnmatch(name, f) for f in functions):
            counts[status] += 1
    return counts


def main(argv: list[str]) -> int:
    only: list[str] = []
    while "--only" in argv:  # re-check a part of a group: mutmut name globs within its functions
        at = argv.index("--only")
        if at + 1 == len(argv):
            print("--only needs a glob after it", file=sys.stderr)
            return 2
        only.append(argv[at + 1])
        argv = argv[:at] + argv[at + 2 :]
    wanted = argv or list(GROUPS)
    if only and len(wanted) != 1:
        print("--only needs exactly one group", file=sys.stderr)
        return 2
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        print(
            f"unknown group(s) {', '.join(unknown)}; groups: {', '.join(GROUPS)}", file=sys.stderr
        )
        return 2
    root = Path(os.environ.get("MUTATE_SCRATCH", REPO / ".mutate"))
    limit = float(os.environ.get("MUTATE_TIMEOUT", "3600"))
    children = os.environ.get("MUTATE_CHILDREN", "2")
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for group in wanted:
        modules, tests, functions = GROUPS[group]
        functions = only or functions
        scratch = root / group
        _prepare(scratch, modules, tests)
        print(f"== {group}: {', '.join(modules)} (tests: {', '.join(tests)})", flush=True)
        started = time.monotonic()
        # the tiny models are built once for every group and mutant, not once per forked test run
        env = {
            **os.environ,
            "PYTHONPATH": str(scratch / "mutants"),
            "CARLOS_REG_TEST_MODELS": str(root / "models"),
            "CARLOS_REG_TEST_PRELOAD": PRELOAD,
        }
        try:
            subprocess.run(
                [sys.executable, "-m", "mutmut", "run", "--max-children", children, *functions],
                cwd=scratch,
                env=env,
                timeout=limit,
                check=False,
            )
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        counts = _counts(scratch, functions)
        summary[group] = {
            "modules": modules,
            "tests": tests,
            "functions": functions,
            "finished": finished,
            "seconds": round(time.monotonic() - started),
            **counts,
        }
        print(f"== {group}: {json.dumps(summary[group])}", flush=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
