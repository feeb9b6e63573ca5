"""auth's place in the layers: it imports core (and config), never gateway, and no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AUTH = Path(__file__).resolve().parents[2] / "auth"
# Private names of these libraries may be touched in gateway/fastpath/ only.
GUARDED_LIBRARIES = ("flask", "werkzeug", "flask_login", "flask_talisman", "flask_limiter", "limits", "redis")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # ``from auth import keys`` imports the module auth.keys.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _auth_graph() -> dict[str, set[str]]:
    modules = {f"auth.{p.stem}": p for p in AUTH.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


@pytest.mark.parametrize("path", sorted(AUTH.glob("*.py")), ids=lambda p: p.name)
def test_auth_imports_no_gateway(path: Path) -> None:
    assert not {m for m in _imports(path) if m == "gateway" or m.startswith("gateway.")}


def test_no_auth_module_imports_another_in_a_circle() -> None:
    graph = _auth_graph()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or reaches(nxt, target, seen | {nxt}) for nxt in graph[start] - seen)

    circles = sorted(name for name in graph if reaches(name, name, set()))
    assert not circles, f"modules in an import circle: {circles}"


@pytest.mark.parametrize("path", sorted(AUTH.glob("*.py")), ids=lambda p: p.name)
def test_auth_touches_no_private_attribute_of_a_library(path: Path) -> None:
    tree = ast.parse(path.read_text())
    # Flask-Login's private helpers used to be reached through these names, and plain
    # ``request`` and ``g`` unwrapped for speed.
    touched = {
        (getattr(node.value, "id", None), node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    flask_login_private = {"_load_user", "_login_user", "_update_remember_cookie", "_load_user_from_request"}
    assert not {attr for _, attr in touched} & flask_login_private
    assert not {(name, attr) for name, attr in touched if name in ("request", "g")}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in GUARDED_LIBRARIES
        ):
            assert not [a.name for a in node.names if a.name.startswith("_")], node.module
