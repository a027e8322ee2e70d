"""The plugin host: third-party entry points, restriction, broken plugins, the dependency rule."""
from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

from tests.conftest import REPO, run_cli


def _install_fake_plugin(root: Path, name: str, source: str) -> dict:
    """Make an importable module plus a dist-info with a carlos_reg entry point (a real install layout)."""
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    dist = root / f"carlos_reg_{name}-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: carlos-reg-{name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[carlos_reg]\n{name} = {name}\n")
    return {"PYTHONPATH": f"{REPO}:{root}"}


HELLO = """
    import click
    from registry import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command()
        @click.argument("who")
        def hello(who):
            "Say hello."
            click.echo(f"hello {who}")
"""


def test_third_party_plugin_adds_a_command(tmp_path):
    env = _install_fake_plugin(tmp_path, "hello", HELLO)
    assert run_cli("hello", "world", env=env, check=True).stdout == "hello world\n"
    doc = json.loads(run_cli("plugins", "--json", env=env, check=True).stdout)
    plugin = next(p for p in doc["plugins"] if p["name"] == "hello")
    assert plugin["builtin"] is False and plugin["distribution"] == "carlos-reg-hello"
    assert plugin["hooks"] == ["register_commands"]


def test_broken_plugin_warns_and_the_cli_still_works(tmp_path):
    env = _install_fake_plugin(tmp_path, "broken", "raise ImportError('kaboom')\n")
    proc = run_cli("plugins", "--json", env=env, check=True)
    assert "plugin 'broken'" in proc.stderr and "kaboom" in proc.stderr
    assert any("kaboom" in e for e in json.loads(proc.stdout)["errors"])


def test_misspelled_hook_fails_loudly(tmp_path):
    env = _install_fake_plugin(tmp_path, "typo", """
        from registry import hookimpl
        @hookimpl
        def register_comands(cli):
            pass
    """)
    proc = run_cli("plugins", env=env)
    assert proc.returncode != 0 and "register_comands" in proc.stderr


def test_load_plugins_variable_restricts_what_loads(tmp_path):
    env = _install_fake_plugin(tmp_path, "hello", HELLO)
    names = lambda e: {p["name"] for p in json.loads(run_cli("plugins", "--json", env=e, check=True).stdout)["plugins"]}
    assert names({**env, "CARLOS_REG_LOAD_PLUGINS": ""}) == {"db", "plugins"}
    assert names({**env, "CARLOS_REG_LOAD_PLUGINS": "hello,listing"}) == {"db", "plugins", "hello", "listing"}
    proc = run_cli("loras", env={"CARLOS_REG_LOAD_PLUGINS": ""})
    assert proc.returncode == 2 and "No such command 'loras'" in proc.stderr


def test_registry_never_imports_its_dependents():
    """registry/ is the core: crawler, signer and plugins build on it, never the reverse."""
    offenders = []
    for path in (REPO / "registry").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n.split(".")[0] in {"crawler", "signer", "plugins"}]
    assert offenders == []
