"""The SB3 callback of a training run: progress, ``metrics.csv``, periodic evaluation, checkpoints."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from envs.core.text import Vocabulary
from mbm_agent.training.agent import Agent, model_spec, save_policy
from mbm_agent.training.checkpoints import TrainState, save_checkpoint
from mbm_agent.training.config import TrainConfig
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
    """Progress bar, metrics CSV, periodic evaluation (best kept) and checkpoints, clean Ctrl-C."""

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
        self._episodes = 0
        self._metrics_path = run_dir / "metrics.csv"

    def _next_multiple(self, every: int) -> int | None:
        if every <= 0:
            return None
        model = getattr(self, "model", None)
        done = model.num_timesteps if model is not None else self.state.num_timesteps
        return (done // every + 1) * every

    def _on_training_start(self) -> None:
        if not self._metrics_path.exists():
            self._append_csv(METRIC_FIELDS)
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
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self._episodes += 1
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

    def _recent(self) -> tuple[float, float, float]:
        buf = self.model.ep_info_buffer or []
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
            self._episodes,
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
        self._write_row()

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
        return save_checkpoint(self.run_dir, self.model, self.cfg, self.vocab, self.state)

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.n = min(self.model.num_timesteps, self.cfg.steps)
            self._bar.close()
