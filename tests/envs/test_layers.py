"""The envs layers (DESIGN.md section 3): a game imports only from envs/core, never
from another game, and core never imports a game.

Checked on the source with ``ast`` (every import statement, lazy ones inside
functions included, relative ones resolved), so nothing has to be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENVS = Path(__file__).resolve().parents[2] / "envs"
GAME_FILES = sorted(p for p in (ENVS / "games").glob("*.py") if p.name != "__init__.py")
CORE_FILES = sorted((ENVS / "core").glob("*.py"))


def module_name(path: Path) -> str:
    """``envs/games/goto_object.py`` -> ``envs.games.goto_object``."""
    parts = path.relative_to(ENVS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source``.

    ``from pkg import name`` yields ``pkg.name`` as well as ``pkg``, since ``name``
    may be a submodule (``from envs.games import goto_object``).
    """
    package = module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_violations(path: Path, source: str | None = None) -> list[str]:
    """Imports that break the layering, as ``file:line imports module``."""
    module = module_name(path)
    text = path.read_text(encoding="utf-8") if source is None else source
    bad = []
    for line, name in imported_modules(text, module):
        if not is_within(name, "envs"):
            continue  # the standard library and third-party packages
        if module.startswith("envs.games."):
            ok = is_within(name, "envs.core")
        else:  # core
            ok = not is_within(name, "envs.games") and name != "envs"
        if not ok:
            bad.append(f"{path.relative_to(ENVS.parent)}:{line} imports {name}")
    return sorted(set(bad))


def test_there_are_games_and_core_modules() -> None:
    assert len(GAME_FILES) >= 4 and len(CORE_FILES) >= 5


@pytest.mark.parametrize("path", GAME_FILES, ids=lambda p: p.stem)
def test_game_imports_only_from_core(path: Path) -> None:
    violations = layer_violations(path)
    assert not violations, (
        "A game may import only from envs.core (move what games share into "
        "envs/core):\n" + "\n".join(violations)
    )


@pytest.mark.parametrize("path", GAME_FILES, ids=lambda p: p.stem)
def test_only_navigation_games_import_navigation(path: Path) -> None:
    """``envs.core.navigation`` is the grid-navigation mechanics, not a grab bag: a game
    that is not a navigation game (the probe) takes shared pieces from the core
    module they belong to (``audio``, ``text``), not through navigation."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    uses_navigation = any(
        is_within(name, "envs.core.navigation")
        for _, name in imported_modules(ast.unparse(tree), module_name(path))
    )
    bases = {
        ast.unparse(base)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
    }
    if uses_navigation:
        assert "NavigationGame" in bases, (
            f"{path.name} imports envs.core.navigation but defines no NavigationGame"
        )


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.stem)
def test_core_never_imports_a_game(path: Path) -> None:
    violations = layer_violations(path)
    assert not violations, "envs.core must not depend on the games:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from envs.games.goto_object import instruction_table", True),
        ("import envs.games.find_sound", True),
        ("from envs.games import goto_object", True),
        ("from .goto_object import TEMPLATES", True),
        ("from . import find_sound", True),
        ("from .. import cards", True),
        ("import envs", True),
        ("from envs import make", True),
        ("def f():\n    from envs.sb3 import SB3VecEnv\n", True),
        ("from envs.core.text import instruction_table", False),
        ("from ..core.audio import shared_bank", False),
        ("import numpy as np\nfrom gymnasium import spaces", False),
    ],
)
def test_checker_sees_every_import_form(source: str, flagged: bool) -> None:
    """The checks above rely on this parser: absolute, relative and lazy imports all count."""
    fake = ENVS / "games" / "some_game.py"
    assert bool(layer_violations(fake, source)) == flagged, source
