"""The layering is a test (architecture.md, habit 17): dependencies point one way.

Domain layers, lowest first: ``sam`` core (env, locks, ids, ...) ← ``orgs`` ← ``subscriptions``
← ``hypervisors``. On top of all of them: every app's views, API, admin, forms, urls and
template tags, the Candlepin adapter (``sam/candlepin``), the REST API bases (``sam/api``), the
web UI and the management commands. A module may import its own layer or lower ones, never a
higher one; domain modules import each other without cycles; nothing imports another module's
private (``_name``) helpers. Module-level and function-level imports count alike: a cycle hidden
in a function is still a cycle. No Django, no database: this reads the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sam", "orgs", "subscriptions", "hypervisors")
DOMAIN_RANK = {"sam": 0, "orgs": 1, "subscriptions": 2, "hypervisors": 3}
TOP = 4
# A module with one of these names (or inside a package of that name) is the interface layer.
INTERFACE_NAMES = {"views", "api", "admin", "forms", "urls", "templatetags", "serializers"}
# Modules of the project package ``sam`` that sit on top of the apps (``sam.apps`` is the
# composition root: it loads every app's tasks).
SAM_INTERFACE = ("sam.candlepin", "sam.api", "sam.management", "sam.templatetags", "sam.ui",
                 "sam.ui_urls", "sam.urls", "sam.dashboard", "sam.dashboard_urls", "sam.wsgi",
                 "sam.admin", "sam.apps", "sam.middleware")
WEB_UI = {"views", "forms", "templatetags"}
API = {"api", "serializers"}
# Known and waiting for a change in a file another change owns; each names the fix. Shrinks only.
PENDING = {
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the project packages (no migrations)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def rank(module: str) -> int:
    """The layer of a module: 0-3 for the domain layers, 4 for the interface on top."""
    parts = module.split(".")
    if any(module == p or module.startswith(p + ".") for p in SAM_INTERFACE):
        return TOP
    if INTERFACE_NAMES.intersection(parts[1:]):
        return TOP
    return DOMAIN_RANK[parts[0]]


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (longest known prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports(module: str, path: Path, known: dict[str, Path]):
    """(line, imported module, private names) for every import of a project module, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, known)
                if target:
                    yield node.lineno, target, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # ``from pkg import submodule`` imports the submodule.
                target = resolve(f"{base}.{alias.name}", known) or resolve(base, known)
                if target:
                    private = [alias.name] if alias.name.startswith("_") else []
                    yield node.lineno, target, private


def kinds(module: str) -> set[str]:
    return set(module.split(".")[1:])


def sideways(module: str, target: str) -> str | None:
    """Why an interface module may not import another one: the web UI and the API share query
    and filter modules instead of importing each other; one app's interface does not import
    another app's (shared bases live in ``sam``)."""
    if kinds(module) & WEB_UI and kinds(target) & API or kinds(module) & API and kinds(target) & WEB_UI:
        return "the web UI and the API import each other (share a queries/filters module)"
    app, other = module.split(".")[0], target.split(".")[0]
    if rank(module) == rank(target) == TOP and app != other and "sam" not in (app, other):
        return "one app's interface imports another's (shared bases belong in sam)"
    return None


def check(root: Path, pending: dict | None = None) -> list[str]:
    """Every upward, sideways or private import and every domain import cycle, as
    ``file:line: why``; ``pending`` pairs (module, target) are left out."""
    known = modules(root)
    pending = pending or {}
    problems = []
    graph: dict[str, dict[str, str]] = {}
    for module, path in known.items():
        where = path.relative_to(root)
        package = module.rpartition(".")[0]
        for line, target, private in imports(module, path, known):
            if target == module or module.startswith(target + ".") or (module, target) in pending:
                continue  # the module itself or its own package's __init__
            if rank(target) > rank(module):
                problems.append(f"{where}:{line}: {module} (layer {rank(module)}) imports "
                                f"{target} (layer {rank(target)}): upward")
            elif why := sideways(module, target):
                problems.append(f"{where}:{line}: {module} imports {target}: {why}")
            if target.rpartition(".")[0] != package:  # siblings in one package may share
                for name in private:
                    problems.append(f"{where}:{line}: {module} imports private {target}.{name}")
            if rank(module) < TOP and rank(target) < TOP:
                graph.setdefault(module, {}).setdefault(target, f"{where}:{line}")
    problems.extend(cycles(graph))
    return problems


def cycles(graph: dict[str, dict[str, str]]) -> list[str]:
    """One message per strongly connected group of domain modules (Tarjan), with its edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    messages = []
    for group in groups:
        members = set(group)
        edges = [f"{graph[a][b]}: {a} -> {b}" for a in group for b in sorted(graph.get(a, {}))
                 if b in members]
        messages.append("import cycle between " + ", ".join(group) + ":\n    " + "\n    ".join(edges))
    return messages


@pytest.fixture(scope="session", autouse=True)
def _no_stray_test_db_sessions():
    """No database here (the suite's fixture of this name would create one)."""
    yield


def test_dependencies_point_one_way():
    problems = check(ROOT, PENDING)
    assert not problems, "layering broken (architecture.md):\n" + "\n".join(problems)


def test_pending_exceptions_are_still_needed():
    """An exception whose import is gone must leave ``PENDING`` (the list only shrinks)."""
    known = modules(ROOT)
    present = {(m, t) for m, p in known.items() for _, t, _ in imports(m, p, known)}
    assert set(PENDING) <= present, set(PENDING) - present


# --- the checker itself ----------------------------------------------------------------------

def tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


CLEAN = {
    "sam/locks.py": "KEY = 1\n",
    "orgs/models.py": "from sam import locks\n",
    "subscriptions/services.py": "from orgs.models import *\n",
    "hypervisors/ingest.py": "from subscriptions import services\n",
    "hypervisors/views.py": "from hypervisors.ingest import *\nfrom orgs import models\n",
    "orgs/admin.py": "from hypervisors import ingest\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    assert check(tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("name, source, expected", [
    ("orgs/services.py", "import subscriptions.services\n",
     "orgs/services.py:1: orgs.services (layer 1) imports subscriptions.services (layer 2): upward"),
    ("subscriptions/coverage.py", "def f():\n    from hypervisors.models import Report\n",
     "subscriptions/coverage.py:2: subscriptions.coverage (layer 2) imports hypervisors.models"),
    ("subscriptions/engine.py", "from .views import x\n",
     "subscriptions/engine.py:1: subscriptions.engine (layer 2) imports subscriptions.views (layer 4)"),
    ("sam/locks.py", "from orgs import models\n", "sam/locks.py:1: sam.locks (layer 0) imports orgs.models"),
    ("orgs/views.py", "from hypervisors.ingest import _apply\n",
     "orgs/views.py:1: orgs.views imports private hypervisors.ingest._apply"),
    ("hypervisors/views.py", "from hypervisors.api import rows\n",
     "hypervisors/views.py:1: hypervisors.views imports hypervisors.api: the web UI and the API"),
    ("subscriptions/admin.py", "from orgs.admin import SamAdmin\n",
     "subscriptions/admin.py:1: subscriptions.admin imports orgs.admin: one app's interface"),
])
def test_checker_finds_an_upward_or_private_import(tmp_path, name, source, expected):
    files = {**CLEAN, "hypervisors/ingest.py": "def _apply(): pass\n", "hypervisors/api.py": "",
             "hypervisors/models.py": "", "subscriptions/views.py": "", name: source}
    problems = check(tree(tmp_path, files))
    assert any(p.startswith(expected) for p in problems), problems


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    files = {**CLEAN,
             "subscriptions/tasks.py": "from subscriptions import services\n",
             "subscriptions/services.py": "def heal():\n    from subscriptions.tasks import t\n"}
    problems = check(tree(tmp_path, files))
    assert len(problems) == 1 and problems[0].startswith(
        "import cycle between subscriptions.services, subscriptions.tasks"), problems
    assert "subscriptions/services.py:2: subscriptions.services -> subscriptions.tasks" in problems[0]
