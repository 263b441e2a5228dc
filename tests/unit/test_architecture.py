"""The dependency rule of docs/architecture.md, checked on the source: layers import downwards
only, and no two modules import each other (directly or through others).

Imports under ``if TYPE_CHECKING:`` are annotations only and do not count; imports inside
functions do count (they run), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

LOWER_LAYERS = (
    "duet.ledger",
    "duet.attestation",
    "duet.protocol",
    "duet.remote",
    "duet.providers",
    "duet.storage",
    "duet.dashboard",
)
HIGHER_LAYERS = ("duet.controller", "duet.witness", "duet.cli", "duet.client", "duet.testing")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of duet that ``path`` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    type_checking_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking_only |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "duet" or name.startswith("duet.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in SRC.joinpath("duet").rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports(path) if target in modules and target != name}
    return edges


def test_lower_layers_never_import_higher_ones() -> None:
    upward = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        if source.startswith(LOWER_LAYERS)
        for target in targets
        if target.startswith(HIGHER_LAYERS)
    )
    assert upward == []


def test_no_import_cycles_between_modules() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_dashboard_depends_on_nothing_of_duets() -> None:
    """The page verifies in the browser; its server side only hands out files, so it must not
    lean on anything it could be tempted to trust (and it can be served by anything)."""
    leaning = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        if source.startswith("duet.dashboard")
        for target in targets
        if not target.startswith("duet.dashboard")
    )
    assert leaning == []


def test_the_programs_sent_to_cvms_use_the_standard_library_only() -> None:
    """duet/guest/ runs on the CVM with its ``python3``: duet is not installed there."""
    import sys

    for path in SRC.joinpath("duet", "guest").glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"
