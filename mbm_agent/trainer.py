"""Training: build the env and the agent, learn, checkpoint, evaluate, write the run folder.

Run folder layout (see ``runs/README.md``)::

    runs/NAME/
      config.yaml, config.json   resolved configuration
      command.txt                the exact command line
      metrics.csv                one row per rollout (and per periodic evaluation)
      tb/                        TensorBoard logs
      checkpoints/step-N/        resumable checkpoints (policy, optimizer, counters)
      best/                      policy with the best periodic evaluation
      final/                     policy at the end of training
      eval.json, eval.md         final evaluation on held-out seeds
      learning_curve.png         return and success vs environment steps
      episodes.gif               a few evaluation episodes
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

import envs
from envs.core.text import Vocabulary
from mbm_agent.agent import Agent, policy_spec, save_policy
from mbm_agent.config import ConfigError, TrainConfig, save_config
from mbm_agent.evaluation import EVAL_SEED_BASE
from mbm_agent.sb3.buffer import algorithm_kwargs
from mbm_agent.sb3.policy import policy_class, policy_kwargs_for
from mbm_agent.sb3.vec_env import KeepChannelsLast
from mbm_agent.storage import (
    CHECKPOINT_FORMAT,
    ModelFileError,
    atomic_save_tensors,
    atomic_write_text,
    fresh_tmp_dir,
    load_module,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    replace_dir,
)
from mbm_agent.wrappers import TokenizeMission, make_minigrid_env


class SuccessInfo(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``is_success`` to the info at episode end for envs that do not report it.

    Uses ``info["success"]`` when present, else "the episode paid a positive reward"
    (the MiniGrid / BabyAI convention).
    """

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step and mark success at episode end."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = dict(info)
            info.setdefault("is_success", bool(info.get("success", float(reward) > 0)))
        return obs, reward, terminated, truncated, info


def is_our_game(env_id: str) -> bool:
    """Whether ``env_id`` is one of the games in ``envs``."""
    return env_id in envs.GAMES


def make_single_env(
    env_id: str,
    env_kwargs: dict[str, Any],
    vocabulary: Vocabulary | None = None,
    render_mode: str | None = None,
) -> tuple[gym.Env[Any, Any], Vocabulary | None]:
    """One env ready for the encoder: MiniGrid/BabyAI missions tokenised, success reported."""
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if is_our_game(env_id):
        env = gym.make(env_id, **kwargs)
        return env, env.unwrapped.vocabulary  # type: ignore[attr-defined]
    if env_id.startswith(("MiniGrid-", "BabyAI-")):
        try:
            env = make_minigrid_env(env_id, vocabulary, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(f"Unknown env id {env_id!r}: {exc}") from exc
    else:
        try:
            env = gym.make(env_id, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(
                f"Unknown env id {env_id!r}: {exc}. Our games are: {', '.join(envs.ENV_IDS)}."
            ) from exc
        if not isinstance(env.observation_space, gym.spaces.Dict):
            raise ConfigError(
                f"{env_id} has a {type(env.observation_space).__name__} observation space; mbm-agent trains on Dict-observation envs."
            )
        if any(isinstance(s, gym.spaces.Text) for s in env.observation_space.spaces.values()):
            env = TokenizeMission(env, vocabulary)
    vocab = None
    layer: Any = env
    while layer is not None:
        if isinstance(layer, TokenizeMission):
            vocab = layer.vocabulary
            break
        layer = getattr(layer, "env", None)
    return SuccessInfo(env), vocab


def make_train_env(cfg: TrainConfig, seed: int) -> tuple[VecEnv, Vocabulary | None]:
    """The training ``VecEnv``: our native batched env for our games, ``DummyVecEnv`` otherwise."""
    if is_our_game(cfg.env_id):
        from envs.sb3 import SB3VecEnv

        try:
            venv: VecEnv = SB3VecEnv(cfg.env_id, cfg.n_envs, **cfg.env_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"env_kwargs: {exc}") from exc
        vocab = venv.venv.vocabulary  # type: ignore[attr-defined]
    else:
        _, vocab = make_single_env(cfg.env_id, cfg.env_kwargs)
        venv = DummyVecEnv(
            [
                lambda: make_single_env(cfg.env_id, cfg.env_kwargs, vocab)[0]
                for _ in range(cfg.n_envs)
            ]
        )
    venv.seed(seed)
    monitored = VecMonitor(venv, info_keywords=("is_success",))
    if cfg.extractor == "sb3":  # SB3's own pipeline: it transposes frames for NatureCNN
        return monitored, vocab
    # Our extractor reads channel-last frames: spare SB3's per-step transpose copy.
    return KeepChannelsLast(monitored), vocab


def make_eval_env(
    spec_env_id: str, env_kwargs: dict[str, Any], n: int, vocabulary: Vocabulary | None
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """A Gymnasium vector env for evaluation (same-step autoreset)."""
    if is_our_game(spec_env_id):
        return envs.make_vec(spec_env_id, n, autoreset_mode="same_step", **env_kwargs)
    return gym.vector.SyncVectorEnv(
        [lambda: make_single_env(spec_env_id, env_kwargs, vocabulary)[0] for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def build_algorithm(cfg: TrainConfig, venv: VecEnv, tensorboard_dir: Path | None) -> BaseAlgorithm:
    """The SB3 algorithm with our multimodal extractor."""
    kwargs = policy_kwargs_for(
        cfg.encoder_config(), cfg.modalities, cfg.policy_kwargs, cfg.extractor
    )
    common: dict[str, Any] = {
        "policy_kwargs": kwargs,
        "seed": cfg.seed,
        "device": cfg.device,
        "verbose": 0,
        "tensorboard_log": str(tensorboard_dir) if tensorboard_dir is not None else None,
    }
    if cfg.algo == "ppo":
        from stable_baselines3 import PPO as Algo
    elif cfg.algo == "a2c":
        from stable_baselines3 import A2C as Algo  # type: ignore[assignment]
    elif cfg.algo == "dqn":
        from stable_baselines3 import DQN as Algo  # type: ignore[assignment]
    else:
        try:
            from sb3_contrib import RecurrentPPO as Algo  # type: ignore[assignment]
        except ImportError as exc:
            raise ImportError(
                "--algo recurrent_ppo needs sb3-contrib: pip install 'mbm-agent[contrib]'."
            ) from exc
    policy = policy_class(cfg.algo, cfg.extractor)
    common.update(algorithm_kwargs(cfg.algo, venv.observation_space))
    try:
        return Algo(policy, venv, **common, **cfg.algo_kwargs)
    except TypeError as exc:
        raise ConfigError(f"algo_kwargs for {cfg.algo}: {exc}") from exc


def init_policy_from(model: BaseAlgorithm, cfg: TrainConfig, vocab: Vocabulary | None) -> Path:
    """Load the weights of ``cfg.init_from`` (a run or policy folder) into a fresh model's policy.

    The source must describe the same game spaces and architecture (encoder,
    modalities, ``net_arch`` and activation) and be an actor-critic policy when
    the target is; a behaviour-cloning run from ``mbm-agent bc`` is the usual
    source of a PPO warm start.

    Raises:
        ConfigError: The source does not fit (the message names what differs and how to fix it).
    """
    from mbm_agent.agent import read_spec, resolve_model_dir
    from mbm_agent.storage import load_module

    assert cfg.init_from is not None
    model_dir = resolve_model_dir(cfg.init_from, "best")
    theirs = read_spec(model_dir)
    mine = _spec(model, cfg, vocab)
    families = {"ppo": "ac", "a2c": "ac", "recurrent_ppo": "rec", "dqn": "q"}
    if families.get(str(theirs.get("algo"))) != families.get(cfg.algo):
        raise ConfigError(
            f"--init-from {cfg.init_from}: a {theirs.get('algo')} policy cannot start a {cfg.algo} "
            "run (different network heads); use an actor-critic source (ppo, a2c, bc) for ppo/a2c."
        )
    defaults = {"activation_fn": "tanh"}
    for key in (
        "observation_space",
        "action_space",
        "extractor",
        "encoder",
        "modalities",
        "policy_kwargs",
    ):
        a, b = theirs.get(key), mine.get(key)
        if key == "policy_kwargs":
            a = {**defaults, **(a or {})}
            b = {**defaults, **(b or {})}
        if a != b:
            raise ConfigError(
                f"--init-from {cfg.init_from}: its {key} differs from this run's "
                f"({a} vs {b}); train with the same settings (e.g. --fusion, --set "
                f"policy_kwargs.net_arch=[...]) or pick another source."
            )
    load_module(model_dir / "model.safetensors", model.policy)
    if hasattr(model, "q_net_target"):
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    return model_dir


def _spec(model: BaseAlgorithm, cfg: TrainConfig, vocab: Vocabulary | None) -> dict[str, Any]:
    return policy_spec(
        model.policy,
        algo=cfg.algo,
        env_id=cfg.env_id,
        env_kwargs=cfg.env_kwargs,
        encoder=cfg.encoder_config(),
        modalities=cfg.modalities,
        policy_kwargs=cfg.policy_kwargs,
        vocabulary=vocab,
        extractor=cfg.extractor,
    )


@dataclass
class TrainState:
    """Counters a checkpoint carries besides the weights."""

    num_timesteps: int = 0
    n_updates: int = 0
    best_eval: float = -float("inf")
    wall_time: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    run_dir: Path,
    model: BaseAlgorithm,
    cfg: TrainConfig,
    vocab: Vocabulary | None,
    state: TrainState,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones."""
    root = run_dir / "checkpoints"
    final = root / f"step-{model.num_timesteps:012d}"
    tmp = fresh_tmp_dir(final)
    try:
        save_policy(model.policy, _spec(model, cfg, vocab), tmp / "policy", vocab)
        tensors, meta = optimizer_to_tensors(model.policy.optimizer)
        atomic_save_tensors(tmp / "optimizer.safetensors", tensors)
        atomic_write_text(tmp / "optimizer.json", json.dumps(meta))
        payload = {
            "format": CHECKPOINT_FORMAT,
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(getattr(model, "_n_updates", 0)),
            "best_eval": state.best_eval if np.isfinite(state.best_eval) else None,
            "wall_time": state.wall_time,
        }
        atomic_write_text(tmp / "state.json", json.dumps(payload))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    existing = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in existing[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model: BaseAlgorithm) -> TrainState:
    """Restore weights, optimizer state and counters from one checkpoint into ``model``."""
    state = read_json(ckpt / "state.json", "the checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{ckpt / 'state.json'} is not an mbm-agent checkpoint.")
    load_module(ckpt / "policy" / "model.safetensors", model.policy)
    optimizer_from_tensors(
        model.policy.optimizer,
        load_tensors(ckpt / "optimizer.safetensors"),
        read_json(ckpt / "optimizer.json", "the optimizer state"),
    )
    model.num_timesteps = int(state["num_timesteps"])
    if hasattr(model, "_n_updates"):
        model._n_updates = int(state.get("n_updates", 0))
    best = state.get("best_eval")
    return TrainState(
        num_timesteps=model.num_timesteps,
        n_updates=int(state.get("n_updates", 0)),
        best_eval=float(best) if best is not None else -float("inf"),
        wall_time=float(state.get("wall_time", 0.0)),
    )


def latest_checkpoint(run_dir: Path, model: BaseAlgorithm) -> TrainState | None:
    """Load the newest checkpoint that reads cleanly; older ones are tried if it is corrupt."""
    root = run_dir / "checkpoints"
    candidates = (
        sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
        if root.is_dir()
        else []
    )
    errors = []
    for ckpt in candidates:
        try:
            state = load_checkpoint(ckpt, model)
        except ModelFileError as exc:
            errors.append(str(exc))
            warnings.warn(f"Skipping unreadable checkpoint {ckpt}: {exc}", stacklevel=2)
            continue
        return state
    if errors:
        raise ModelFileError("No readable checkpoint in " + str(root) + ":\n" + "\n".join(errors))
    return None


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
            with self._metrics_path.open("w", newline="") as fh:
                csv.writer(fh).writerow(METRIC_FIELDS)
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
        with self._metrics_path.open("a", newline="") as fh:
            csv.writer(fh).writerow(row)
        if self._bar is not None:
            self._bar.set_postfix(
                fps=f"{fps:.0f}", ret=f"{ret:.2f}", success=f"{succ:.2f}", refresh=False
            )
            # A terminal gets a live bar; a log file a line every 30 s, not one per rollout.
            now = time.perf_counter()
            if now - self._last_refresh >= (0.5 if sys.stderr.isatty() else 30.0):
                self._last_refresh = now
                self._bar.refresh()

    def _on_rollout_end(self) -> None:
        self._write_row()

    def agent(self) -> Agent:
        """The policy being trained, as an :class:`Agent`."""
        return Agent(self.model.policy, _spec(self.model, self.cfg, self.vocab), self.vocab)

    def periodic_eval(self) -> None:
        """Evaluate on held-out seeds; keep the best policy in ``best/``."""
        if self.evaluate is None:
            return
        report = self.evaluate(self.agent(), self.cfg.eval_episodes)
        self.model.policy.set_training_mode(False)
        success, ret = float(report["success"]["rate"]), float(report["returns"]["mean"])
        score = success + 1e-3 * ret
        self._write_row(ret, success)
        self.logger.record("eval/mean_return", ret)
        self.logger.record("eval/success_rate", success)
        if score > self.state.best_eval:
            self.state.best_eval = score
            save_policy(
                self.model.policy,
                _spec(self.model, self.cfg, self.vocab),
                self.run_dir / "best",
                self.vocab,
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


def _tensorboard_dir(run_dir: Path) -> Path | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        warnings.warn(
            "tensorboard is not installed; no TensorBoard logs (pip install tensorboard).",
            stacklevel=2,
        )
        return None
    return run_dir / "tb"


@dataclass
class TrainResult:
    """What :func:`train` leaves behind."""

    run_dir: Path
    interrupted: bool
    num_timesteps: int
    report: dict[str, Any] | None


def truncate_metrics(path: Path, num_timesteps: int) -> None:
    """Drop ``metrics.csv`` rows logged after the checkpoint a resumed run restarts from.

    Those steps are trained again; keeping their rows would repeat timesteps and
    make the curve go backwards.
    """
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= num_timesteps]
    if len(kept) == len(rows):
        return
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    atomic_write_text(path, buffer.getvalue())


def _unique_run_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.runs_dir)
    name = cfg.run_name or cfg.default_run_name()
    run_dir = root / name
    if run_dir.exists():
        if cfg.run_name is not None:
            raise ConfigError(
                f"Run folder {run_dir} already exists; continue it with --resume {run_dir}, or pick another --run-name."
            )
        i = 2
        while (root / f"{name}-{i}").exists():
            i += 1
        run_dir = root / f"{name}-{i}"
    return run_dir


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
    finalize: bool = True,
) -> TrainResult:
    """Train an agent and write its run folder.

    Args:
        cfg: Resolved configuration (ignored except for ``steps`` when resuming:
            the run's saved config is used, with ``steps`` raised if larger).
        resume: A run folder to continue from its newest readable checkpoint.
        command: The command line to record (default: ``sys.argv``).
        progress: Show a progress bar.
        finalize: Run the final evaluation, plot and GIF.
    """
    from mbm_agent.config import load_run_config

    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run folder.")
        saved = load_run_config(run_dir)
        if cfg.steps > saved.steps:
            saved.steps = cfg.steps
        cfg = saved
    else:
        run_dir = _unique_run_dir(cfg)

    # Env and algorithm come first: a bad env id or hyperparameter is then an
    # error that leaves no half-made run folder behind.
    # 0 keeps torch's default (all cores): fastest for one run on a quiet machine
    # (FindSound: ~1750 vs ~1000 steps/s with 1 thread on 2 cores). When other work
    # shares the cores, set 1: 2 threads on 2 busy cores ran up to ~7x slower.
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    venv, vocab = make_train_env(cfg, cfg.seed)
    try:
        model = build_algorithm(cfg, venv, _tensorboard_dir(run_dir))
    except BaseException:
        venv.close()
        raise
    if resume is None and cfg.init_from is not None:
        try:
            init_policy_from(model, cfg, vocab)
        except BaseException:
            venv.close()
            raise
    if resume is None:
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir)
    cmd = " ".join(shlex.quote(a) for a in (command if command is not None else sys.argv))
    with (run_dir / "command.txt").open("a", encoding="utf-8") as fh:
        fh.write(cmd + "\n")
    state = TrainState()
    if resume is not None:
        loaded = latest_checkpoint(run_dir, model)
        truncate_metrics(run_dir / "metrics.csv", loaded.num_timesteps if loaded else 0)
        if loaded is not None:
            state = loaded
            venv.seed(
                cfg.seed + state.num_timesteps
            )  # fresh episodes, not a replay of the first ones

    from mbm_agent.evaluation import evaluate_agent

    def periodic(agent: Agent, episodes: int) -> dict[str, Any]:
        return evaluate_agent(
            agent, cfg.env_id, cfg.env_kwargs, episodes=episodes, n_envs=min(episodes, 32)
        )

    callback = TrainerCallback(cfg, run_dir, vocab, state, periodic, progress)
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if callback.stop_requested:  # a second Ctrl-C aborts at once
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        callback.stop_requested = True
        print(
            "\nCtrl-C: saving a checkpoint and stopping (press again to abort)...", file=sys.stderr
        )

    # Signal handlers can only be set from the main thread; elsewhere (a Ray Tune
    # trial runs its function in a thread) Ctrl-C is the caller's business.
    own_sigint = threading.current_thread() is threading.main_thread()
    if own_sigint:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        remaining = cfg.steps - state.num_timesteps
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=callback,
                reset_num_timesteps=resume is None or state.num_timesteps == 0,
                tb_log_name="train",
                progress_bar=False,
            )
    finally:
        if own_sigint:
            signal.signal(signal.SIGINT, previous)
    callback.model = model
    ckpt = callback.checkpoint()
    save_policy(model.policy, _spec(model, cfg, vocab), run_dir / "final", vocab)
    if not (run_dir / "best").exists():
        shutil.copytree(run_dir / "final", run_dir / "best")
    if cfg.sb3_zip:
        model.save(run_dir / "sb3_model.zip")
    venv.close()
    interrupted = callback.stop_requested
    if interrupted:
        print(
            f"Stopped at {model.num_timesteps} steps; checkpoint {ckpt}. Continue with: mbm-agent train {cfg.env_id} --resume {run_dir}",
            file=sys.stderr,
        )
        return TrainResult(run_dir, True, model.num_timesteps, None)
    report = finalize_run(run_dir, cfg) if finalize else None
    return TrainResult(run_dir, False, model.num_timesteps, report)


def finalize_run(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Final evaluation (report), learning curve and episode GIF of a finished run."""
    from mbm_agent.agent import load_agent
    from mbm_agent.evaluation import evaluate_agent, write_report

    agent = load_agent(run_dir, "best")
    report = evaluate_agent(
        agent,
        cfg.env_id,
        cfg.env_kwargs,
        episodes=cfg.final_eval_episodes,
        n_envs=min(cfg.final_eval_episodes, 64),
        meta={"run": run_dir.name, "policy": "best"},
    )
    write_report(report, run_dir)
    try:
        from mbm_agent.plots import learning_curve

        learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    except ImportError as exc:
        warnings.warn(f"No learning curve: {exc}", stacklevel=2)
    if cfg.gif_episodes > 0:
        record_gif(agent, cfg, run_dir / "episodes.gif", cfg.gif_episodes)
    return report


def record_gif(agent: Agent, cfg: TrainConfig, path: Path, episodes: int) -> Path:
    """Play ``episodes`` evaluation episodes with the agent and save them as a GIF."""
    from envs.play import save_gif

    env, _ = make_single_env(cfg.env_id, cfg.env_kwargs, agent.vocabulary, render_mode="rgb_array")
    frames = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + 10_000_000 + ep)
        done = False
        while not done:
            frame = env.render()
            if frame is not None:
                frames.append(np.asarray(frame))
            action = agent.act({k: np.asarray(v)[None] for k, v in obs.items()})[0]
            obs, _, terminated, truncated, _ = env.step(int(action))
            done = terminated or truncated
        frame = env.render()
        if frame is not None:
            frames.append(np.asarray(frame))
    env.close()
    if not frames:
        raise RuntimeError(f"{cfg.env_id} rendered no frames; cannot write {path}.")
    return save_gif(frames, path)
