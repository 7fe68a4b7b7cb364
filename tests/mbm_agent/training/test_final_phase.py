"""The final phase: the run's last steps trained with other hyperparameters, set between rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runs_helpers import ROLLOUT, TINY
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import configure

from mbm_agent.training.callback import TrainerCallback
from mbm_agent.training.checkpoints import TrainState
from mbm_agent.training.config import ConfigError, merge, resolve_config
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.final_phase import FinalPhase
from mbm_agent.training.trainer import build_algorithm, train

ENV = "mbm/ModalityProbe-v0"


def _overrides(runs_dir: Path, **extra: Any) -> dict[str, Any]:
    """The tiny budget (rollouts of ROLLOUT = 128 steps), 512 steps, the phase from 256."""
    base = merge(
        TINY,
        {
            "runs_dir": str(runs_dir),
            "run_name": "phase",
            "steps": 4 * ROLLOUT,
            "checkpoint_every": ROLLOUT,
            "algo_kwargs": {"n_epochs": 1, "gamma": 0.9},
            "final_phase": {"steps": 256, "gamma": 0.5},
        },
    )
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
    """Per update: the algorithm's discount, the one its returns and advantages were
    computed with (read when the buffer computed them), ent_coef and the learning rate."""
    seen: list[tuple[float, float, float, float]] = []
    discounts: list[float] = []
    compute = RolloutBuffer.compute_returns_and_advantage
    update = PPO.train

    def compute_spy(self: RolloutBuffer, *args: Any, **kwargs: Any) -> None:
        discounts.append(self.gamma)
        compute(self, *args, **kwargs)

    def update_spy(self: PPO) -> None:
        update(self)
        lr = self.policy.optimizer.param_groups[0]["lr"]
        seen.append((self.gamma, discounts[-1], float(self.ent_coef), lr))

    monkeypatch.setattr(RolloutBuffer, "compute_returns_and_advantage", compute_spy)
    monkeypatch.setattr(PPO, "train", update_spy)
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _record_updates(monkeypatch)
    first = _overrides(tmp_path, steps=384)  # the phase from 384 - 256 = 128
    run = train(resolve_config(ENV, overrides=first), progress=False, finalize=False).run_dir
    assert _gammas(seen) == [0.9, 0.5, 0.5]
    capsys.readouterr()
    seen.clear()
    # Resumed at 384 to 512 steps: the phase now starts at 256, so 384 is inside it.
    train(resolve_config(ENV, overrides=_overrides(tmp_path)), resume=run, progress=False)
    assert _gammas(seen) == [0.5]
    assert "final phase: gamma 0.5 from step 384" in capsys.readouterr().err
    # The phase is the run's own: a resume may not change it.
    other = _overrides(tmp_path, steps=640, final_phase={"gamma": 0.7})
    with pytest.raises(ConfigError, match="final_phase"):
        train(resolve_config(ENV, overrides=other), resume=run, progress=False)


def test_a_phase_shorter_than_a_rollout_still_gets_one() -> None:
    phase = FinalPhase(steps=100, gamma=0.5)  # from step 412 of 512, rollouts of 128
    assert [phase.active(step, 512, 128) for step in (0, 128, 256, 384)] == [
        False,
        False,
        False,
        True,
    ]


def test_q_learning_trains_its_last_steps_with_the_phases_discount_and_gets_its_own_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    update = DQN.train

    def spy(self: DQN, *args: Any, **kwargs: Any) -> None:
        seen.append(self.gamma)
        update(self, *args, **kwargs)

    monkeypatch.setattr(DQN, "train", spy)
    dqn = {"learning_starts": 0, "buffer_size": 1000, "batch_size": 8, "gamma": 0.9}
    overrides = _overrides(tmp_path, algo="dqn", steps=64)
    overrides["algo_kwargs"] = dqn
    overrides["final_phase"] = {"steps": 32, "gamma": 0.5}
    cfg = resolve_config(ENV, overrides=overrides)
    venv, vocab = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    model.set_logger(configure(str(tmp_path / "log"), []))
    callback = TrainerCallback(cfg, tmp_path, vocab, TrainState(), None, progress=False)
    model.learn(64, callback=callback)
    # Rollouts of 16 steps (train_freq 4 on 4 envs), an update after each; the phase from 32.
    assert seen == [0.9, 0.9, 0.5, 0.5]
    assert model.gamma == 0.9  # the run's own again once training ended
    venv.close()


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
