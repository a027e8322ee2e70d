"""One settings module: every environment variable documented there and in the README, read
nowhere else; configuration handed to other code and processes explicitly."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from registry.settings import VARIABLES, Environment, environment, readme_table, use_environment
from tests.conftest import REPO

PRODUCT = ("registry", "crawler", "signer", "plugins")


def _product_files():
    for package in PRODUCT:
        yield from (REPO / package).rglob("*.py")


def test_nothing_but_the_settings_module_reads_the_environment():
    offenders = []
    for path in _product_files():
        if path == REPO / "registry" / "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name in ("environ", "getenv", "environb", "putenv", "unsetenv"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert offenders == []


def test_every_variable_the_code_names_is_documented():
    documented = {v.name for v in VARIABLES}
    named = set()
    for path in _product_files():
        named |= set(re.findall(r"[\"']((?:CARLOS_REG|CIVITAI)_[A-Z_]+)[\"']", path.read_text()))
    assert named - {"CIVITAI_SITE"} <= documented  # CIVITAI_SITE is a constant, not a variable
    assert len(documented) == len(VARIABLES)


def test_the_readme_table_is_the_settings_module():
    readme = (REPO / "README.md").read_text()
    assert readme_table() in readme
    rows = [
        line for line in readme.splitlines() if re.match(r"\| `(CARLOS_REG|CIVITAI)_\w+` \|", line)
    ]
    assert len(rows) == len([v for v in VARIABLES if v.name.startswith(("CARLOS_REG", "CIVITAI"))])


def test_an_undocumented_name_is_refused():
    with pytest.raises(KeyError, match="not a documented"):
        environment().get("CARLOS_REG_NO_SUCH_THING")
    with pytest.raises(KeyError):
        Environment().with_values(CARLOS_REG_TYPO="1")


def test_settings_follow_an_environment_handed_over_in_process(monkeypatch, tmp_path):
    from registry.settings import Settings

    monkeypatch.setenv("CARLOS_REG_PROFILE", "paper")
    env = environment().with_values(
        CARLOS_REG_PROFILE="tiny", CARLOS_REG_DB=None, CARLOS_REG_HOME=str(tmp_path)
    )
    with use_environment(env):
        inside = Settings.load()
    outside = Settings.load()
    assert (inside.default_profile, inside.home) == ("tiny", tmp_path)
    assert inside.db_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert outside.default_profile == "paper"


def test_a_subprocess_gets_the_environment_built_for_it(monkeypatch, tmp_path):
    monkeypatch.setenv("CIVITAI_API_KEY", "not-for-the-child")
    monkeypatch.setenv("PATH_LIKE_UNRELATED", "kept")
    env = environment().with_values(CIVITAI_API_KEY=None, CARLOS_REG_HOME=str(tmp_path))
    code = (
        "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
        "('CIVITAI_API_KEY', 'CARLOS_REG_HOME', 'PATH_LIKE_UNRELATED')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env.for_subprocess(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == (
        '{"CIVITAI_API_KEY": null, "CARLOS_REG_HOME": "%s", "PATH_LIKE_UNRELATED": "kept"}'
        % tmp_path
    )
