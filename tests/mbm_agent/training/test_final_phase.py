"""The final phase: the run's last steps trained with other hyperparameters, set between rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stable_baselines3 import PPO

from mbm_agent.training.config import ConfigError, merge, resolve_config
from mbm_agent.training.final_phase import FinalPhase
from mbm_agent.training.trainer import train

ENV = "mbm/ModalityProbe-v0"


def _overrides(runs_dir: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "runs_dir": str(runs_dir),
        "run_name": "phase",
        "steps": 512,
        "n_envs": 4,
        "eval_every": 0,
        "checkpoint_every": 128,
        "final_eval_episodes": 2,
        "gif_episodes": 0,
        "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1, "gamma": 0.9},
        "final_phase": {"steps": 256, "gamma": 0.5},
    }
    return merge(base, extra)


def test_the_phase_covers_the_runs_last_steps() -> None:
    phase = FinalPhase.from_config({"steps": 1000, "gamma": 0.999})
    assert phase == FinalPhase(steps=1000, gamma=0.999)
    assert phase.start(5000) == 4000 and phase.start(600) == 0
    assert not phase.active(3999, 5000) and phase.active(4000, 5000)
    assert phase.settings() == {"gamma": 0.999}
    both = FinalPhase.from_config({"steps": 10, "ent_coef": 0, "learning_rate": 1e-4})
    assert both is not None and both.settings() == {"ent_coef": 0.0, "learning_rate": 1e-4}
    assert FinalPhase.from_config({}) is None and FinalPhase.from_config(None) is None


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"steps": 1000}, "sets none of"),
        ({"gamma": 0.999}, "final_phase.steps"),
        ({"steps": 1000, "ent_coef": -0.1}, "final_phase.ent_coef"),
        (
            {"steps": 1000, "learning_rate": -1e-4},
            "final_phase.learning_rate must be a number >= 0",
        ),
        (
            {"steps": 1000, "learning_rate": "lin_0.001"},
            "final_phase.learning_rate must be a number",
        ),
        ({"steps": 0, "gamma": 0.999}, "final_phase.steps"),
        ({"steps": 1.5, "gamma": 0.999}, "final_phase.steps"),
        ({"steps": True, "gamma": 0.999}, "final_phase.steps"),
        ({"steps": 1000, "gamma": -0.5}, r"final_phase.gamma must be a number in \[0.0, 1.0\]"),
        ({"steps": 1000, "gamma": 1.5}, "final_phase.gamma"),
        ({"steps": 1000, "gamma": "0.999"}, "final_phase.gamma"),
        ({"steps": 1000, "gamma": 0.999, "clip_range": 0.1}, r"unknown keys \['clip_range'\]"),
        ("gamma=0.999", "must be a mapping"),
    ],
)
def test_a_bad_final_phase_is_a_config_error_naming_the_key(section: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        resolve_config(ENV, overrides={"final_phase": section})


def test_null_turns_a_final_phase_off() -> None:
    assert resolve_config(ENV, overrides={"final_phase": None}).final_phase == {}


def test_q_learning_has_no_entropy_coefficient_to_change() -> None:
    with pytest.raises(ConfigError, match="dqn has no entropy coefficient"):
        resolve_config(ENV, overrides={"algo": "dqn", "final_phase": {"steps": 9, "ent_coef": 0}})
    dqn = resolve_config(ENV, overrides={"algo": "dqn", "final_phase": {"steps": 9, "gamma": 0.9}})
    assert dqn.final_phase == {"steps": 9, "gamma": 0.9}


def _record_updates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float, float, float]]:
    """Per update: the algorithm's and its buffer's discount, ent_coef and the learning rate."""
    seen: list[tuple[float, float, float, float]] = []
    original = PPO.train

    def spy(self: PPO) -> None:
        original(self)
        lr = self.policy.optimizer.param_groups[0]["lr"]
        seen.append((self.gamma, self.rollout_buffer.gamma, float(self.ent_coef), lr))

    monkeypatch.setattr(PPO, "train", spy)
    return seen


def _gammas(seen: list[tuple[float, float, float, float]]) -> list[float]:
    assert all(algo == buffer for algo, buffer, _, _ in seen)
    return [gamma for gamma, _, _, _ in seen]


def test_the_last_rollouts_use_the_phases_gamma_and_a_resume_follows_the_step_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _record_updates(monkeypatch)
    # 4 envs x 32 steps: rollouts start at 0, 128, 256 and 384; the phase at 512 - 256.
    run = train(resolve_config(ENV, overrides=_overrides(tmp_path)), progress=False).run_dir
    assert _gammas(seen) == [0.9, 0.9, 0.5, 0.5]
    assert "final phase: gamma 0.5 from step 256" in capsys.readouterr().err
    assert {(ent, lr) for _, _, ent, lr in seen} == {(0.01, 5e-4)}  # not set: the run's own

    # Resumed to 1024 steps: the phase moves to the new end (from 768), so the rollouts
    # at 512 and 640 train with the algorithm's own gamma again.
    seen.clear()
    more = resolve_config(ENV, overrides=_overrides(tmp_path, steps=1024))
    train(more, resume=run, progress=False)
    assert _gammas(seen) == [0.9, 0.9, 0.5, 0.5]


def test_a_run_resumed_inside_the_phase_keeps_its_gamma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_updates(monkeypatch)
    first = _overrides(tmp_path, steps=384, final_phase={"steps": 128, "gamma": 0.5})
    run = train(resolve_config(ENV, overrides=first), progress=False, finalize=False).run_dir
    assert _gammas(seen) == [0.9, 0.9, 0.5]
    seen.clear()
    # The same total: its checkpoint at 384 is already inside the phase of 512 - 256.
    more = _overrides(tmp_path, steps=512, final_phase={"steps": 256, "gamma": 0.5})
    with pytest.raises(ConfigError, match="final_phase"):  # the phase is the run's own
        train(resolve_config(ENV, overrides=more), resume=run, progress=False)
    train(resolve_config(ENV, overrides={**first, "steps": 512}), resume=run, progress=False)
    assert _gammas(seen) == [
        0.5
    ]  # the rollout at 384 of a 512-step run with the last 128 in the phase


def test_the_phase_sets_the_entropy_coefficient_and_a_constant_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_updates(monkeypatch)
    phase = {"steps": 256, "ent_coef": 0.0, "learning_rate": 1e-5}
    lin = {"learning_rate": "lin_0.001", "ent_coef": 0.02}
    overrides = _overrides(tmp_path, algo_kwargs=lin)
    overrides["final_phase"] = phase  # in place of the base's, not merged into it
    cfg = resolve_config(ENV, overrides=overrides)
    train(cfg, progress=False, finalize=False)
    assert _gammas(seen) == [0.9] * 4  # the phase leaves the discount alone
    ents, lrs = [e for _, _, e, _ in seen], [lr for _, _, _, lr in seen]
    assert ents == [0.02, 0.02, 0.0, 0.0]
    # The run's own linear decay (progress remaining after each rollout), then the constant.
    assert lrs[0] == pytest.approx(0.001 * (1 - 128 / 512)) and lrs[1] < lrs[0]
    assert lrs[2:] == [1e-5, 1e-5]
