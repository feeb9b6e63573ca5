"""The house rules, checked by reading the source (``ast``, nothing imported from the project).

Layers run one way: ``config`` <- ``core`` <- ``auth`` <- the areas under ``gateway``. There
are no import circles, counting imports inside functions (the usual way to hide one). Outside
``gateway/fastpath/`` no code touches a private attribute of the web libraries: their private
names change between releases without notice, and a reader cannot see the tie.

Each rule has a planted-violation test beside it, so a checker that finds nothing cannot pass
by accident.
"""

from __future__ import annotations

import ast
import importlib
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "core", "auth", "gateway")
# Code that ships or runs the gateway, held to the private-attribute rule too.
EXTRA_CODE = ("devtools", "bench", "wsgi.py", "gunicorn.conf.py")
FASTPATH = "gateway/fastpath/"
LIBRARIES = frozenset(
    {"flask", "werkzeug", "flask_login", "flask_talisman", "flask_limiter", "limits", "redis"}
)
# Documented Werkzeug API (LocalProxy), for objects that must outlive the request.
PUBLIC_UNDERSCORE = frozenset({"_get_current_object"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted: gateway.events.routes; a package is named by its folder
    path: str  # relative to the repository, for messages
    tree: ast.Module
    is_package: bool = False


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


# --- reading the source -------------------------------------------------------------------


def module_from_source(name: str, source: str, *, path: str = "", is_package: bool = False) -> Module:
    path = path or name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    return Module(name, path, ast.parse(textwrap.dedent(source), path), is_package)


def _module_name(relative: Path) -> tuple[str, bool]:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def load_modules(roots: Iterable[str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for root in roots:
        top = ROOT / root
        files = [top] if top.is_file() else sorted(top.rglob("*.py"))
        for file in files:
            relative = file.relative_to(ROOT)
            name, is_package = _module_name(relative)
            source = file.read_text()
            modules[name] = module_from_source(name, source, path=str(relative), is_package=is_package)
    return modules


# --- the import graph ---------------------------------------------------------------------


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(module: Module, node: ast.Import | ast.ImportFrom, known: Mapping[str, Module]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = _absolute(module, node)
    for alias in node.names:
        # ``from pkg import sub`` imports the module pkg.sub when there is one, else a name of pkg.
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def project_imports(modules: Mapping[str, Module]) -> list[Import]:
    """Every import between the project's own modules, at any depth (functions included)."""
    found: list[Import] = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, node, modules):
                owner = _owning_module(target, modules)
                if owner and owner != module.name:
                    found.append(Import(module.name, owner, module.path, node.lineno))
    return found


def _owning_module(target: str, modules: Mapping[str, Module]) -> str | None:
    """``target`` or the nearest enclosing project module (``pkg.mod.name`` -> ``pkg.mod``)."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def upward_imports(imports: Iterable[Import], layer: str, forbidden: Iterable[str]) -> list[Import]:
    banned = set(forbidden)
    return [imp for imp in imports if _top(imp.source) == layer and _top(imp.target) in banned]


def import_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def describe_cycle(cycle: list[str], imports: Iterable[Import]) -> str:
    members = set(cycle)
    edges = sorted({str(imp) for imp in imports if imp.source in members and imp.target in members})
    return " <-> ".join(cycle) + "\n    " + "\n    ".join(edges)


# --- private attributes of the libraries --------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _library(dotted: str) -> str | None:
    top = _top(dotted)
    return top if top in LIBRARIES else None


def _library_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted library path (``LoginManager`` -> ``flask_login.LoginManager``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name) and alias.asname:
                    aliases[alias.asname] = alias.name
                elif _library(alias.name):
                    aliases[_top(alias.name)] = _top(alias.name)
        elif isinstance(node, ast.ImportFrom) and not node.level and _library(node.module or ""):
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _library_object(dotted: str) -> object | None:
    """The library class a base-class expression names (importing the library, never the project)."""
    module_path, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def _library_bases(node: ast.ClassDef, aliases: Mapping[str, str]) -> list[object]:
    bases = []
    for base in node.bases:
        dotted = _dotted(base)
        head = dotted.split(".", 1) if dotted else []
        if head and head[0] in aliases:
            target = _library_object(".".join([aliases[head[0]], *head[1:]]))
            if target is not None:
                bases.append(target)
    return bases


def private_overrides(module: Module) -> list[tuple[ast.AST, str]]:
    """Methods that override a private method of a library base class (``_load_user``)."""
    aliases = _library_aliases(module.tree)
    found: list[tuple[ast.AST, str]] = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ClassDef):
            bases = _library_bases(node, aliases)
            for item in node.body:
                name = getattr(item, "name", None)
                if name and _is_private(name) and any(hasattr(base, name) for base in bases):
                    found.append((item, name))
    return found


def project_private_names(modules: Iterable[Module]) -> set[str]:
    """Private names the project defines itself: functions, methods, classes, globals,
    class attributes and ``self._x`` / ``cls._x`` assignments (library overrides excluded)."""
    names: set[str] = set()
    for module in modules:
        overrides = {id(node) for node, _ in private_overrides(module)}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if id(node) not in overrides:
                    names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                    names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if _is_private(name)}


def _private_imports(module: Module) -> Iterator[Violation]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name) and any(map(_is_private, alias.name.split("."))):
                    yield Violation(module.path, node.lineno, f"imports private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level and _library(node.module or ""):
            source = node.module or ""
            if any(map(_is_private, source.split("."))):
                yield Violation(module.path, node.lineno, f"imports from private module {source}")
            for alias in node.names:
                if _is_private(alias.name):
                    yield Violation(module.path, node.lineno, f"imports private {source}.{alias.name}")


_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private_attribute_uses(module: Module, own: set[str]) -> Iterator[Violation]:
    def foreign(name: str) -> bool:
        return _is_private(name) and name not in own and name not in PUBLIC_UNDERSCORE

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and foreign(node.attr):
            yield Violation(module.path, node.lineno, f"touches private attribute .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and foreign(node.args[1].value)
        ):
            yield Violation(module.path, node.lineno, f"{node.func.id}(..., {node.args[1].value!r})")
    for node, name in private_overrides(module):
        yield Violation(module.path, node.lineno, f"overrides the library's private method {name}")  # type: ignore[attr-defined]


def private_violations(modules: Mapping[str, Module]) -> list[Violation]:
    checked = [m for m in modules.values() if not m.path.startswith(FASTPATH)]
    own = project_private_names(checked)
    found = [v for m in checked for v in (*_private_imports(m), *_private_attribute_uses(m, own))]
    return sorted(set(found), key=lambda v: (v.path, v.line, v.what))


# --- the rules on the project -------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules(PACKAGES)


@pytest.fixture(scope="module")
def imports(modules: dict[str, Module]) -> list[Import]:
    return project_imports(modules)


def _listing(items: Iterable[object]) -> str:
    return "\n  " + "\n  ".join(map(str, items))


LAYER_RULES = [
    ("core", ("auth", "gateway")),
    ("auth", ("gateway",)),
    ("config", ("core", "auth", "gateway")),
]


def test_every_package_is_read(modules: dict[str, Module]) -> None:
    """The checks below see the real tree (a wrong root would make them pass on nothing)."""
    assert {"core.errors", "auth.keys", "config", "gateway"} <= modules.keys()
    assert len(modules) > 40


@pytest.mark.parametrize(("layer", "forbidden"), LAYER_RULES, ids=[rule[0] for rule in LAYER_RULES])
def test_no_import_runs_upward(imports: list[Import], layer: str, forbidden: tuple[str, ...]) -> None:
    upward = upward_imports(imports, layer, forbidden)
    assert not upward, f"{layer} must not import {', '.join(forbidden)}:{_listing(upward)}"


def test_no_import_cycles(imports: list[Import]) -> None:
    cycles = import_cycles(imports)
    assert not cycles, "import cycles:" + _listing(describe_cycle(c, imports) for c in cycles)


def test_no_private_library_internals_outside_fastpath() -> None:
    violations = private_violations(load_modules((*PACKAGES, *EXTRA_CODE)))
    assert not violations, (
        "private internals of the web libraries belong in gateway/fastpath/ "
        f"(switch, measured gain, guard test):{_listing(violations)}"
    )


PROXIES = frozenset({"request", "g"})


def unwrapped_proxies(module: Module, proxies: frozenset[str] = PROXIES) -> list[Violation]:
    """``request._get_current_object()`` and the like: public, but no speed trick belongs in auth."""
    return [
        Violation(module.path, node.lineno, f"unwraps {node.value.id}")
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Attribute) and _is_private(node.attr)
        and isinstance(node.value, ast.Name) and node.value.id in proxies
    ]  # fmt: skip


def test_auth_does_not_unwrap_request_or_g(modules: dict[str, Module]) -> None:
    found = [v for m in modules.values() if _top(m.name) == "auth" for v in unwrapped_proxies(m)]
    assert not found, "auth reads request and g through their proxies:" + _listing(found)


# --- the checkers catch what they are meant to --------------------------------------------


def test_checker_catches_an_unwrapped_proxy() -> None:
    planted = module_from_source("auth.access", "def f():\n    return request._get_current_object()\n")
    assert [str(v) for v in unwrapped_proxies(planted)] == ["auth/access.py:2: unwraps request"]


def _planted(sources: Mapping[str, str]) -> dict[str, Module]:
    return {
        name.removesuffix("/"): module_from_source(name.removesuffix("/"), src, is_package=name.endswith("/"))
        for name, src in sources.items()
    }


def test_checker_catches_an_upward_import() -> None:
    planted = _planted(
        {
            "core/": "",
            "core.errors": "def handler():\n    from auth.keys import lookup\n",
            "auth/": "",
            "auth.keys": "from ..gateway import extensions\nlookup = 1\n",
            "gateway/": "",
            "gateway.extensions": "from core import errors\n",
            "config/": "import os\nif os.environ:\n    import gateway\n",
        }
    )
    imports = project_imports(planted)
    assert [str(i) for i in upward_imports(imports, "config", ("core", "auth", "gateway"))] == [
        "config/__init__.py:3: config imports gateway"
    ]
    assert [str(i) for i in upward_imports(imports, "core", ("auth", "gateway"))] == [
        "core/errors.py:2: core.errors imports auth.keys"
    ]
    assert [str(i) for i in upward_imports(imports, "auth", ("gateway",))] == [
        "auth/keys.py:1: auth.keys imports gateway.extensions"
    ]
    assert upward_imports(imports, "gateway", ("config",)) == []


def test_checker_catches_a_cycle_hidden_in_a_function() -> None:
    planted = _planted(
        {
            "auth/": "",
            "auth.loaders": "from auth.sessions import store\n",
            "auth.sessions": "def store():\n    from . import loaders\n",
            "auth.keys": "from auth import loaders\n",
        }
    )
    imports = project_imports(planted)
    cycles = import_cycles(imports)
    assert cycles == [["auth.loaders", "auth.sessions"]]
    message = describe_cycle(cycles[0], imports)
    assert "auth/sessions.py:2: auth.sessions imports auth.loaders" in message
    assert import_cycles(project_imports(_planted({"a": "import b\n", "b": ""}))) == []


def test_checker_catches_private_library_access() -> None:
    planted = _planted(
        {
            "gateway.security": """\
                from flask_limiter._extension import Limiter
                from werkzeug.datastructures import _private_helper
                from flask_login import LoginManager
                import redis._parsers

                class Manager(LoginManager):
                    def _load_user(self):
                        return super()._load_user()

                    def _own_helper(self):
                        return self._cache

                    def __init__(self):
                        self._cache = {}

                def after(response, request, g):
                    response.headers._list.append(("X", "1"))
                    request._get_current_object()
                    response.__class__
                    getattr(g, "_login_user", None)
                    return Manager()._own_helper()
            """,
            "gateway.fastpath/": "def fast(response):\n    response.headers._list.clear()\n",
        }
    )
    found = [f"{v.line}: {v.what}" for v in private_violations(planted)]
    assert found == [
        "1: imports from private module flask_limiter._extension",
        "2: imports private werkzeug.datastructures._private_helper",
        "4: imports private module redis._parsers",
        "7: overrides the library's private method _load_user",
        "8: touches private attribute ._load_user",
        "17: touches private attribute ._list",
        "20: getattr(..., '_login_user')",
    ]
