"""SIGKILL at every save point of a training run, then ``--resume``: nothing saved is lost.

A forked child trains a tiny ModalityProbe run with ``MBM_FAULT_AT`` set, so
that ``training/storage.py`` kills it (SIGKILL) right before or after the N-th
rename or append of a checkpoint, ``best/``, ``final/`` or ``metrics.csv``.
Some scenarios chain several killed phases (a kill during a resume). Then the
run is resumed in-process with the CLI, and the test checks that it continued
from the newest readable checkpoint, that ``best/``'s score never went down,
that every saved policy still loads, that ``metrics.csv`` counts steps upwards
and that no temporary or moved-aside folder is left behind.

The child's periodic evaluations are replaced by a fake whose score rises with
every call, so that every evaluation replaces ``best/`` (and the kill points
between its two renames are reached every time).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from runs_helpers import read_metrics

from mbm_agent.cli import main
from mbm_agent.sb3.algorithms import is_recurrent
from mbm_agent.training import storage, trainer
from mbm_agent.training.agent import load_agent
from mbm_agent.training.callback import TrainerCallback
from mbm_agent.training.checkpoints import STEP_PATTERN, checkpoint_problem
from mbm_agent.training.storage import FAULT_ENV, SCORE_FILE, old_dir

PROBE = "mbm/ModalityProbe-v0"
ROLLOUT = 64  # 4 envs x 16 steps
STEPS = 5 * ROLLOUT

TINY_PROBE: tuple[str, ...] = (
    "--n-envs",
    "4",
    "--set",
    "algo_kwargs.n_steps=16",
    "--set",
    "algo_kwargs.batch_size=32",
    "--set",
    "algo_kwargs.n_epochs=1",
    "--eval-every",
    str(ROLLOUT),
    "--eval-episodes",
    "2",
    "--checkpoint-every",
    str(ROLLOUT),
    "--set",
    "final_eval_episodes=2",
    "--set",
    "gif_episodes=0",
    "--set",
    "keep_checkpoints=2",
    "--no-progress",
)


def _rising_scores() -> Any:
    calls = {"n": 0}

    def evaluate(agent: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        rate = min(1.0, 0.1 * calls["n"])
        return {"success": {"rate": rate}, "returns": {"mean": rate}, "lengths": {"mean": 1.0}}

    return evaluate


def _child(argv: Sequence[str], fault: str) -> None:
    """The killed process: the CLI with a fault point armed (runs in a fork)."""
    os.environ[FAULT_ENV] = fault
    storage._fault_counts.clear()
    trainer.evaluate_agent = _rising_scores()  # type: ignore[assignment]  # the fake above
    os._exit(main(list(argv)))


def _run_killed(argv: Sequence[str], fault: str) -> None:
    """Run ``mbm-agent ARGV`` in a forked child that must die at ``fault``."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(list(argv), fault))
    proc.start()
    proc.join(timeout=120)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"the child with {FAULT_ENV}={fault} hung")
    assert proc.exitcode == -signal.SIGKILL, (
        f"{FAULT_ENV}={fault}: the fault point was never reached (exit code {proc.exitcode})"
    )


def _newest_readable(run: Path) -> int:
    """The step training must continue from: the newest checkpoint that reads (or 0)."""
    steps = []
    root = run / "checkpoints"
    for path in root.iterdir() if root.is_dir() else []:
        name = path.name
        if name.startswith(".") and name.endswith(".old") and not (root / name[1:-4]).exists():
            name = name[1:-4]  # put back by the resume (storage.recover_dir)
        match = STEP_PATTERN.fullmatch(name)
        if match and checkpoint_problem(path) is None:
            steps.append(int(match.group(1)))
    return max(steps, default=0)


def _best_score(run: Path) -> float | None:
    """The score of the best policy on disk, counting a copy left aside by a kill."""
    for folder in (run / "best", old_dir(run / "best")):
        if (folder / SCORE_FILE).is_file():
            return float(json.loads((folder / SCORE_FILE).read_text())["score"])
        if folder.is_dir():
            return None
    return None


def _leftovers(run: Path) -> list[str]:
    return sorted(
        str(p.relative_to(run))
        for folder in (run, run / "checkpoints")
        if folder.is_dir()
        for p in folder.iterdir()
        if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))
    )


# Each scenario: the phases killed in turn, as (extra flags, MBM_FAULT_AT).
FRESH = ("--steps", str(STEPS))
MORE = ("--resume",)  # the run folder is appended
SCENARIOS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "before-first-checkpoint": [(FRESH, "step-*:1:before")],
    "after-a-checkpoint": [(FRESH, "step-*:2:after")],
    "before-pruning": [(FRESH, "step-*:3:after")],
    "before-first-best": [(FRESH, "best:1:before")],
    "after-first-best": [(FRESH, "best:1:after")],
    "best-moved-aside": [(FRESH, ".best.old:1:before")],
    "between-best-renames": [(FRESH, ".best.old:2:after")],
    "before-final": [(FRESH, "final:1:before")],
    "after-final": [(FRESH, "final:1:after")],
    "between-final-renames": [
        (FRESH, "final:1:after"),
        (("--steps", str(STEPS + ROLLOUT), *MORE), ".final.old:1:after"),
    ],
    "between-checkpoint-renames": [
        (FRESH, "final:1:before"),
        (MORE, ".step-*.old:1:after"),
    ],
    "final-moved-aside": [
        (FRESH, "final:1:after"),
        (("--steps", str(STEPS + ROLLOUT), *MORE), ".final.old:1:before"),
    ],
    "checkpoint-moved-aside": [
        (FRESH, "final:1:before"),
        (MORE, ".step-*.old:1:before"),
    ],
    "metrics-append": [(FRESH, "metrics.csv:4:after")],
    "metrics-truncation": [
        (FRESH, "metrics.csv:6:after"),
        (MORE, "metrics.csv:1:before"),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_a_save_point_then_resume_loses_nothing(
    scenario: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs"
    run = runs / "probe"
    base = ["train", PROBE, *TINY_PROBE]
    for flags, fault in SCENARIOS[scenario]:
        if flags and flags[-1] == "--resume":  # a resume takes no flag that changes the run
            argv = ["train", PROBE, "--no-progress", *flags, str(run)]
        else:
            argv = [*base, *flags, "--runs-dir", str(runs), "--run-name", "probe"]
        _run_killed(argv, fault)
    assert run.is_dir()

    # What was saved when the last kill came.
    newest = _newest_readable(run)
    best_before = _best_score(run)
    if not (run / "best").is_dir() and old_dir(run / "best").is_dir():
        # `eval` finds the policy even when the kill came between best/'s two renames.
        with pytest.warns(UserWarning, match="using the copy a stopped run left"):
            assert load_agent(run, "best").spec["env_id"] == PROBE
    budget = json.loads((run / "config.json").read_text())["steps"]

    seen: dict[str, int] = {}
    original = TrainerCallback._on_training_start

    def spy(self: TrainerCallback) -> None:
        seen["start"] = int(self.model.num_timesteps)
        original(self)

    monkeypatch.setattr(TrainerCallback, "_on_training_start", spy)
    monkeypatch.delenv(FAULT_ENV, raising=False)
    with pytest.warns(UserWarning):  # the dead child's lock, at least, is taken over
        rc = main(["train", PROBE, "--resume", str(run), "--no-progress"])
    assert rc == 0, capsys.readouterr().err

    # Continued from the newest readable checkpoint (nothing to train when it was the end).
    assert seen.get("start", budget) == (newest if newest < budget else budget)
    # Every saved policy loads; best/ never got worse.
    for which in ("best", "final"):
        load_agent(run, which)
    best_after = _best_score(run)
    if best_before is not None:
        assert best_after is not None and best_after >= best_before
    # Checkpoints: the newest is the end of the budget, and all read.
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert steps[-1] == budget
    assert all(checkpoint_problem(p) is None for p in (run / "checkpoints").glob("step-*"))
    # metrics.csv counts upwards to the budget, each rollout once.
    rows = read_metrics(run)
    rollout = [int(r["timesteps"]) for r in rows if not r["eval_return"]]
    evals = [int(r["timesteps"]) for r in rows if r["eval_return"]]
    assert rollout == list(range(ROLLOUT, budget + 1, ROLLOUT))
    assert evals == sorted(set(evals))
    assert json.loads((run / "eval.json").read_text())["meta"]["episodes"] == 2
    assert not _leftovers(run)
    assert not (run / ".lock").exists()


# -- our games' default PPO: memory (GRU) and a curriculum ----------------------------------
GAME = "mbm/GoToObject-v0"
GAME_ROLLOUT = 128  # 4 envs x 32 steps
TINY_GAME: tuple[str, ...] = (
    "--steps",
    str(3 * GAME_ROLLOUT),
    "--n-envs",
    "4",
    "--set",
    "algo_kwargs.n_steps=32",
    "--set",
    "algo_kwargs.batch_size=64",
    "--set",
    "algo_kwargs.n_epochs=1",
    "--eval-every",
    "0",
    "--checkpoint-every",
    str(GAME_ROLLOUT),
    "--set",
    "final_eval_episodes=1",
    "--set",
    "gif_episodes=0",
    # The game's own levels; promoted after each rollout, so a tiny run climbs them.
    "--set",
    "curriculum.promote_at=0.01",
    "--set",
    "curriculum.window=1",
    "--no-progress",
)


def test_sigkill_after_a_level_change_then_resume_of_a_default_game_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GoToObject's own config (GRU memory, curriculum), killed between a level change and
    the checkpoint after it: the resume restarts on the checkpoint's level with its memory
    policy, and the lost attempt's level rows are dropped from curriculum.jsonl."""
    runs = tmp_path / "runs"
    run = runs / "game"
    argv = ["train", GAME, *TINY_GAME, "--runs-dir", str(runs), "--run-name", "game"]
    # Rows: level 1 at 0, 2 at 128, 3 at 256 (its checkpoint is written next): die there.
    _run_killed(argv, "curriculum.jsonl:3:after")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo_kwargs"]["memory"] > 0 and cfg["curriculum"]["levels"]  # the defaults
    newest = _newest_readable(run)
    assert newest == GAME_ROLLOUT
    level = json.loads((run / "checkpoints" / f"step-{newest:012d}" / "state.json").read_text())[
        "curriculum_level"
    ]
    logged = [json.loads(line) for line in (run / "curriculum.jsonl").read_text().splitlines()]
    assert level == 1 and logged[-1]["level"] == 2  # the log is ahead of the checkpoint

    seen: dict[str, Any] = {}
    original = TrainerCallback._on_training_start

    def spy(self: TrainerCallback) -> None:
        original(self)  # enters the curriculum's level
        assert self.curriculum is not None
        seen.update(
            start=int(self.model.num_timesteps),
            level=self.curriculum.level,
            env_kwargs=dict(self._env_kwargs),
            memory=self.model.policy.memory,
        )

    monkeypatch.setattr(TrainerCallback, "_on_training_start", spy)
    with pytest.warns(UserWarning):  # the dead child's lock is taken over
        rc = main(["train", GAME, "--resume", str(run), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    levels = cfg["curriculum"]["levels"]
    assert seen == {
        "start": newest,
        "level": level,
        "env_kwargs": {**cfg["env_kwargs"], **levels[level]},
        "memory": cfg["algo_kwargs"]["memory"],
    }
    # The log counts upwards from the checkpoint on: no row of the lost attempt is left
    # (later promotions depend on the resumed run's episodes).
    rows = [json.loads(line) for line in (run / "curriculum.jsonl").read_text().splitlines()]
    steps_levels = [(r["timesteps"], r["level"]) for r in rows]
    assert steps_levels[:3] == [(0, 0), (GAME_ROLLOUT, 1), (GAME_ROLLOUT, 1)]  # 1 re-entered
    assert steps_levels == sorted(steps_levels)
    budget = cfg["steps"]
    final = json.loads((run / "checkpoints" / f"step-{budget:012d}" / "state.json").read_text())
    assert final["curriculum_level"] == rows[-1]["level"]
    agent = load_agent(run, "final")
    assert agent.spec["env_id"] == GAME and is_recurrent(agent.spec)  # saved with its memory
    rollout = [int(r["timesteps"]) for r in read_metrics(run) if not r["eval_return"]]
    assert rollout == list(range(GAME_ROLLOUT, budget + 1, GAME_ROLLOUT))
    assert not _leftovers(run) and not (run / ".lock").exists()
