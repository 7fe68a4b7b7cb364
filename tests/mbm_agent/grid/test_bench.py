"""``mbm-agent bench``: the grid, a quick grid run, its summary, resuming, and exports of its runs.

One quick grid on ModalityProbe (concat, mask-image, sb3-default x 2 seeds) is
trained once per test session (shared across xdist workers); tests that change run
folders work on copies of it.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runs_helpers import PNG_MAGIC, copy_tree, shared_path

import envs
from mbm_agent import load_agent
from mbm_agent.cli import main
from mbm_agent.deploy.export import ExportError, export_policy
from mbm_agent.deploy.runtime import load_exported
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.grid.run import run_grid
from mbm_agent.grid.spec import (
    ALL_GAMES,
    PLAIN_PPO,
    QUICK_STEPS,
    REFERENCE_GAMES,
    Cell,
    build_grid,
    finished_cells,
)
from mbm_agent.grid.summary import write_summary
from mbm_agent.training.config import resolve_config

PROBE = "mbm/ModalityProbe-v0"
SEEDS = (0, 1)
VARIANTS = ("concat", "mask-image", "sb3-default")


def short(env_id: str) -> str:
    return env_id.split("/")[-1].split("-v")[0]


@dataclass
class Grid:
    root: Path
    cells: list[Cell]
    summary: dict[str, Any]
    log: list[str]
    seconds: float

    def run(self, variant: str, seed: int = 0) -> Path:
        return self.root / "runs" / f"ModalityProbe-{variant}-s{seed}"


def _cells() -> list[Cell]:
    return build_grid([PROBE], ["concat"], list(SEEDS))


def _build_grid(path: Path) -> None:
    log: list[str] = []
    start = time.perf_counter()
    summary = run_grid(_cells(), path / "grid", quick=True, log=log.append, backend="sequential")
    seconds = time.perf_counter() - start
    meta = {"summary": summary, "log": log, "seconds": seconds}
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    """The quick grid, trained in-process once per session (do not modify; copy it)."""
    path = shared_path(tmp_path_factory, "bench-grid", _build_grid)
    meta = json.loads((path / "meta.json").read_text())
    return Grid(path / "grid", _cells(), meta["summary"], meta["log"], meta["seconds"])


def probe_observations(n: int = 12, env_kwargs: dict[str, Any] | None = None) -> list[dict]:
    """First observations of ``n`` ModalityProbe episodes (different seeds)."""
    env = envs.make(PROBE, **(env_kwargs or {}))
    try:
        return [env.reset(seed=100 + i)[0] for i in range(n)]
    finally:
        env.close()


def stack(observations: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def action_probs(agent: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The SB3 policy's action probabilities for a batch of raw observations."""
    tensors, _ = agent.policy.obs_to_tensor(obs)
    with torch.no_grad():
        return agent.policy.get_distribution(tensors).distribution.probs.cpu().numpy()


def eval_mtimes(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "runs").glob("*/eval.json")}


# -- build_grid ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", list(ALL_GAMES))
def test_a_games_budget_is_its_configs_unless_the_grid_sets_its_own(env_id: str) -> None:
    game = ALL_GAMES[env_id]
    config_steps = resolve_config(env_id).steps
    assert game.budget() == (config_steps if game.steps is None else game.steps)
    if env_id in ("mbm/FindSound-v0", "mbm/GoToObject-v1", "mbm/SoundMaze-v1"):
        # The from-scratch games' budget is decided once, in their config.
        assert game.steps is None


@pytest.mark.parametrize("env_id", list(REFERENCE_GAMES))
def test_build_grid_cells_and_overrides(env_id: str) -> None:
    game = REFERENCE_GAMES[env_id]
    cells = build_grid([env_id], ["concat", "film"], [3, 7])
    bc = ["bc-ppo"] if game.bc is not None else []
    variants = ["concat", "film", *bc, *(f"mask-{m}" for m in game.required), "sb3-default"]
    assert [(c.variant, c.seed) for c in cells] == [(v, s) for v in variants for s in (3, 7)]
    assert [c.name for c in cells] == [
        f"{short(env_id)}-{v}-s{s}" for v in variants for s in (3, 7)
    ]
    assert len({c.name for c in cells}) == len(cells)
    for cell in cells:
        assert cell.game is game
        o = cell.overrides
        assert o["seed"] == cell.seed
        bc_recipe = game.bc is not None and cell.variant == "bc-ppo"
        assert o["steps"] == (game.bc.ppo_steps if bc_recipe else game.budget())
        # A cell names only what its variant changes; the encoder is the game's config's.
        assert "encoder" not in o
        if cell.variant == "bc-ppo":
            # the clone's architecture: PPO alone, no reward head or memory, no curriculum
            assert o["algo_kwargs"] == {"learning_rate": game.bc.learning_rate, **PLAIN_PPO}
            assert o["curriculum"] is None
            assert "modalities" not in o and "extractor" not in o and "fusion" not in o
        elif cell.variant in ("concat", "film"):
            assert o["fusion"] == cell.variant
            assert "modalities" not in o and "extractor" not in o and "algo_kwargs" not in o
        elif cell.variant.startswith("mask-"):
            # the game's own config, from scratch, without the modality
            modality = cell.variant.removeprefix("mask-")
            assert o["modalities"] == {modality: "ignore"}
            assert "extractor" not in o and "fusion" not in o and "algo_kwargs" not in o
        else:
            assert o["extractor"] == "sb3" and o["algo_kwargs"] == PLAIN_PPO
            assert o["curriculum"] is None
            assert "fusion" not in o and "modalities" not in o


def test_build_grid_cells_resolve_to_the_configs_they_name() -> None:
    from runs_helpers import env_fusion

    from mbm_agent.training.config import resolve_config

    for cell in build_grid(seeds=[0]):
        # the ablations and the BC recipe use the game's own encoder (its YAML's)
        game_encoder = cell.game.encoder()
        assert game_encoder.fusion == env_fusion(cell.game.env_id)
        assert game_encoder == resolve_config(cell.game.env_id).encoder_config()
        cfg = resolve_config(cell.game.env_id, overrides=dict(cell.overrides))
        recipe = cell.game.bc
        if recipe is not None and cell.variant == "bc-ppo":
            assert cfg.seed == 0 and cfg.steps == recipe.ppo_steps
            assert cfg.encoder_config() == game_encoder and cfg.extractor == "mbm"
            assert cfg.algo_kwargs["learning_rate"] == recipe.learning_rate
            assert cfg.algo_kwargs["memory"] == 0 and cfg.algo_kwargs["aux_reward_coef"] == 0
            assert cfg.modalities == {} and cfg.curriculum == {}
            continue
        assert cfg.seed == 0 and cfg.steps == cell.game.budget()
        own = resolve_config(cell.game.env_id)  # the game's own config (the default command)
        if cell.variant == "sb3-default":
            assert (cfg.extractor, cfg.fusion) == ("sb3", "sb3-default")
            assert cfg.algo_kwargs["memory"] == 0 and cfg.algo_kwargs["aux_reward_coef"] == 0
            assert cfg.curriculum == {}
        elif cell.variant.startswith("mask-"):
            assert cfg.extractor == "mbm" and cfg.encoder_config() == game_encoder
            assert cfg.modalities == {cell.variant.removeprefix("mask-"): "ignore"}
            assert cfg.algo_kwargs == own.algo_kwargs and cfg.curriculum == own.curriculum
        else:
            assert cfg.extractor == "mbm" and cfg.fusion == cell.variant
            assert cfg.modalities == {}
            assert cfg.algo_kwargs == own.algo_kwargs and cfg.curriculum == own.curriculum


def test_build_grid_defaults_and_switches() -> None:
    everything = build_grid()
    assert {c.game.env_id for c in everything} == set(REFERENCE_GAMES)
    assert {c.seed for c in everything} == {0, 1, 2}
    assert set(FUSION_MODES) <= {c.variant for c in everything}
    n_required = sum(len(g.required) for g in REFERENCE_GAMES.values())
    n_bc = sum(g.bc is not None for g in REFERENCE_GAMES.values())
    assert n_bc == 2  # GoToObject and SoundMaze
    assert len(everything) == 3 * (
        len(REFERENCE_GAMES) * (len(FUSION_MODES) + 1) + n_required + n_bc
    )
    assert len(build_grid(bc=False)) == len(everything) - 3 * n_bc

    plain = build_grid([PROBE], ["gated"], [0], ablations=False, baseline=False, steps=1234)
    assert [c.name for c in plain] == ["ModalityProbe-gated-s0"]
    assert plain[0].overrides["steps"] == 1234
    assert [c.variant for c in build_grid([PROBE], ["gated"], [0], ablations=False)] == [
        "gated",
        "sb3-default",
    ]
    assert [c.variant for c in build_grid([PROBE], ["gated"], [0], baseline=False)] == [
        "gated",
        "mask-image",
    ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"games": ["mbm/NoSuchGame-v0"]}, ["mbm/NoSuchGame-v0", PROBE]),
        ({"fusions": ["concat", "blend"]}, ["blend", "concat", "film"]),
        ({"seeds": []}, ["seed"]),
    ],
)
def test_build_grid_rejects_bad_input(kwargs: dict[str, Any], words: list[str]) -> None:
    args = {"games": [PROBE], "fusions": ["concat"], "seeds": [0], **kwargs}
    with pytest.raises(ValueError) as exc:
        build_grid(**args)
    for word in words:
        assert word in str(exc.value)


def test_bench_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "never"
    argv = ["bench", "--games", PROBE, "--fusions", "concat", "film", "--seeds", "0", "1"]
    assert main([*argv, "--list", "--out", str(out_dir)]) == 0
    names = capsys.readouterr().out.split()
    assert names == [c.name for c in build_grid([PROBE], ["concat", "film"], [0, 1])]
    assert "ModalityProbe-mask-image-s1" in names and "ModalityProbe-sb3-default-s0" in names
    assert not out_dir.exists()  # --list runs nothing

    assert main([*argv, "--list", "--no-ablations", "--no-baseline"]) == 0
    assert capsys.readouterr().out.split() == [
        "ModalityProbe-concat-s0",
        "ModalityProbe-concat-s1",
        "ModalityProbe-film-s0",
        "ModalityProbe-film-s1",
    ]

    assert main(["bench", "--games", "mbm/NoSuchGame-v0", "--list"]) == 2
    assert "mbm/NoSuchGame-v0" in capsys.readouterr().err


# -- a quick grid run -----------------------------------------------------------------------
def test_grid_writes_ordinary_run_folders(grid: Grid) -> None:
    assert [c.name for c in grid.cells] == [
        f"ModalityProbe-{v}-s{s}" for v in VARIANTS for s in SEEDS
    ]
    assert sorted(p.name for p in (grid.root / "runs").iterdir()) == sorted(
        c.name for c in grid.cells
    )
    assert len(grid.log) == len(grid.cells) + 1 and not any("(done)" in line for line in grid.log)
    for cell in grid.cells:
        run = grid.root / "runs" / cell.name
        for name in ("config.json", "eval.json", "metrics.csv", "best/model.json"):
            assert (run / name).is_file(), f"{cell.name} lacks {name}"
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["env_id"] == PROBE and cfg["seed"] == cell.seed
        assert cfg["steps"] == QUICK_STEPS  # --quick shrinks the budget
        assert cfg["run_name"] == cell.name
        report = json.loads((run / "eval.json").read_text())
        assert 0.0 <= report["success"]["rate"] <= 1.0
        assert report["meta"]["deterministic"] is True
        # every run is also evaluated with sampled actions, on the same held-out seeds
        sampled = json.loads((run / "eval-sampled.json").read_text())
        assert sampled["meta"]["deterministic"] is False
        assert sampled["meta"]["seed_base"] == report["meta"]["seed_base"]
        assert len(sampled["episodes"]["returns"]) == len(report["episodes"]["returns"])
        # only full-sense (fusion) runs are evaluated with the image masked, in both modes
        for name, greedy in (("eval-drop-image", True), ("eval-sampled-drop-image", False)):
            drop = run / f"{name}.json"
            assert drop.is_file() == (cell.variant == "concat"), (cell.name, name)
            if drop.is_file():
                meta = json.loads(drop.read_text())["meta"]
                assert meta["drop_modalities"] == ["image"]
                assert meta["deterministic"] is greedy
                assert meta["run"] == cell.name

    mask = json.loads((grid.run("mask-image") / "config.json").read_text())
    assert mask["modalities"] == {"image": "ignore"}
    assert mask["fusion"] == REFERENCE_GAMES[PROBE].encoder().fusion == "concat"
    assert json.loads((grid.run("concat", 1) / "config.json").read_text())["fusion"] == "concat"


def test_grid_summary(grid: Grid) -> None:
    on_disk = json.loads((grid.root / "summary.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(grid.summary["rows"]))
    rows = {r["variant"]: r for r in on_disk["rows"]}
    assert sorted(rows) == sorted(VARIANTS)
    assert on_disk["games"][PROBE]["chance"] == 0.25
    for variant, row in rows.items():
        runs = [grid.run(variant, s) for s in SEEDS]
        # ModalityProbe is scored greedy; the sampled policy's success stands next to it
        per_seed = [json.loads((r / "eval.json").read_text())["success"]["rate"] for r in runs]
        sampled = [
            json.loads((r / "eval-sampled.json").read_text())["success"]["rate"] for r in runs
        ]
        assert row["actions"] == "greedy"
        assert row["per_seed_greedy_success"] == pytest.approx(per_seed)
        assert row["per_seed_sampled_success"] == pytest.approx(sampled)
        assert min(sampled) <= row["sampled_success"]["iqm"] <= max(sampled)
        assert row["env_id"] == PROBE
        assert row["seeds"] == list(SEEDS)
        assert row["steps"] == QUICK_STEPS
        assert row["chance"] == 0.25
        assert row["per_seed_success"] == pytest.approx(per_seed)
        success = row["success"]
        assert success["n_runs"] == len(SEEDS)
        assert min(per_seed) <= success["iqm"] <= max(per_seed)
        low, high = success["iqm_ci"]
        assert low <= success["iqm"] <= high
        assert row["return"]["iqm_ci"] is not None
        assert row["wall_time_s"] > 0
    dropped = [
        json.loads((grid.run("concat", s) / "eval-drop-image.json").read_text())["success"]["rate"]
        for s in SEEDS
    ]
    assert rows["concat"]["masked_success"] == {"image": pytest.approx(np.mean(dropped))}
    # a mask-X variant never saw X: its masked column is its own success
    assert rows["mask-image"]["masked_success"] == {
        "image": pytest.approx(np.mean(rows["mask-image"]["per_seed_success"]))
    }
    assert rows["sb3-default"]["masked_success"] == {}

    md = (grid.root / "summary.md").read_text()
    assert "IQM [95% CI]" in md and "chance" in md and "greedy / sampled" in md
    lines = [line for line in md.splitlines() if line.startswith(f"| {PROBE} |")]
    assert [line.split("|")[2].strip() for line in lines] == list(rows)
    concat = next(line for line in lines if "| concat |" in line)
    low, high = rows["concat"]["success"]["iqm_ci"]
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in concat
    assert f"image: {100 * np.mean(dropped):.1f} (25.0)" in concat
    assert (grid.root / "curves-ModalityProbe.png").read_bytes()[:8] == PNG_MAGIC


def test_mask_run_ignores_the_masked_modality(grid: Grid) -> None:
    agent = load_agent(grid.run("mask-image"))
    batch = stack(probe_observations(8))
    other = dict(batch, image=np.random.default_rng(0).integers(0, 256, batch["image"].shape))
    other["image"] = other["image"].astype(np.uint8)
    np.testing.assert_array_equal(action_probs(agent, batch), action_probs(agent, other))
    # ...while the full-sense run reads it
    full = load_agent(grid.run("concat"))
    assert not np.allclose(action_probs(full, batch), action_probs(full, other))


def test_sb3_default_run_is_a_loadable_but_unexportable_baseline(
    grid: Grid, tmp_path: Path
) -> None:
    run = grid.run("sb3-default")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["extractor"] == "sb3"
    assert cfg["fusion"] == "sb3-default"

    agent = load_agent(run)
    assert type(agent.policy.features_extractor).__name__ == "CombinedExtractor"
    observations = probe_observations(6)
    env = envs.make(PROBE)
    n_actions = int(env.action_space.n)
    env.close()
    for obs in observations:
        assert 0 <= int(agent.act(obs)) < n_actions
    actions = agent.act(stack(observations))
    assert actions.shape == (len(observations),)
    assert [int(a) for a in actions] == [int(agent.act(o)) for o in observations]

    out = tmp_path / "ts"
    with pytest.raises(ExportError, match="SB3's default extractor") as exc:
        export_policy(run, "torchscript", out)
    assert "extractor=mbm" in str(exc.value)
    assert not out.exists()


# -- resuming -------------------------------------------------------------------------------
def test_second_run_skips_finished_runs(
    grid: Grid,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = copy_tree(grid.root, tmp_path / "bench")
    before = eval_mtimes(root)
    assert len(before) == len(grid.cells)

    import mbm_agent.grid.cell

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(mbm_agent.grid.cell, "train", no_training)
    monkeypatch.setattr(mbm_agent.grid.cell, "evaluate_agent", no_training)
    log: list[str] = []
    start = time.perf_counter()
    summary = run_grid(grid.cells, root, quick=True, log=log.append, backend="sequential")
    seconds = time.perf_counter() - start
    assert eval_mtimes(root) == before
    assert sum("(done)" in line for line in log) == len(grid.cells)
    assert seconds < grid.seconds / 3, (seconds, grid.seconds)
    assert [r["variant"] for r in summary["rows"]] == [r["variant"] for r in grid.summary["rows"]]
    assert [r["per_seed_success"] for r in summary["rows"]] == [
        r["per_seed_success"] for r in grid.summary["rows"]
    ]

    # `mbm-agent bench --quick` on the finished grid: nothing trained, the table printed
    argv = ["bench", "--games", PROBE, "--fusions", "concat", "--seeds", *map(str, SEEDS)]
    assert main([*argv, "--quick", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("(done)") == len(grid.cells)
    for variant in VARIANTS:
        assert f"| {PROBE} | {variant} | {len(SEEDS)} |" in out
    assert f"wrote {root}/summary.md" in out
    assert eval_mtimes(root) == before


def test_stopped_runs_are_completed_on_the_next_call(
    grid: Grid,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = copy_tree(grid.root, tmp_path / "bench")
    runs = root / "runs"
    # stopped half-way through training: no final/, no eval.json, no masked eval
    stopped = runs / "ModalityProbe-concat-s1"
    (stopped / "eval.json").unlink()
    (stopped / "eval-drop-image.json").unlink()
    shutil.rmtree(stopped / "final")
    shutil.rmtree(stopped / "checkpoints" / f"step-{QUICK_STEPS:012d}")
    metrics_before = (stopped / "metrics.csv").read_text()
    # stopped after the final evaluation, before the sampled and masked ones
    no_drop = runs / "ModalityProbe-concat-s0"
    for name in ("eval-sampled", "eval-drop-image", "eval-sampled-drop-image"):
        (no_drop / f"{name}.json").unlink()
    # died before writing its config: a stray folder
    stray = runs / "ModalityProbe-mask-image-s1"
    shutil.rmtree(stray)
    stray.mkdir()
    (stray / "junk.txt").write_text("partial")
    before = eval_mtimes(root)

    # Ctrl-C while the stopped run trains again: the grid stops there (exit 130)
    from mbm_agent.training.callback import TrainerCallback

    on_step = TrainerCallback._on_step

    def ctrl_c(self: Any) -> bool:
        if not self.stop_requested:
            signal.raise_signal(signal.SIGINT)
        return on_step(self)

    argv = ["bench", "--games", PROBE, "--fusions", "concat", "--seeds", *map(str, SEEDS)]
    with monkeypatch.context() as m:
        m.setattr(TrainerCallback, "_on_step", ctrl_c)
        assert main([*argv, "--quick", "--backend", "sequential", "--out", str(root)]) == 130
    err = capsys.readouterr().err
    assert "ModalityProbe-concat-s1" in err and "again to resume" in err
    for name in ("eval-sampled", "eval-drop-image", "eval-sampled-drop-image"):
        assert (no_drop / f"{name}.json").is_file(), name  # came before the stop
    assert not (stopped / "eval.json").exists()
    assert not (stopped / "eval-drop-image.json").exists()  # not of an unfinished policy
    assert (stray / "junk.txt").is_file()  # the grid did not go on
    assert eval_mtimes(root) == before

    log: list[str] = []
    summary = run_grid(grid.cells, root, quick=True, log=log.append, backend="sequential")
    assert sum("(done)" in line for line in log) == len(grid.cells) - 2

    for run in (stopped, no_drop, stray):
        assert (run / "eval.json").is_file(), run.name
    for run in (stopped, no_drop):
        for name in ("eval-sampled", "eval-drop-image", "eval-sampled-drop-image"):
            assert (run / f"{name}.json").is_file(), (run.name, name)
    assert (stopped / "final" / "model.json").is_file()
    assert json.loads((stopped / "eval.json").read_text())["meta"]["run"] == stopped.name
    # resumed, not started over: the early rows are kept, and rows past the restart
    # checkpoint were dropped rather than logged twice (timesteps never go backwards)
    new_rows = (stopped / "metrics.csv").read_text().splitlines()
    assert new_rows[:2] == metrics_before.splitlines()[:2]
    steps = [int(float(r.split(",")[0])) for r in new_rows[1:]]
    assert steps == sorted(steps)
    assert (stray / "config.json").is_file() and not (stray / "junk.txt").exists()
    # the finished runs were left alone
    after = eval_mtimes(root)
    for name, mtime in before.items():
        assert after[name] == mtime, name
    assert all(r["seeds"] == list(SEEDS) for r in summary["rows"])
    concat = next(r for r in summary["rows"] if r["variant"] == "concat")
    assert set(concat["masked_success"]) == {"image"}


def test_summary_of_a_partly_run_grid(
    grid: Grid, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_tree(grid.root, tmp_path / "bench")
    stopped = root / "runs" / "ModalityProbe-sb3-default-s1"  # stopped: no eval.json, no final/
    (stopped / "eval.json").unlink()
    shutil.rmtree(stopped / "final")
    (root / "summary.json").unlink()
    bigger = build_grid([PROBE], ["concat", "film"], [0, 1, 2])  # film and seed 2 never ran
    summary = write_summary(bigger, root)
    rows = {r["variant"]: r for r in summary["rows"]}
    assert sorted(rows) == sorted(VARIANTS)
    assert rows["concat"]["seeds"] == [0, 1]
    assert rows["mask-image"]["seeds"] == [0, 1]
    assert rows["sb3-default"]["seeds"] == [0]
    assert rows["sb3-default"]["success"]["n_runs"] == 1
    assert json.loads((root / "summary.json").read_text())["rows"] == json.loads(
        json.dumps(summary["rows"])
    )
    assert "| film |" not in (root / "summary.md").read_text()

    # the same through the CLI, without training anything
    argv = ["bench", "--games", PROBE, "--fusions", "concat", "film", "--seeds", "0", "1", "2"]
    assert main([*argv, "--summary-only", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| mbm/ModalityProbe-v0 | sb3-default | 1 |" in out
    assert "| mbm/ModalityProbe-v0 | concat | 2 |" in out
    assert "| film |" not in out
    assert not (root / "runs" / "ModalityProbe-film-s0").exists()


def test_summary_of_a_game_scored_on_sampled_actions(
    grid: Grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``sampled=True`` game (the navigation games) is scored on ``eval-sampled*.json``."""
    assert [g for g, spec in REFERENCE_GAMES.items() if spec.sampled] == [
        "mbm/FindSound-v0",
        "mbm/GoToObject-v1",
        "mbm/SoundMaze-v1",
    ]
    root = copy_tree(grid.root, tmp_path / "bench")
    sampled = replace(REFERENCE_GAMES[PROBE], sampled=True)
    monkeypatch.setitem(REFERENCE_GAMES, PROBE, sampled)
    monkeypatch.setitem(ALL_GAMES, PROBE, sampled)
    cells = build_grid([PROBE], ["concat"], list(SEEDS))
    rows = {r["variant"]: r for r in write_summary(cells, root)["rows"]}

    def rates(variant: str, name: str) -> list[float]:
        return [
            json.loads((grid.run(variant, s) / f"{name}.json").read_text())["success"]["rate"]
            for s in SEEDS
        ]

    assert sorted(rows) == sorted(VARIANTS)
    for variant, row in rows.items():
        assert row["actions"] == "sampled"
        assert row["per_seed_success"] == pytest.approx(rates(variant, "eval-sampled"))
        assert row["per_seed_greedy_success"] == pytest.approx(rates(variant, "eval"))
    assert rows["concat"]["masked_success"] == {
        "image": pytest.approx(np.mean(rates("concat", "eval-sampled-drop-image")))
    }
    assert "| sampled |" in (root / "summary.md").read_text()


def test_summary_only_evaluates_runs_of_an_earlier_version(
    grid: Grid, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs made before the sampled evaluation existed: left out with a warning, then
    ``--summary-only`` evaluates them without training and summarises them."""
    root = copy_tree(grid.root, tmp_path / "bench")
    old = [root / "runs" / f"ModalityProbe-concat-s{s}" for s in SEEDS]
    for run in old:
        for name in ("eval-sampled", "eval-sampled-drop-image"):
            (run / f"{name}.json").unlink()
            (run / f"{name}.md").unlink()
    untouched = {
        str(f.relative_to(root)): f.stat().st_mtime_ns
        for run in old
        for f in (run / "eval.json", run / "metrics.csv", run / "best" / "model.safetensors")
    }
    with pytest.warns(UserWarning, match="lack eval-sampled.json.*--summary-only"):
        summary = write_summary(grid.cells, root)
    assert sorted(r["variant"] for r in summary["rows"]) == ["mask-image", "sb3-default"]

    argv = ["bench", "--games", PROBE, "--fusions", "concat", "--seeds", *map(str, SEEDS)]
    assert main([*argv, "--summary-only", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ModalityProbe-concat-s0: evaluating (eval-sampled, eval-sampled-drop-image)" in out
    assert "ModalityProbe-mask-image-s0: evaluating" not in out  # complete already
    assert "| mbm/ModalityProbe-v0 | concat | 2 |" in out
    for run in old:
        assert (run / "eval-sampled.json").is_file() and (
            run / "eval-sampled-drop-image.json"
        ).is_file()
    for name, mtime in untouched.items():  # evaluated, not retrained
        assert (root / name).stat().st_mtime_ns == mtime, name
    # the new reports equal the grid's own: a sampled evaluation is seeded, so repeatable
    for s in SEEDS:
        for name in ("eval-sampled", "eval-sampled-drop-image"):
            new = json.loads((old[s] / f"{name}.json").read_text())["episodes"]
            first = json.loads((grid.run("concat", s) / f"{name}.json").read_text())["episodes"]
            assert new == first, (s, name)


# -- export of a bench run --------------------------------------------------------------------
def test_cli_export_of_a_bench_run(
    grid: Grid, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(grid.run("concat"), tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx", "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    for fmt in ("onnx", "torchscript"):
        folder = run / "exports" / fmt
        assert f"wrote {folder}" in out
        spec = json.loads((folder / "export.json").read_text())
        assert spec["export_format"] == fmt

    agent = load_agent(run)
    observations = probe_observations(12, agent.spec.get("env_kwargs"))
    batch = stack(observations)
    for fmt in ("onnx", "torchscript"):
        policy = load_exported(run / "exports" / fmt)
        for obs in observations:
            assert int(policy.act(obs)) == int(agent.act(obs)), fmt
        np.testing.assert_array_equal(policy.act(batch), agent.act(batch))
        np.testing.assert_allclose(
            torch.softmax(torch.as_tensor(policy(batch)["logits"]), -1).numpy(),
            action_probs(agent, batch),
            atol=1e-5,
        )


def test_cli_export_errors(grid: Grid, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_tree(grid.run("mask-image"), tmp_path / "run")
    out = tmp_path / "out"
    argv = ["export", str(run), "--format", "onnx", "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "one --format" in err
    assert not out.exists() and not (run / "exports").exists()

    missing = tmp_path / "no-such-run"
    assert main(["export", str(missing), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "mbm-agent export: error:" in err and str(missing) in err


def test_train_rejects_an_unknown_extractor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", PROBE, "--set", "extractor=nonsense", "--runs-dir", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "extractor" in err and "nonsense" in err
    assert "'mbm'" in err and "'sb3'" in err
    assert list(tmp_path.iterdir()) == []


def quick_bench(root: Path, game: str, variant: str, seed: int) -> list[str]:
    """Run one variant of one game at one seed in --quick mode, in-process; its argv."""
    argv = ["bench", "--games", game, "--variants", variant, "--seeds", str(seed), "--quick"]
    argv += ["--backend", "sequential", "--out", str(root)]
    assert main(argv) == 0
    return argv


# -- the bc-ppo variant -------------------------------------------------------------------------
def test_bc_ppo_cell_clones_the_expert_then_fine_tunes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quick: demos -> BC run -> PPO run started from the BC policy, then its masked evals."""
    soundmaze = "mbm/SoundMaze-v1"
    recipe = REFERENCE_GAMES[soundmaze].bc
    assert recipe is not None
    root = tmp_path / "bench"
    argv = quick_bench(root, soundmaze, "bc-ppo", seed=1)
    out = capsys.readouterr().out
    assert "| mbm/SoundMaze-v1 | bc-ppo | 1 |" in out and " demo |" in out

    demos_file = root / "demos" / "SoundMaze-s1-quick.npz"
    bc_dir = root / "runs" / "SoundMaze-bc-s1"
    run = root / "runs" / "SoundMaze-bc-ppo-s1"
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted([bc_dir.name, run.name])
    bc_config = json.loads((bc_dir / "config.json").read_text())
    assert bc_config["algo"] == "bc-torch"
    assert bc_config["demos"]["seed"] == 1 + 100_000  # demos of another seed than seed 0's
    assert bc_config["demos"]["noise"] == recipe.noise
    assert bc_config["encoder"] == REFERENCE_GAMES[soundmaze].encoder().to_dict()

    config = json.loads((run / "config.json").read_text())
    assert Path(config["init_from"]) == bc_dir
    # the PPO run took the cloned policy's architecture (ReLU heads) and the recipe's lr
    assert config["policy_kwargs"] == bc_config["policy_kwargs"]
    assert config["encoder"] == bc_config["encoder"]
    assert config["algo_kwargs"]["learning_rate"] == recipe.learning_rate
    for m in REFERENCE_GAMES[soundmaze].required:
        assert (run / f"eval-drop-{m}.json").is_file(), m
    summary = json.loads((root / "summary.json").read_text())
    (row,) = summary["rows"]
    assert row["variant"] == "bc-ppo"
    assert row["demo_steps"] == bc_config["demos"]["steps"] > 0
    assert summary["agents"] == {soundmaze: "agents/SoundMaze"}  # a full-sense variant

    # a rerun trains nothing; a BC run stopped before its evaluation is cloned again
    # (from the kept demos), and its PPO run then starts from it
    before = eval_mtimes(root)
    demos_mtime = demos_file.stat().st_mtime_ns
    assert main(argv) == 0
    assert eval_mtimes(root) == before
    shutil.rmtree(run)
    (bc_dir / "eval.json").unlink()
    assert main(argv) == 0
    assert (bc_dir / "eval.json").is_file() and (run / "eval.json").is_file()
    assert demos_file.stat().st_mtime_ns == demos_mtime  # demos reused, not re-recorded


def test_ablation_of_a_bc_game_learns_from_scratch_without_the_modality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quick: SoundMaze mask-text = the game's own config (from scratch) with text ignored."""
    soundmaze = "mbm/SoundMaze-v1"
    root = tmp_path / "bench"
    quick_bench(root, soundmaze, "mask-text", seed=0)
    out = capsys.readouterr().out
    assert "| mbm/SoundMaze-v1 | mask-text | 1 |" in out and " demo |" not in out

    run = root / "runs" / "SoundMaze-mask-text-s0"
    assert sorted(p.name for p in (root / "runs").iterdir()) == [run.name]  # no clone
    assert not (root / "demos").exists() or not list((root / "demos").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"] is None
    assert config["modalities"] == {"text": "ignore"}
    own = resolve_config(soundmaze)
    assert config["curriculum"] == own.curriculum and config["algo_kwargs"]["memory"] > 0
    assert load_agent(run).policy.features_extractor.encoder.keys == ["audio", "image"]
    assert load_agent(run).recurrent
    # trained without text: no masked evaluations of its own, scored on sampled actions
    assert (run / "eval-sampled.json").is_file()
    assert not list(run.glob("eval*-drop-*.json"))
    (row,) = json.loads((root / "summary.json").read_text())["rows"]
    assert row["variant"] == "mask-text" and not row.get("demo_steps")
    assert row["masked_success"] == {"text": pytest.approx(row["per_seed_success"][0])}


def test_bench_variants_filter(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--games", "mbm/GoToObject-v1", PROBE, "--seeds", "0", "--list"]
    assert main([*argv, "--variants", "bc-ppo", "mask-image"]) == 0
    # games in the order given, each game's variants in grid order
    assert capsys.readouterr().out.split() == [
        "GoToObject-bc-ppo-s0",
        "ModalityProbe-mask-image-s0",
    ]
    assert main([*argv, "--variants", "bcppo"]) == 2
    err = capsys.readouterr().err
    assert "bcppo" in err and "bc-ppo" in err


# -- the recipe's ablation: --components ------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "variant", "field", "removed"),
    [
        ({"novelty_bonus": 0.01}, "no-novelty", "novelty_bonus", 0.0),
        ({"final_phase": {"steps": 1000, "gamma": 0.999}}, "no-final-phase", "final_phase", {}),
    ],
)
def test_a_config_with_an_opt_in_component_gets_its_removal(
    monkeypatch: pytest.MonkeyPatch,
    override: dict[str, Any],
    variant: str,
    field: str,
    removed: Any,
) -> None:
    """A component no shipped reference game turns on: a config that does gets its removal."""
    import mbm_agent.grid.spec as spec_module

    game = ALL_GAMES["mbm/FindSound-v0"]

    def with_component(env_id: str, **kwargs: Any) -> Any:
        return resolve_config(env_id, overrides={**override, **kwargs.get("overrides", {})})

    monkeypatch.setattr(spec_module, "resolve_config", with_component)
    components = game.components()
    assert list(components)[-1] == variant
    assert getattr(resolve_config(game.env_id, overrides=components[variant]), field) == removed


@pytest.mark.parametrize("env_id", list(ALL_GAMES))
def test_components_take_out_one_part_of_the_games_own_recipe_each(env_id: str) -> None:
    game = ALL_GAMES[env_id]
    own = resolve_config(env_id)
    cells = build_grid(
        [env_id], ["concat"], [0], ablations=False, baseline=False, bc=False, components=True
    )
    variants = [c.variant for c in cells]
    assert variants[0] == "concat"
    expected = []
    if own.algo_kwargs.get("memory"):
        expected.append("no-memory")
    if own.algo_kwargs.get("aux_reward_coef"):
        expected.append("no-reward-prediction")
    if own.curriculum:
        expected.append("no-curriculum")
    if own.encoder.image_encoder == "cells":
        expected.append("no-cells")
    if own.novelty_bonus > 0:
        expected.append("no-novelty")
    if own.final_phase:
        expected.append("no-final-phase")
    assert variants[1:] == expected == list(game.components())
    if env_id in ("mbm/FindSound-v0", "mbm/GoToObject-v1", "mbm/SoundMaze-v1"):
        # the from-scratch recipe: all four are on in these games' configs
        assert expected == ["no-memory", "no-reward-prediction", "no-curriculum", "no-cells"]
    for cell in cells[1:]:
        cfg = resolve_config(env_id, overrides=dict(cell.overrides))
        assert cfg.steps == game.budget() and cfg.seed == 0
        # exactly the one component is off; the rest is the game's own config
        want_algo = dict(own.algo_kwargs)
        want_encoder = own.encoder_config()
        want_curriculum = own.curriculum
        if cell.variant == "no-memory":
            want_algo["memory"] = 0
        elif cell.variant == "no-reward-prediction":
            want_algo["aux_reward_coef"] = 0.0
        elif cell.variant == "no-curriculum":
            want_curriculum = {}
        else:
            want_encoder = replace(want_encoder, image_encoder="small")
        assert cfg.algo_kwargs == want_algo
        assert cfg.encoder_config() == want_encoder
        assert cfg.curriculum == want_curriculum
        assert cfg.extractor == own.extractor and cfg.modalities == own.modalities


def test_components_are_off_by_default_and_named_by_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    findsound = "mbm/FindSound-v0"
    assert not [c for c in build_grid([findsound], seeds=[0]) if c.variant.startswith("no-")]
    argv = ["bench", "--games", findsound, "--fusions", "concat", "--seeds", "0", "--list"]
    assert main([*argv, "--no-ablations", "--no-baseline", "--components"]) == 0
    assert capsys.readouterr().out.split() == [
        "FindSound-concat-s0",
        "FindSound-no-memory-s0",
        "FindSound-no-reward-prediction-s0",
        "FindSound-no-curriculum-s0",
        "FindSound-no-cells-s0",
    ]
    # --variants knows them only with --components
    assert main([*argv, "--variants", "no-memory"]) == 2
    assert "no-memory" in capsys.readouterr().err
    # a finished no-<component> run is found again (--summary-only, resuming a grid)
    run = tmp_path / "runs" / "FindSound-no-curriculum-s2"
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    (found,) = finished_cells(tmp_path)
    assert (found.game.env_id, found.variant, found.seed) == (findsound, "no-curriculum", 2)
    assert found.overrides["curriculum"] is None


def test_no_memory_cell_trains_the_recipe_without_its_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quick: FindSound no-memory = the game's config, reward prediction and curriculum kept."""
    findsound = "mbm/FindSound-v0"
    root = tmp_path / "bench"
    argv = ["bench", "--games", findsound, "--components", "--variants", "no-memory"]
    argv += ["--seeds", "0", "--quick", "--backend", "sequential", "--out", str(root)]
    assert main(argv) == 0
    assert "| mbm/FindSound-v0 | no-memory | 1 |" in capsys.readouterr().out
    run = root / "runs" / "FindSound-no-memory-s0"
    config = json.loads((run / "config.json").read_text())
    own = resolve_config(findsound)
    assert config["algo_kwargs"]["memory"] == 0
    assert config["algo_kwargs"]["aux_reward_coef"] == own.algo_kwargs["aux_reward_coef"] > 0
    assert config["curriculum"] == own.curriculum
    assert not load_agent(run).recurrent
    assert (run / "eval-sampled.json").is_file()
    (row,) = json.loads((root / "summary.json").read_text())["rows"]
    assert row["variant"] == "no-memory"


# -- the whole grid, quick -------------------------------------------------------------------------
@pytest.mark.slow
def test_whole_grid_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mbm-agent bench --quick`` over every game and variant (one seed): the CI smoke test."""
    root = tmp_path / "bench"
    start = time.perf_counter()
    assert (
        main(["bench", "--quick", "--seeds", "0", "--backend", "sequential", "--out", str(root)])
        == 0
    )
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    cells = build_grid(seeds=[0])
    rows = json.loads((root / "summary.json").read_text())["rows"]
    assert sorted((r["env_id"], r["variant"]) for r in rows) == sorted(
        (c.game.env_id, c.variant) for c in cells
    )
    for cell in cells:
        run = root / "runs" / cell.name
        report = json.loads((run / "eval.json").read_text())
        assert 0.0 <= report["success"]["rate"] <= 1.0, cell.name
        if cell.variant in FUSION_MODES or cell.variant == "bc-ppo":
            for m in cell.game.required:
                assert (run / f"eval-drop-{m}.json").is_file(), (cell.name, m)
        if cell.variant != "sb3-default":
            assert load_agent(run).spec["env_id"] == cell.game.env_id
    for env_id in REFERENCE_GAMES:
        game = short(env_id)
        assert f"| {env_id} |" in out
        assert (root / f"curves-{game}.png").read_bytes()[:8] == PNG_MAGIC
        assert load_agent(root / "agents" / game).spec["env_id"] == env_id
    print(f"whole quick grid: {len(cells)} runs in {seconds:.0f} s")
