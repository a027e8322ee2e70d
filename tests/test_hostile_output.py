"""Hostile text on its way to a terminal (issue #12, items 1 and 2).

Names and server error texts are untrusted: terminal escapes (CSI, OSC, OSC-8 links), bidi
overrides and rich markup in them must reach stdout/stderr as visible, inert text, in every
table, title, message, progress line and log line. The commands run as real subprocesses over a
real registry; stdout and stderr are pipes, so any ESC byte in them came from the data.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from crawler.mirror import BackgroundServer, make_app
from registry import output
from tests.conftest import run_cli
from tests.crawler_helpers import DOWNLOADS, Faults, respond, standard_catalog
from tests.test_import import _small_table

ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\u202egnp.exe\x9b31m\r"
MARKUP_CLOSE = "[/]"
MARKUP_LINK = "[link=https://evil.example/]innocent[/link]"
FORBIDDEN = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def assert_inert(*texts: str) -> None:
    for text in texts:
        for ch in FORBIDDEN:
            assert ch not in text, f"{ch!r} reached the terminal: {text[:300]!r}"


@pytest.fixture
def hostile_registry(tmp_path, sqlite_url):
    table = _small_table()
    table["model_name"] = [f"Evil {ESCAPES}", MARKUP_CLOSE, MARKUP_LINK]
    table["model_id"] = [5, 6, 7]
    path = tmp_path / "hostile.parquet"
    pq.write_table(pa.table(table), path)
    run_cli("--db", sqlite_url, "import", "carlos", str(path), check=True)
    return sqlite_url


def test_clean_makes_controls_and_bidi_visible_and_keeps_text():
    assert output.clean("a\x1b[31mb") == "a\\x1b[31mb"
    assert output.clean("x\u202ey\u2066z") == "x\\u202ey\\u2066z"
    assert output.clean("\x9b\x7f\x00") == "\\x9b\\x7f\\x00"
    assert output.clean("line\nnext\tcol") == "line\nnext\tcol"
    assert output.clean("line\nnext\tcol", one_line=True) == "line\\x0anext\\x09col"
    assert output.clean("Ünïcödé — 水墨 [bold]") == "Ünïcödé — 水墨 [bold]"
    assert (
        output.clean("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    )  # printing it would crash


def test_json_output_survives_a_lone_surrogate(capsys):
    output.emit_json({"name": "lone \ud800 surrogate", "ok": "水墨"})
    text = capsys.readouterr().out
    text.encode("utf-8")  # printable as UTF-8
    assert json.loads(text) == {"name": "lone \ud800 surrogate", "ok": "水墨"}


@pytest.mark.parametrize(
    "args",
    [
        ("loras",),
        ("show", "1000"),
        ("show", "1001"),
        ("show", "1002"),
        ("similar", "1000"),
        ("similar", "1001"),
        ("similar", "1002"),
        ("report", "copyright"),
    ],
)
def test_listing_commands_show_hostile_names_as_inert_text(hostile_registry, args):
    proc = run_cli("--db", hostile_registry, *args)
    assert proc.returncode == 0, (
        proc.stderr
    )  # "[/]" as a title used to be a MarkupError for every user
    assert_inert(proc.stdout, proc.stderr)
    if args[0] == "show":
        shown = {"1000": "\\x1b]0;pwned", "1001": MARKUP_CLOSE, "1002": MARKUP_LINK}[args[1]]
        assert shown in proc.stdout  # visible, literally: neither interpreted nor silently dropped
    if args == ("loras",):
        assert "\\x1b[2J" in proc.stdout and "\\u202e" in proc.stdout and MARKUP_LINK in proc.stdout


def test_titles_with_markup_are_text_not_markup(monkeypatch):
    """What `search "ink [/]"` does: the query becomes part of a table title."""
    buffer = io.StringIO()
    monkeypatch.setattr(output, "out", Console(file=buffer, width=400, force_terminal=True))
    output.table(
        ["a"], [["ink [/] " + ESCAPES]], title="ink [/] " + MARKUP_LINK + ESCAPES, caption="[bold"
    )
    text = (
        buffer.getvalue()
    )  # a terminal: rich's own styling escapes are expected, hostile ones are not
    assert (
        "ink [/]" in text and MARKUP_LINK in text and "[bold" in text
    )  # the title wraps to the table
    assert (
        "evil.example/\x1b" not in text and "\x1b]8;;https://evil" not in text
    )  # no hidden link planted
    assert "\x1b]0;" not in text and "\x07" not in text and "\u202e" not in text


def test_messages_and_log_lines_are_cleaned(capsys):
    output.info(f"warning: {MARKUP_CLOSE} {ESCAPES}")
    captured = capsys.readouterr()
    assert MARKUP_CLOSE in captured.err
    assert_inert(captured.err)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(output.CleanFormatter("%(message)s"))
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "page %s: %s", ("7", ESCAPES), None
    )
    handler.emit(record)
    assert_inert(stream.getvalue())
    assert "\\x1b]0;pwned" in stream.getvalue()


def test_crawl_progress_logs_and_crawls_show_server_text_inertly(tmp_path):
    """A server's error body with escapes goes to crawl progress, -v logs, crawl_error and `crawls RUN`."""
    catalog = standard_catalog()
    catalog.models[0]["name"] = f"Model {ESCAPES}{MARKUP_CLOSE}"
    catalog.write(tmp_path / "mirror")
    faults = Faults()
    faults.add(
        f"{DOWNLOADS}1010", respond(403, {"error": f"denied {ESCAPES} {MARKUP_CLOSE}"}), times=None
    )
    with BackgroundServer(make_app(tmp_path / "mirror", middlewares=[faults.middleware])) as api:
        env = {"CARLOS_REG_HOME": str(tmp_path / "home"), "CIVITAI_BASE_URL": api.url}
        crawl = run_cli("-vv", "crawl", "--retries", "0", "--timeout", "5", env=env)
        crawl_json = run_cli("crawl", "--json", "--retries", "0", env=env)
    assert crawl.returncode == 0, crawl.stderr
    assert_inert(crawl.stdout, crawl.stderr)
    assert "denied \\x1b[2J" in crawl.stderr  # the problem line and the log line, made visible
    runs = run_cli("crawls", env=env)
    run_id = json.loads(run_cli("crawls", "--json", env=env).stdout)["runs"][-1]["id"]
    detail = run_cli("crawls", str(run_id), env=env)
    shown = run_cli("show", "1000", env=env)
    listed = run_cli("loras", env=env)
    for proc in (runs, detail, shown, listed):
        assert proc.returncode == 0, proc.stderr
        assert_inert(proc.stdout, proc.stderr)
    assert (
        "\\x1b]0;pwned" in detail.stdout and MARKUP_CLOSE in detail.stdout
    )  # cells fold: check pieces
    assert "\\x1b]0;pwned" in shown.stdout and MARKUP_CLOSE in shown.stdout
    assert (
        json.loads(crawl_json.stdout)["errors"] >= 1
    )  # JSON keeps the data as it came (escaped by JSON)
