"""The import direction of DESIGN.md §3, checked on the source: circles and upward imports fail."""

from __future__ import annotations

import ast
from pathlib import Path

import certvault

ROOT = Path(certvault.__file__).parent
# Each domain of services/ may use kernel/ and the domains listed before it, never those after.
DOMAINS = ("kernel", "audit", "directory", "access", "vault", "pki")


def _imports(path: Path) -> set[str]:
    """Every certvault module a file imports, also inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("certvault"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("certvault"))
    return found


def _module(path: Path) -> str:
    return ".".join(("certvault", *path.relative_to(ROOT).with_suffix("").parts))


def _domain(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "services" and parts[2] in DOMAINS:
        return parts[2]
    return None


def _sources(under: str) -> list[Path]:
    return sorted((ROOT / under).rglob("*.py"))


def test_services_is_grouped_by_domain() -> None:
    loose = [p.name for p in (ROOT / "services").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "every service module lives in a domain folder"
    folders = sorted(
        p.name for p in (ROOT / "services").iterdir() if p.is_dir() and p.name[0] != "_"
    )
    assert set(folders) <= set(DOMAINS), folders


def test_domains_import_downward_only() -> None:
    upward = []
    for path in _sources("services"):
        own = _domain(_module(path))
        for imported in _imports(path):
            other = _domain(imported)
            if own and other and DOMAINS.index(other) > DOMAINS.index(own):
                upward.append(f"{_module(path)} -> {imported}")
            if imported.startswith(("certvault.web", "certvault.cli")):
                upward.append(f"{_module(path)} -> {imported}")
    assert upward == [], "\n".join(upward)


def test_no_import_circles_between_service_modules() -> None:
    modules = {_module(p): p for p in _sources("services") if p.name != "__init__.py"}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_crypto_imports_nothing_of_ours_but_errors() -> None:
    outside = [
        f"{_module(p)} -> {i}"
        for p in _sources("crypto")
        for i in _imports(p)
        if not i.startswith(("certvault.crypto", "certvault.errors"))
    ]
    assert outside == []
