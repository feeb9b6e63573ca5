"""The README keeps up with the code: every setting in its table, every linked doc present,
and CI running exactly the README's test command."""

from __future__ import annotations

import re

import pytest

from config import SETTINGS
from devtools.gunicorn import ROOT

README = (ROOT / "README.md").read_text()


def config_table_rows() -> str:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


@pytest.mark.parametrize("name", ["FLASK_ENV", *(s.env for s in SETTINGS)])
def test_every_setting_is_in_the_readme_table(name: str) -> None:
    assert f"`{name}`" in config_table_rows(), f"add {name} to README.md's configuration table"


def test_linked_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)]+\.md)\)", README)
    assert "docs/operations.md" in links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing


def test_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: .*\n\t\$\(BIN\)/python -m devtools\.run$", makefile, re.M)
    test_recipe = re.search(r"^test: .*\n((?:\t.*\n?)+)", makefile, re.M)
    assert test_recipe is not None
    assert "\t$(BIN)/python -m pytest" in test_recipe.group(1).splitlines()
