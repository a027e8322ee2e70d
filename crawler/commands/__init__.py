"""The crawler's CLI plugin: ``crawl`` (``crawl_cmd``), ``crawls`` (``crawls_cmd``),
``mirror serve`` and ``mirror export`` (``mirror_cmd``), and the nightly crawl step (``nightly``).

Progress goes to stderr (rich); ``--json`` prints exactly one document on stdout. ``crawl`` exits
non-zero only when the crawl as a whole could not run (then its one-line reason is on stderr and
the run is still recorded); failed pages and files are counted, recorded in ``crawl_error`` and
listed by ``crawls RUN``. Heavy modules (aiohttp) load only inside the commands.
"""

from __future__ import annotations

from crawler.commands.crawl_cmd import crawl
from crawler.commands.crawls_cmd import crawls
from crawler.commands.mirror_cmd import mirror
from crawler.commands.nightly import nightly_crawl
from registry import hookimpl


@hookimpl
def register_commands(cli):
    cli.add_command(crawl)
    cli.add_command(crawls)
    cli.add_command(mirror)


@hookimpl
def register_nightly_steps(register):
    register("crawl", nightly_crawl, 100)
