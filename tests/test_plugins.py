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
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: carlos-reg-{name}\nVersion: 0.3\n"
    )
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
    env = _install_fake_plugin(
        tmp_path,
        "typo",
        """
        from registry import hookimpl
        @hookimpl
        def register_comands(cli):
            pass
    """,
    )
    proc = run_cli("plugins", env=env)
    assert proc.returncode != 0 and "register_comands" in proc.stderr


def test_load_plugins_variable_restricts_what_loads(tmp_path):
    env = _install_fake_plugin(tmp_path, "hello", HELLO)

    def names(e):
        return {
            p["name"]
            for p in json.loads(run_cli("plugins", "--json", env=e, check=True).stdout)["plugins"]
        }

    assert names({**env, "CARLOS_REG_LOAD_PLUGINS": ""}) == {"db", "plugins"}
    assert names({**env, "CARLOS_REG_LOAD_PLUGINS": "hello,listing"}) == {
        "db",
        "plugins",
        "hello",
        "listing",
    }
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
            offenders += [
                f"{path.relative_to(REPO)}: {n}"
                for n in names
                if n.split(".")[0] in {"crawler", "signer", "plugins"}
            ]
    assert offenders == []


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports, at any depth (lazy imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_builtin_plugins_never_import_each_other():
    """Each built-in plugin under plugins/ imports only itself and the core (shared machinery
    belongs in registry/ or signer/, where every plugin may use it)."""
    offenders = []
    for path in (REPO / "plugins").rglob("*.py"):
        rel = path.relative_to(REPO / "plugins")
        own = rel.parts[0].removesuffix(".py")
        offenders += [
            f"plugins/{rel}: {n}"
            for n in _imports(path)
            if n.split(".")[0] == "plugins" and n.split(".")[1:2] != [own]
        ]
    assert offenders == []


def test_the_builtin_plugin_list_names_every_plugin():
    """Every package or module under plugins/ is a built-in plugin (no helper modules hiding
    between them, which the rule above would not see)."""
    from registry.plugins import DEFAULT_PLUGINS

    listed = {m.split(".")[1] for m in DEFAULT_PLUGINS.values() if m.startswith("plugins.")}
    present = {
        p.name.removesuffix(".py")
        for p in (REPO / "plugins").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"
    }
    assert present == listed


def _hookspecs() -> dict[str, list[str]]:
    import inspect

    from registry import hookspecs

    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, "carlos_reg_spec")
    }


def test_every_hookspec_is_documented_with_its_signature():
    guide = (REPO / "docs" / "plugins.md").read_text()
    specs = _hookspecs()
    assert len(specs) >= 6
    missing = [
        f"{name}({', '.join(params)})"
        for name, params in specs.items()
        if f"### `{name}({', '.join(params)})`" not in guide
    ]
    assert missing == []


def test_every_hookspec_is_implemented_by_a_tested_plugin():
    """Each hook has an implementation in the tests or in the example plugin (which
    tests/test_example_plugin.py runs), so no hook goes untested from a plugin's side."""
    import re

    sources = [p.read_text() for p in (REPO / "tests").glob("*.py")]
    sources += [p.read_text() for p in (REPO / "docs" / "example-plugin").rglob("*.py")]
    text = "\n".join(sources)
    untested = [
        name for name in _hookspecs() if not re.search(rf"@hookimpl\s*\n\s*def {name}\(", text)
    ]
    assert untested == []


VERIFIED_LOG = """
    import json, os
    from registry import hookimpl

    @hookimpl
    def lora_file_verified(app, session, version_id, file_id):
        with open(os.environ["VERIFIED_LOG"], "a") as fh:
            fh.write(json.dumps([version_id, file_id]) + "\\n")
"""


def test_lora_file_verified_reaches_a_third_party_plugin(tmp_path):
    """A crawl hands every newly verified file to every plugin implementing the hook, once."""
    import sqlalchemy as sa

    from registry.db import Database
    from registry.models import File
    from tests.crawler_helpers import serve, standard_catalog

    (tmp_path / "plugin").mkdir()
    env = _install_fake_plugin(tmp_path / "plugin", "verifiedlog", VERIFIED_LOG)
    log = tmp_path / "verified.jsonl"
    standard_catalog().write(tmp_path / "mirror")
    home = tmp_path / "home"
    with serve(tmp_path / "mirror") as api:
        env.update(
            {
                "VERIFIED_LOG": str(log),
                "CARLOS_REG_HOME": str(home),
                "CIVITAI_BASE_URL": api.url,
                "CARLOS_REG_LOAD_PLUGINS": "verifiedlog,crawl",
            }
        )
        run_cli("crawl", env=env, check=True)
        seen = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
        run_cli("crawl", env=env, check=True)  # nothing new: the hook is not called again
        assert [tuple(json.loads(line)) for line in log.read_text().splitlines()] == seen
    db = Database(f"sqlite:///{home / 'registry.db'}")
    with db.read() as session:
        verified = session.execute(
            sa.select(File.version_id, File.id).where(File.verified_at.is_not(None))
        ).all()
    db.dispose()
    assert sorted(seen) == sorted(tuple(r) for r in verified) and len(seen) >= 3
