"""The README keeps up with the code: every setting in its table, every linked doc present,
and CI running exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

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
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#[^)]*)?\)", README)
    assert "docs/operations.md" in links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing


DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(((?:docs/)?[\w.-]+\.md)?(?:#([\w-]+))?\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_links_between_docs_land(page: Path) -> None:
    """Every link to a doc (and to a heading in it) from the README or a doc resolves."""
    broken = []
    for target, anchor in LINK.findall(page.read_text()):
        if not target and not anchor:
            continue
        path = page if not target else (ROOT / target if target.startswith("docs/") else page.parent / target)
        if not path.is_file() or (anchor and anchor not in _anchors(path)):
            broken.append(f"{target}#{anchor}" if anchor else target)
    assert not broken, f"{page.name} links to missing docs or headings: {broken}"


def test_first_screen_says_what_it_is_and_shows_the_two_commands() -> None:
    """The first screen (about 25 lines) names the gateway and shows ``make run`` and ``make test``."""
    first_screen = "\n".join(README.splitlines()[:25])
    assert "gateway" in first_screen and "Flask" in first_screen and "Redis" in first_screen
    assert re.search(r"^make run\b", first_screen, re.M) and re.search(r"^make test\b", first_screen, re.M)


def test_benchmark_figures_live_in_docs_not_the_readme() -> None:
    """The README links the figures; docs/performance.md holds them and says how to get them."""
    assert "docs/performance.md" in README
    assert not re.search(r"\d[\d,.]* ?(?:req/s|requests/s)\b|\d ?us\b|^\|.*ratio", README, re.M | re.I)
    performance = (ROOT / "docs" / "performance.md").read_text()
    assert "python -m bench secured" in performance and "--tenants" in performance
    assert re.search(r"^\|.*ratio", performance, re.M), "docs/performance.md should hold the figures' tables"


def test_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: .*\n\t\$\(BIN\)/python -m devtools\.run$", makefile, re.M)
    test_recipe = re.search(r"^test: .*\n((?:\t.*\n?)+)", makefile, re.M)
    assert test_recipe is not None
    assert "\t$(BIN)/python -m pytest" in test_recipe.group(1).splitlines()


SECURITY = ROOT / "docs" / "security.md"
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)+)`")
OWASP_API_TOP_10 = [f"API{n}" for n in range(1, 11)]


def _defined_tests(path: str) -> set[str]:
    """``name`` and ``Class::name`` of every test function the file defines."""
    import ast

    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)
            )
    return {name for name in names if name.split("::")[-1].startswith("test_")}


def test_security_doc_names_only_tests_that_exist() -> None:
    """The threat model cites tests as `tests/<file>.py::<test>`: each must exist, so the doc cannot rot."""
    references = TEST_REFERENCE.findall(SECURITY.read_text())
    assert len(references) >= 20, "docs/security.md should cite the tests behind its controls"
    missing = [
        f"{path}{name}"
        for path, name in references
        if not (ROOT / path).is_file() or name.removeprefix("::") not in _defined_tests(path)
    ]
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_threat_model_answers_every_owasp_api_risk_with_a_test() -> None:
    model = SECURITY.read_text().split("## Threat model", 1)
    assert len(model) == 2, "docs/security.md needs its '## Threat model' section"
    rows = {line.split("|")[1].strip(): line for line in model[1].splitlines() if line.startswith("| API")}
    for risk in OWASP_API_TOP_10:
        row = next((line for key, line in rows.items() if key.startswith(f"{risk} ")), "")
        assert TEST_REFERENCE.search(row), f"{risk} needs a row with the control and a test that proves it"
