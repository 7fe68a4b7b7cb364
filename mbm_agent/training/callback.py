"""The SB3 callback of a training run: progress, ``metrics.csv``, periodic evaluation, checkpoints, the curriculum, the final phase."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import ConstantSchedule
from stable_baselines3.common.vec_env import unwrap_vec_wrapper

from envs.core.text import Vocabulary
from mbm_agent.sb3.novelty import EpisodicNoveltyBonus
from mbm_agent.training.agent import Agent, model_spec, save_policy
from mbm_agent.training.checkpoints import TrainState, save_checkpoint
from mbm_agent.training.config import ConfigError, TrainConfig
from mbm_agent.training.curriculum import Curriculum
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.final_phase import FinalPhase
from mbm_agent.training.storage import append_text

METRIC_FIELDS = (
    "timesteps",
    "time_s",
    "fps",
    "episodes",
    "mean_return",
    "mean_length",
    "success_rate",
    "eval_return",
    "eval_success",
)


class TrainerCallback(BaseCallback):
    """Progress bar, metrics CSV, periodic evaluation (best kept) and checkpoints, clean Ctrl-C.

    With a curriculum (``cfg.curriculum``, :mod:`~mbm_agent.training.curriculum`) it
    also moves training to the next level between rollouts: the training envs are
    rebuilt with the level's arguments (same spaces, same count), every slot starts a
    new episode, and ``curriculum.jsonl`` gets a row (step, level, env arguments).
    With a final phase (``cfg.final_phase``, :mod:`~mbm_agent.training.final_phase`)
    it sets the discount, entropy coefficient and learning rate of each rollout and its
    update before the rollout starts, and gives the run's own back when training ends.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        vocab: Vocabulary | None,
        state: TrainState,
        evaluate: Callable[[Agent, int], dict[str, Any]] | None,
        progress: bool,
    ) -> None:
        super().__init__()
        self.cfg, self.run_dir, self.vocab, self.state = cfg, run_dir, vocab, state
        self.evaluate = evaluate
        self.progress = progress
        self.stop_requested = False
        self._bar: Any = None
        self._t0 = time.perf_counter()
        self._session_t0 = time.perf_counter()
        self._last_refresh = 0.0
        self._session_steps0 = state.num_timesteps
        self._next_eval = self._next_multiple(cfg.eval_every)
        self._next_ckpt = self._next_multiple(cfg.checkpoint_every)
        self._metrics_path = run_dir / "metrics.csv"
        self.curriculum = Curriculum.from_config(cfg.curriculum)
        if self.curriculum is not None:
            self.curriculum.restore(state.curriculum_level)
            shared = sorted(
                {k for level in self.curriculum.levels for k in level} & set(cfg.env_kwargs)
            )
            if shared:
                warnings.warn(
                    f"The curriculum's levels set {shared}, which env_kwargs sets too: its "
                    "levels are trained first and env_kwargs applies from the last level on; "
                    "train on env_kwargs alone with --set curriculum=null.",
                    stacklevel=2,
                )
        self.final_phase = FinalPhase.from_config(cfg.final_phase)
        self._own: dict[str, Any] | None = None  # the run's own values, read at training start
        self._inside: bool | None = None  # whether the last rollout was in the final phase
        self._promote = False
        self._env_kwargs = dict(cfg.env_kwargs)  # those of the envs being trained on
        self._warned_success = False

    def _next_multiple(self, every: int) -> int | None:
        if every <= 0:
            return None
        model = getattr(self, "model", None)
        done = model.num_timesteps if model is not None else self.state.num_timesteps
        return (done // every + 1) * every

    def _on_training_start(self) -> None:
        if self.final_phase is not None:
            self._own = self._own_settings(self.final_phase)
        if not self._metrics_path.exists():
            self._append_csv(METRIC_FIELDS)
        if self.curriculum is not None:
            self._enter_level()
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.cfg.steps,
                initial=self.model.num_timesteps,
                unit="step",
                mininterval=0.5 if sys.stderr.isatty() else 30.0,
                dynamic_ncols=True,
                desc=self.run_dir.name,
            )

    def _elapsed(self) -> float:
        return self.state.wall_time + time.perf_counter() - self._t0

    def _on_step(self) -> bool:
        if self._bar is not None:
            self._bar.n = min(self.model.num_timesteps, self.cfg.steps)
        ended = [info for info in self.locals.get("infos", []) if "episode" in info]
        self.state.episodes += len(ended)
        if self.curriculum is not None and ended:
            if not any("is_success" in info for info in ended) and not self._warned_success:
                self._warned_success = True
                warnings.warn(
                    f"{self.cfg.env_id} reports no info['is_success'] when an episode ends, so "
                    "the curriculum cannot measure success and stays at its first level; have "
                    "the env report it, or train without a curriculum (--set curriculum=null).",
                    stacklevel=2,
                )
            successes = [bool(info.get("is_success", False)) for info in ended]
            self._promote = self.curriculum.record(successes) or self._promote
        n = self.model.num_timesteps
        if self._next_eval is not None and n >= self._next_eval:
            self._next_eval = self._next_multiple(self.cfg.eval_every)
            self.periodic_eval()
        return not self.stop_requested

    def _on_rollout_start(self) -> None:
        # Checkpoint here, after the update on the previous rollout: a checkpoint
        # taken mid-rollout would count steps whose update it does not hold, and a
        # resumed run would silently skip that update.
        n = self.model.num_timesteps
        if self._next_ckpt is not None and n >= self._next_ckpt:
            self._next_ckpt = self._next_multiple(self.cfg.checkpoint_every)
            self.checkpoint()
        self._apply_final_phase()

    def _algorithm(self) -> OnPolicyAlgorithm | OffPolicyAlgorithm:
        """The algorithm being trained (every one of ours has a discount ``gamma``)."""
        assert isinstance(self.model, OnPolicyAlgorithm | OffPolicyAlgorithm)
        return self.model

    def _own_settings(self, phase: FinalPhase) -> dict[str, Any]:
        """The run's own values of what ``phase`` changes (restored outside the phase)."""
        model = self._algorithm()
        own: dict[str, Any] = {"gamma": model.gamma, "lr_schedule": model.lr_schedule}
        if phase.ent_coef is not None and isinstance(model, OnPolicyAlgorithm):
            own["ent_coef"] = model.ent_coef  # the config refuses ent_coef for Q-learning
        return own

    def _apply_final_phase(self) -> None:
        """The final phase's hyperparameters for the rollout about to start, or the run's own.

        Set before any step of the rollout: the discount on the algorithm (truncated
        episodes' bootstrap) and its rollout buffer (returns and advantages), the
        entropy coefficient and the learning rate on the algorithm (its update).
        """
        if self.final_phase is None:
            return
        model = self._algorithm()
        rollout = model.n_steps * model.n_envs if isinstance(model, OnPolicyAlgorithm) else 1
        self._set_phase(self.final_phase.active(model.num_timesteps, self.cfg.steps, rollout))

    def _set_phase(self, inside: bool) -> None:
        """Give the algorithm the final phase's values (``inside``) or the run's own."""
        if self.final_phase is None or self._own is None or inside == self._inside:
            return
        model = self._algorithm()
        self._inside = inside
        settings = self.final_phase.settings()
        values: dict[str, Any] = dict(self._own)
        if inside:
            values.update(settings)
            if "learning_rate" in settings:
                values["lr_schedule"] = ConstantSchedule(values.pop("learning_rate"))
        model.gamma = values["gamma"]
        for name in ("rollout_buffer", "replay_buffer"):  # those that discount themselves
            buffer: Any = getattr(model, name, None)
            if hasattr(buffer, "gamma"):
                buffer.gamma = values["gamma"]
        if "ent_coef" in values and isinstance(model, OnPolicyAlgorithm):
            model.ent_coef = values["ent_coef"]
        model.lr_schedule = values["lr_schedule"]
        if inside:
            what = ", ".join(f"{k} {v}" for k, v in settings.items())
            print(
                f"final phase: {what} from step {model.num_timesteps}",
                file=sys.stderr,
                flush=True,
            )

    def _recent(self) -> tuple[float, float, float]:
        buf: Sequence[dict[str, Any]] = self.model.ep_info_buffer or []
        if not buf:
            return float("nan"), float("nan"), float("nan")
        rets = [e["r"] for e in buf]
        lens = [e["l"] for e in buf]
        succ = [float(e["is_success"]) for e in buf if "is_success" in e]
        return (
            float(np.mean(rets)),
            float(np.mean(lens)),
            float(np.mean(succ)) if succ else float("nan"),
        )

    def _write_row(
        self, eval_return: float | None = None, eval_success: float | None = None
    ) -> None:
        ret, length, succ = self._recent()
        elapsed = self._elapsed()
        fps = (self.model.num_timesteps - self._session_steps0) / max(
            time.perf_counter() - self._session_t0, 1e-9
        )
        row = [
            self.model.num_timesteps,
            f"{elapsed:.2f}",
            f"{fps:.1f}",
            self.state.episodes,
            f"{ret:.4f}",
            f"{length:.2f}",
            f"{succ:.4f}",
            "" if eval_return is None else f"{eval_return:.4f}",
            "" if eval_success is None else f"{eval_success:.4f}",
        ]
        self._append_csv(row)
        if self._bar is not None:
            self._bar.set_postfix(
                fps=f"{fps:.0f}", ret=f"{ret:.2f}", success=f"{succ:.2f}", refresh=False
            )
            # A terminal gets a live bar; a log file a line every 30 s, not one per rollout.
            now = time.perf_counter()
            if now - self._last_refresh >= (0.5 if sys.stderr.isatty() else 30.0):
                self._last_refresh = now
                self._bar.refresh()

    def _append_csv(self, row: Sequence[object]) -> None:
        # One write per row (a kill never leaves half a row) that refuses a symlink.
        line = io.StringIO()
        csv.writer(line).writerow(row)
        append_text(self._metrics_path, line.getvalue())

    def _on_rollout_end(self) -> None:
        env = self.model.get_env()
        bonus = unwrap_vec_wrapper(env, EpisodicNoveltyBonus) if env is not None else None
        mean_bonus = bonus.pop_mean_bonus() if bonus is not None else None
        if mean_bonus is not None:
            self.logger.record("rollout/novelty_bonus", mean_bonus)
        if self.final_phase is not None:
            self.logger.record("train/gamma", float(self._algorithm().gamma))
        self._write_row()
        if self.curriculum is not None and self._promote:
            # Between rollouts: the buffer just filled holds only the old level's steps.
            self._promote = False
            self.curriculum.promote()
            self._enter_level()

    def _enter_level(self) -> None:
        """Train on the curriculum's current level from the next rollout on."""
        assert self.curriculum is not None
        kwargs = self.curriculum.env_kwargs(self.cfg.env_kwargs)
        model = self.model
        if kwargs != self._env_kwargs:
            level_cfg = dataclasses.replace(self.cfg, env_kwargs=kwargs)
            # A new seed per level: the level's worlds are not a replay of the run's first.
            venv, _ = make_train_env(level_cfg, self.cfg.seed + 7919 * (model.num_timesteps + 1))
            if (
                venv.observation_space != model.observation_space
                or venv.action_space != model.action_space
                or venv.num_envs != model.n_envs
            ):
                venv.close()
                raise ConfigError(
                    f"curriculum level {self.curriculum.level + 1} ({kwargs}) changes the "
                    f"env's spaces ({venv.observation_space} vs {model.observation_space}); "
                    "a level may change only arguments that keep the observation and action "
                    "spaces (e.g. grid_size, not frame_size)."
                )
            old = model.env
            model.env = venv
            # VecEnvObs allows tuples; ours are dicts or arrays (as SB3 assumes too).
            model._last_obs = venv.reset()  # type: ignore[assignment]
            model._last_episode_starts = np.ones((venv.num_envs,), dtype=bool)
            if hasattr(model, "_last_state"):
                model._last_state = None  # a memory starts empty in the new worlds
            if old is not None and old is not self.training_env:
                old.close()  # a level's env of ours; the trainer closes its own
            assert model.ep_info_buffer is not None  # learn() made it
            model.ep_info_buffer.clear()
            self._env_kwargs = kwargs
        row = {
            "timesteps": int(model.num_timesteps),
            "level": self.curriculum.level,
            "levels": len(self.curriculum.levels),
            "env_kwargs": kwargs,
        }
        append_text(self.run_dir / "curriculum.jsonl", json.dumps(row) + "\n")
        print(
            f"curriculum: {self.curriculum.describe()} from step {model.num_timesteps}",
            file=sys.stderr,
            flush=True,
        )

    def agent(self) -> Agent:
        """The policy being trained, as an :class:`Agent`."""
        return Agent(self.model.policy, model_spec(self.model, self.cfg, self.vocab), self.vocab)

    def periodic_eval(self) -> None:
        """Evaluate on held-out seeds; keep the best policy in ``best/``."""
        if self.evaluate is None:
            return
        report = self.evaluate(self.agent(), self.cfg.eval_episodes)
        self.model.policy.set_training_mode(False)
        success, ret = float(report["success"]["rate"]), float(report["returns"]["mean"])
        score = success + 1e-3 * ret
        self._write_row(ret, success)
        # SB3's EvalCallback tags, so TensorBoard layouts made for SB3 runs show ours.
        self.logger.record("eval/mean_reward", ret)
        self.logger.record("eval/mean_ep_length", float(report["lengths"]["mean"]))
        self.logger.record("eval/success_rate", success)
        if score > self.state.best_eval:
            self.state.best_eval = score
            save_policy(
                self.model.policy,
                model_spec(self.model, self.cfg, self.vocab),
                self.run_dir / "best",
                self.vocab,
                score={
                    "score": score,
                    "num_timesteps": int(self.model.num_timesteps),
                    "eval_success": success,
                    "eval_return": ret,
                },
            )

    def checkpoint(self) -> Path:
        """Write a resumable checkpoint now."""
        self.state.wall_time = self._elapsed()
        self._t0 = time.perf_counter()
        if self.curriculum is not None:
            self.state.curriculum_level = self.curriculum.level
        return save_checkpoint(self.run_dir, self.model, self.cfg, self.vocab, self.state)

    def _on_training_end(self) -> None:
        self._set_phase(False)  # a model saved after training (sb3_zip) holds the run's own
        if self._bar is not None:
            self._bar.n = min(self.model.num_timesteps, self.cfg.steps)
            self._bar.close()
