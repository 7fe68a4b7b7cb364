"""What the grid is: the games (:data:`REFERENCE_GAMES`, :data:`EARLIER_VERSIONS`, :data:`THIRD_PARTY_GAMES`), the variants, the cells, and when a cell is done."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import envs
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.evaluation import report_name
from mbm_agent.training.config import resolve_config

#: Report of a run's policy with sampled actions (the trainer's ``eval.json`` is greedy).
SAMPLED = report_name(deterministic=False)


@dataclass(frozen=True)
class BCRecipe:
    """The ``bc-ppo`` variant: clone the expert, then fine-tune the clone with PPO.

    The clone (and so the fine-tuned policy) has the encoder the game's own config
    trains with (:meth:`GameSpec.encoder`).

    Attributes:
        episodes: Expert episodes recorded (``mbm-agent demos``); their env steps
            count towards the budget next to PPO's.
        noise: DART noise of the recording (random action executed, expert's label kept).
        epochs: BC epochs (the lowest held-out-loss epoch is kept).
        ppo_steps: PPO steps after BC (``train --init-from``).
        learning_rate: PPO's learning rate (lower than from scratch, to keep the clone).
    """

    episodes: int
    noise: float
    epochs: int
    ppo_steps: int = 300_000
    learning_rate: float = 2e-4


@dataclass(frozen=True)
class GameSpec:
    """What the reference grid needs to know about one game.

    Attributes:
        env_id: The game id.
        required: Modalities (observation keys) the design makes necessary (for a
            third-party game: the key whose worth the grid measures; its
            ``mask-<key>`` variant trains without it).
        chance: Success rate the design implies without a required modality (None
            for third-party games, whose design does not say).
        steps: Training budget per run when the grid's differs from the game's config
            (None, the default: the config's ``steps``, read by :meth:`budget`).
        note: Why the chance level is what it is (or what the key carries).
        bc: The ``bc-ppo`` recipe, for games PPO does not learn from scratch
            within the budget.
        sampled: Score runs on the policy's sampled actions rather than its
            greedy (argmax) ones. For the egocentric navigation games: a memoryless
            policy of a partially observed game may need to randomise (Singh,
            Jaakkola & Jordan, 1994), and the argmax of an imperfect one can cycle
            (turn left, turn right, ...) until time-out. Both modes are evaluated
            and summarised either way.
        extra: The pip extra the game needs (None: installed with mbm-agent).
        scored_by: ``"success"`` (the default: the game reports ``is_success``) or
            ``"return"`` for games without a success (Atari: points); the summary then
            leaves the success columns empty and gives the masked runs' returns.
    """

    env_id: str
    required: tuple[str, ...]
    chance: float | None
    steps: int | None = None
    note: str = ""
    bc: BCRecipe | None = None
    sampled: bool = False
    extra: str | None = None
    scored_by: str = "success"

    def encoder(self) -> EncoderConfig:
        """The encoder of the game's own config (``mbm_agent/configs``), read from there.

        The ablations and the BC recipe train with it.
        """
        return resolve_config(self.env_id).encoder_config()

    def budget(self) -> int:
        """Training steps per run: :attr:`steps`, else the game's own config's ``steps``."""
        return self.steps if self.steps is not None else resolve_config(self.env_id).steps

    def components(self) -> dict[str, dict[str, Any]]:
        """The learning components the game's own config turns on, each with its removal.

        Keys are the ``no-<component>`` variants of ``mbm-agent bench --components``
        (:data:`COMPONENTS`, in that order); each value is the config override that
        takes that one component out and keeps the rest of the recipe. The fusion
        mode is not among them: it is the grid's own axis (``--fusions``).
        """
        cfg = resolve_config(self.env_id)
        algo = cfg.algo_kwargs
        on = {
            "memory": bool(algo.get("memory")),
            "reward-prediction": bool(algo.get("aux_reward_coef")),
            "curriculum": bool(cfg.curriculum),
            "cells": cfg.encoder.image_encoder == "cells",
            "novelty": cfg.novelty_bonus > 0,
            "final-phase": bool(cfg.final_phase),
        }
        return {f"no-{name}": copy.deepcopy(COMPONENTS[name]) for name in COMPONENTS if on[name]}

    @property
    def headline(self) -> str:
        """Report (file stem) the summary scores: :data:`SAMPLED` or greedy ``eval``."""
        return SAMPLED if self.sampled else "eval"


REFERENCE_GAMES: dict[str, GameSpec] = {
    "mbm/ModalityProbe-v0": GameSpec(
        "mbm/ModalityProbe-v0",
        ("image",),
        0.25,
        10_000,  # half its config's: PPO learns it in ~3k steps (test_probe_learning)
        "cue=image: one of 4 answers is shown only in the frame",
    ),
    "mbm/FindSound-v0": GameSpec(
        "mbm/FindSound-v0",
        ("audio",),
        1 / 3,
        note="3 look-alike objects; only the sound says which one to reach",
        sampled=True,
    ),
    "mbm/GoToObject-v1": GameSpec(
        "mbm/GoToObject-v1",
        ("text",),
        1 / 4,
        note="4 objects, two colours by two shapes; only the instruction says which one to reach",
        bc=BCRecipe(10_000, 0.2, 10),
        sampled=True,
    ),
    "mbm/SoundMaze-v1": GameSpec(
        "mbm/SoundMaze-v1",
        ("text", "audio"),
        1 / 3,
        note="3 identical objects; the text names a sound, the audio says where it is",
        bc=BCRecipe(8_000, 0.2, 8),
        sampled=True,
    ),
}

#: Our games' earlier versions (``envs``' Version History), named with ``--games`` to
#: reproduce earlier results; never in the default grid.
EARLIER_VERSIONS: dict[str, GameSpec] = {
    "mbm/GoToObject-v0": replace(
        REFERENCE_GAMES["mbm/GoToObject-v1"],
        env_id="mbm/GoToObject-v0",
        chance=1 / 3,
        note="3 objects; the target is the one whose colour and shape both recur (v1 closes this)",
    ),
    "mbm/SoundMaze-v0": replace(
        REFERENCE_GAMES["mbm/SoundMaze-v1"],
        env_id="mbm/SoundMaze-v0",
        note="3 identical objects; only the target is sure to be reachable (v1 closes this)",
    ),
}

#: Games no one here wrote, with their sense that ours lack or have another way (``mbm-agent
#: bench --games ID``; never in the default grid: they need extras and hours). Scored on
#: sampled actions: RL Zoo's Atari convention, and MiniHack's agents sample too.
THIRD_PARTY_GAMES: dict[str, GameSpec] = {
    "mbm-atari/Seaquest-v0": GameSpec(
        "mbm-atari/Seaquest-v0",
        ("sound",),
        None,
        250_000,  # 1M emulator frames, a quarter of its config's: 3 seeds of each variant
        "the sound carries the low-oxygen alarm (the frame: a thin bar); scored on full "
        "games with raw points, as RL Zoo's",
        sampled=True,
        extra="atari",
        scored_by="return",
    ),
    "MiniHack-Eat-v0": GameSpec(
        "MiniHack-Eat-v0",
        ("message",),
        None,
        note="the message asks 'eat it? [ynq]', and says when y (also a move) answers it",
        sampled=True,
        extra="minihack",
    ),
}

#: Every game the grid knows: the default grid's, the earlier versions of our games and
#: the third-party ones (the last two only when named with ``--games``).
ALL_GAMES: dict[str, GameSpec] = {**REFERENCE_GAMES, **EARLIER_VERSIONS, **THIRD_PARTY_GAMES}

#: PPO without our additions (reward prediction, memory): SB3's PPO exactly.
PLAIN_PPO: dict[str, Any] = {"aux_reward_coef": 0.0, "memory": 0}

#: The recipe's components (``mbm-agent train``'s learning from scratch, issue 16) and the
#: override that takes each out: its ``no-<component>`` variant (:meth:`GameSpec.components`).
COMPONENTS: dict[str, dict[str, Any]] = {
    "memory": {"algo_kwargs": {"memory": 0}},
    "reward-prediction": {"algo_kwargs": {"aux_reward_coef": 0.0}},
    "curriculum": {"curriculum": None},
    "cells": {"encoder": {"image_encoder": EncoderConfig().image_encoder}},
    "novelty": {"novelty_bonus": 0.0},
    "final-phase": {"final_phase": None},
}

#: The variant that clones the game's expert, then fine-tunes with PPO (:class:`BCRecipe`).
BC_PPO = "bc-ppo"
#: Demonstrations of seed ``s`` start at world ``1 + DEMO_SEED_STRIDE * s``.
DEMO_SEED_STRIDE = 100_000


def uses_bc(game: GameSpec, variant: str) -> bool:
    """Whether a variant follows the game's BC recipe (clone, then fine-tune with PPO).

    Only ``bc-ppo`` does: every other variant, the ``mask-<m>`` ablations included,
    learns from scratch with the game's own config (issue 16).
    """
    return game.bc is not None and variant == BC_PPO


def full_sense(variant: str) -> bool:
    """Whether a variant sees every modality (its masked evaluations are then run)."""
    return variant in FUSION_MODES or variant == BC_PPO


#: Overrides that make every run a smoke test (``--quick``).
QUICK: dict[str, Any] = {
    "n_envs": 4,
    "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "eval_every": 256,
    "eval_episodes": 4,
    "final_eval_episodes": 8,
    "checkpoint_every": 256,
    "gif_episodes": 0,
}
QUICK_STEPS = 512


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes:
        game: The game's spec.
        variant: A fusion mode, ``mask-<modality>``, ``sb3-default`` or ``bc-ppo``.
        seed: Training seed.
        overrides: Config overrides on top of the game's defaults.
    """

    game: GameSpec
    variant: str
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Run folder name: ``<game>-<variant>-s<seed>``."""
        game = envs.game_name(self.game.env_id)
        return f"{game}-{self.variant}-s{self.seed}"


def build_grid(
    games: Sequence[str] | None = None,
    fusions: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    ablations: bool = True,
    baseline: bool = True,
    bc: bool = True,
    components: bool = False,
    steps: int | None = None,
) -> list[Cell]:
    """The grid's cells: games x (fusions + bc-ppo + masks + components + baseline) x seeds.

    Args:
        games: Game ids (default: all of :data:`REFERENCE_GAMES`; those of
            :data:`EARLIER_VERSIONS` and :data:`THIRD_PARTY_GAMES` when named).
        fusions: Fusion modes (default: all).
        seeds: Training seeds.
        ablations: Add one ``mask-<modality>`` variant per required modality.
        baseline: Add the ``sb3-default`` variant.
        bc: Add the ``bc-ppo`` variant for games with a :class:`BCRecipe`.
        components: Add one ``no-<component>`` variant per component of the game's
            recipe (:meth:`GameSpec.components`): the recipe's ablation, each
            component taken out in turn, at the same budget.
        steps: Budget per run (default: each game's; for ``bc-ppo`` the PPO
            steps after cloning).

    Raises:
        ValueError: Unknown game or fusion mode, or no seeds.
    """
    games = list(games or REFERENCE_GAMES)
    fusions = list(fusions or FUSION_MODES)
    unknown = [g for g in games if g not in ALL_GAMES]
    if unknown:
        raise ValueError(f"Unknown game(s) {unknown}; the grid knows {list(ALL_GAMES)}.")
    names = [envs.game_name(g) for g in games]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(
            f"Two versions of {', '.join(twice)} in one grid would share run names; "
            "bench each version into its own --out folder."
        )
    bad = [f for f in fusions if f not in FUSION_MODES]
    if bad:
        raise ValueError(f"Unknown fusion mode(s) {bad}; known: {list(FUSION_MODES)}.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    cells = []
    for env_id in games:
        game = ALL_GAMES[env_id]
        # Only what a variant changes: the rest (e.g. the encoder of the ablations and of
        # the BC recipe) is the game's own config, resolved when the cell runs; a cell
        # that starts from a clone takes the clone's architecture (train --init-from).
        variants: list[tuple[str, dict[str, Any]]] = [(f, {"fusion": f}) for f in fusions]
        if bc and game.bc is not None:
            # The clone is a memoryless policy without a reward head, trained on the
            # game's own rooms: the fine-tuning keeps that architecture (PPO alone).
            fine_tune = {"algo_kwargs": {"learning_rate": game.bc.learning_rate, **PLAIN_PPO}}
            variants.append((BC_PPO, {**fine_tune, "curriculum": None}))
        if ablations:
            for m in game.required:
                # the game's own recipe (its config, from scratch) without m
                variants.append((f"mask-{m}", {"modalities": {m: "ignore"}}))
        if components:
            variants.extend(game.components().items())
        if baseline:
            # SB3's own MultiInputPolicy and PPO, as a user of SB3 alone gets them.
            variants.append(
                ("sb3-default", {"extractor": "sb3", "algo_kwargs": PLAIN_PPO, "curriculum": None})
            )
        for variant, overrides in variants:
            budget = {"steps": steps or default_steps(game, variant)}
            for seed in seeds:
                cells.append(Cell(game, variant, seed, {**overrides, **budget, "seed": seed}))
    return cells


def default_steps(game: GameSpec, variant: str) -> int:
    """A variant's budget unless ``--steps`` says otherwise (``bc-ppo``: its PPO steps)."""
    if uses_bc(game, variant):
        assert game.bc is not None
        return game.bc.ppo_steps
    return game.budget()


def grid_evaluations(cell: Cell) -> list[tuple[str, tuple[str, ...], bool]]:
    """``(report name, masked modalities, greedy)`` of a grid run's evaluations.

    These follow the trainer's own greedy ``eval.json``. Every run is evaluated
    with sampled actions too (:data:`SAMPLED`): PPO trains the stochastic policy,
    and the greedy one of a memoryless policy in a partially observed game can
    cycle until time-out. Full-sense runs are also evaluated with each required
    modality masked, in both modes (``eval-drop-<m>``, greedy, and
    ``eval-sampled-drop-<m>``).
    """
    evals: list[tuple[str, tuple[str, ...], bool]] = [(SAMPLED, (), False)]
    if full_sense(cell.variant):
        for m in cell.game.required:
            evals += [
                (report_name(True, (m,)), (m,), True),
                (report_name(False, (m,)), (m,), False),
            ]
    return evals


def missing_evaluations(cell: Cell, run_dir: Path) -> list[tuple[str, tuple[str, ...], bool]]:
    """The cell's :func:`grid_evaluations` whose report is not in ``run_dir`` yet."""
    return [e for e in grid_evaluations(cell) if not (run_dir / f"{e[0]}.json").is_file()]


def cell_done(cell: Cell, root: Path) -> bool:
    """Whether the cell's run is trained and has every evaluation of :func:`grid_evaluations`.

    A run of another version of the game under the cell's name is not the cell's.
    """
    run_dir = root / "runs" / cell.name
    if (run_dir / "config.json").is_file() and run_env_id(run_dir) != cell.game.env_id:
        return False
    return (run_dir / "eval.json").is_file() and not missing_evaluations(cell, run_dir)


def finished_cells(root: str | Path) -> list[Cell]:
    """Every grid cell with an evaluated run under ``root/runs`` (from any invocation)."""
    done = [p for p in sorted(Path(root).glob("runs/*-s*")) if (p / "eval.json").is_file()]
    seeds = {int(m.group(1)) for p in done if (m := re.search(r"-s(\d+)$", p.name))}
    if not seeds:
        return []
    # One game at a time: two versions of a game name their runs alike, and the run's
    # own config says which one it trained on.
    known: dict[str, dict[str, Cell]] = {}
    for env_id in ALL_GAMES:
        for cell in build_grid([env_id], seeds=sorted(seeds), components=True):
            known.setdefault(cell.name, {})[env_id] = cell
    cells = []
    for path in done:
        versions = known.get(path.name, {})
        if len(versions) > 1:
            trained_on = run_env_id(path)
            versions = {k: v for k, v in versions.items() if k == trained_on}
        cells += list(versions.values())
    return cells


def run_env_id(run_dir: Path) -> str | None:
    """The env id a run trained on (its ``config.json``), or None where unreadable."""
    try:
        data = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    env_id = data.get("env_id") if isinstance(data, dict) else None
    return env_id if isinstance(env_id, str) else None
