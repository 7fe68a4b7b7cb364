"""The package layout: layers import only downwards, no import cycles, the public names stay."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mbm_agent

PACKAGE = Path(mbm_agent.__file__).parent

#: What each part of mbm_agent may import from the rest of mbm_agent (docs/architecture.md).
#: "beside" holds the modules next to the layers (evaluation, stats, compare, plots);
#: evaluation uses the training envs and the trainer evaluates, so they share a rank.
BESIDE = {"evaluation", "stats", "compare", "plots"}
ALLOWED: dict[str, set[str]] = {
    "encoding": set(),
    "sb3": {"encoding"},
    "training": {"encoding", "sb3", "beside"},
    "beside": {"encoding", "sb3", "training", "beside"},
    "deploy": {"encoding", "sb3", "training", "beside"},
    "imitation": {"encoding", "sb3", "training", "beside", "deploy"},
    "grid": {"encoding", "sb3", "training", "beside", "deploy", "imitation"},
    "rllib": {"encoding", "sb3", "training", "beside", "deploy"},
    "view": {"encoding", "sb3", "training", "beside", "deploy"},
}
#: Modules every part may import: version, import-time fixes.
BASE = {"_version", "_compat"}


def _part(module: str) -> str | None:
    """The layer of a dotted module name under mbm_agent (None: the package itself or the top)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    head = parts[1]
    if head in BESIDE:
        return "beside"
    return head if head in ALLOWED else None


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("mbm_agent", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """mbm_agent modules that ``module`` imports, at the top or inside functions alike."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "mbm_agent" or n.startswith("mbm_agent."))
    return found


MODULES = _modules()
GRAPH = {
    name: {m for m in _imports(name, path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) is not None))
def test_layers_import_only_downwards(module: str) -> None:
    part = _part(module)
    assert part is not None
    allowed = ALLOWED[part] | {part}
    wrong = sorted(
        target
        for target in GRAPH[module]
        if target.split(".")[1] not in BASE
        and target != "mbm_agent"
        and (_part(target) is None or _part(target) not in allowed)
    )
    assert not wrong, f"{module} ({part}) imports {wrong}; {part} may use {sorted(allowed)}"


def test_no_module_imports_the_package_root_or_the_cli() -> None:
    """Submodules import what they need from where it lives, never from mbm_agent or the CLI."""
    offenders = sorted(
        (name, target)
        for name, targets in GRAPH.items()
        for target in targets
        if name != "mbm_agent" and target in ("mbm_agent", "mbm_agent.cli")
    )
    assert not offenders


def test_no_import_cycles() -> None:
    """Function-local imports count too: a local import that dodges a cycle is still one."""
    # A child importing its parent package is the package running its own __init__.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in GRAPH.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_public_names_resolve() -> None:
    for name in mbm_agent.__all__:
        assert getattr(mbm_agent, name) is not None, name


def test_old_module_paths_are_aliases_of_the_deploy_modules() -> None:
    from mbm_agent import export
    from mbm_agent.deploy import export as deploy_export
    from mbm_agent.deploy import runtime

    assert export.export_policy is deploy_export.export_policy is mbm_agent.export_policy
    assert export.load_exported is runtime.load_exported is mbm_agent.load_exported
    assert export.ExportedPolicy is runtime.ExportedPolicy
    for name in export.__all__:
        assert getattr(export, name) is not None, name


def test_keras_twin_alias() -> None:
    pytest.importorskip("tensorflow")
    keras_twin = importlib.import_module("mbm_agent.keras_twin")
    from mbm_agent.deploy import keras as twin

    for name in keras_twin.__all__:
        assert getattr(keras_twin, name) is getattr(twin, name), name
