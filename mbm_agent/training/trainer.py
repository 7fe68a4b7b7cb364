"""Training: build the env and the agent, learn, checkpoint, evaluate, write the run folder.

Run folder layout (see ``runs/README.md``)::

    runs/NAME/
      config.yaml, config.json   resolved configuration
      command.txt                the exact command line
      metrics.csv                one row per rollout (and per periodic evaluation)
      tb/                        TensorBoard logs
      checkpoints/step-N/        resumable checkpoints (policy, optimizer, counters)
      best/                      policy with the best periodic evaluation (score.json: its score)
      final/                     policy at the end of training
      eval.json, eval.md         final evaluation on held-out seeds
      learning_curve.png         return and success vs environment steps
      episodes.gif               a few evaluation episodes
      .lock                      held by the one process writing the folder

Resuming (:func:`train` with ``resume=``) takes its settings from
:func:`~mbm_agent.training.config.resume_config`, repairs what a killed writer
left (:func:`~mbm_agent.training.storage.clean_stale`), then continues from the
newest readable checkpoint; it refuses, touching nothing, when the run has
checkpoints but none reads, or has a ``final/`` policy but no checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv

from envs.core.text import Vocabulary
from mbm_agent.evaluation import (
    EVAL_SEED_BASE,
    evaluate_agent,
    policy_meta,
    set_aside_reports,
    weights_digest,
    write_report,
)
from mbm_agent.plots import learning_curve, save_gif
from mbm_agent.sb3.algorithms import algorithm_class, algorithm_kwargs, family, policy_class
from mbm_agent.sb3.policy import policy_kwargs_for
from mbm_agent.training.agent import (
    Agent,
    load_agent,
    model_spec,
    read_spec,
    resolve_model_dir,
    save_policy,
)
from mbm_agent.training.callback import TrainerCallback
from mbm_agent.training.checkpoints import (
    TrainState,
    checkpoint_folders,
    latest_checkpoint,
    read_best_score,
    truncate_log,
    truncate_metrics,
)
from mbm_agent.training.config import (
    RESUME_LOCATION,
    SCHEDULABLE,
    ConfigError,
    TrainConfig,
    linear_start,
    load_run_config,
    resume_config,
    save_config,
)
from mbm_agent.training.envs import (
    evaluation_env_kwargs,
    make_single_env,
    make_train_env,
    observation_adapter,
)
from mbm_agent.training.lock import RunLock
from mbm_agent.training.storage import (
    ModelFileError,
    append_text,
    clean_stale,
    fresh_tmp_dir,
    load_module,
    replace_dir,
)
from mbm_agent.training.threads import torch_threads_for


def sb3_algo_kwargs(algo_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``algo_kwargs`` as SB3 takes them: each ``"lin_<start>"`` an SB3 ``LinearSchedule``."""
    out = dict(algo_kwargs)
    for name in SCHEDULABLE:
        start = linear_start(out.get(name))
        if start is not None:
            out[name] = LinearSchedule(start, 0.0, 1.0)
    return out


def build_algorithm(cfg: TrainConfig, venv: VecEnv, tensorboard_dir: Path | None) -> BaseAlgorithm:
    """The SB3 algorithm with our multimodal extractor."""
    # The encoder takes the adapted observation: a waveform key is 'audio' to it.
    modalities = observation_adapter(cfg).modalities
    kwargs = policy_kwargs_for(cfg.encoder_config(), modalities, cfg.policy_kwargs, cfg.extractor)
    common: dict[str, Any] = {
        "policy_kwargs": kwargs,
        "seed": cfg.seed,
        "device": cfg.device,
        "verbose": 0,
        "tensorboard_log": str(tensorboard_dir) if tensorboard_dir is not None else None,
    }
    algo = algorithm_class(cfg.algo)
    policy = policy_class(cfg.algo, cfg.extractor)
    common.update(algorithm_kwargs(cfg.algo, venv.observation_space))
    try:
        return algo(policy, venv, **common, **sb3_algo_kwargs(cfg.algo_kwargs))
    except (TypeError, ValueError) as exc:
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
    assert cfg.init_from is not None
    model_dir = resolve_model_dir(cfg.init_from, "best")
    theirs = read_spec(model_dir)
    mine = model_spec(model, cfg, vocab)
    try:
        same_family = family(str(theirs.get("algo"))) == family(cfg.algo)
    except ValueError:
        same_family = False
    if not same_family:
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
        "observation_adapter",
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
    if hasattr(model, "q_net_target") and hasattr(model, "q_net"):  # DQN's pair
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    return model_dir


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


def _new_run_dir(cfg: TrainConfig) -> Path:
    """Create the folder of a new run (``NAME``, or ``NAME-2``, ... for a default name)."""
    root = Path(cfg.runs_dir)
    name = cfg.run_name or cfg.default_run_name()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        run_dir = root / (name if i == 1 else f"{name}-{i}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            if cfg.run_name is not None:
                raise ConfigError(
                    f"Run folder {run_dir} already exists; continue it with --resume {run_dir}, "
                    "or pick another --run-name."
                ) from None
            continue
        return run_dir
    raise ConfigError(f"{root} holds 10000 runs named {name}*; pick a --run-name.")


def _resume_changes(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from the run's saved config (locations aside)."""
    saved = load_run_config(run_dir)
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in RESUME_LOCATION and getattr(cfg, f.name) != getattr(saved, f.name)
    }


def _prepare_resume(
    cfg: TrainConfig,
    run_dir: Path,
    model: BaseAlgorithm,
    venv: VecEnv,
    vocab: Vocabulary | None,
) -> TrainState:
    """Repair, check and load a run being resumed (its lock held); its counters.

    Raises:
        ModelFileError, ConfigError: Nothing to resume from, or the run cannot continue
            as asked (nothing in the folder is changed then, repairs aside).
    """
    for name in ("metrics.csv", "command.txt"):
        if (run_dir / name).is_symlink():
            raise ModelFileError(
                f"{run_dir / name} is a symbolic link; mbm-agent writes only its own files in "
                "a run folder. Replace it with a copy of its target, then resume."
            )
    for folder in (run_dir, run_dir / "checkpoints"):
        removed = clean_stale(folder)
        if removed:
            warnings.warn(
                f"Removed what a stopped run left in {folder}: {', '.join(removed)}.",
                stacklevel=3,
            )
    loaded = latest_checkpoint(run_dir, model)
    if loaded is None:
        if (run_dir / "final").exists() or checkpoint_folders(run_dir):
            raise ModelFileError(
                f"--resume {run_dir}: the run has no checkpoint to continue from "
                f"(checkpoints/ is empty), but it has trained (final/ exists); nothing was "
                f"changed. Start a new run from its policy: mbm-agent train {cfg.env_id} "
                f"--init-from {run_dir}"
            )
        warnings.warn(
            f"{run_dir} has no checkpoint yet (it stopped before its first one): training it "
            "again from step 0; metrics.csv rows of the lost attempt are dropped, best/ is "
            "kept unless an evaluation beats it.",
            stacklevel=3,
        )
        loaded = TrainState()
        if cfg.init_from is not None:  # start again where the first attempt started
            init_policy_from(model, cfg, vocab)
    if cfg.steps < loaded.num_timesteps:
        raise ConfigError(
            f"--steps {cfg.steps} is below the {loaded.num_timesteps} steps {run_dir} has "
            "trained; --steps is the run's total budget: give at least that many."
        )
    # The best score lives with best/ (score.json, renamed in with the weights): a
    # checkpoint may predate the last improvement, and resuming with its score
    # would let a worse policy replace a better best/.
    if not (run_dir / "best").is_dir():
        loaded.best_eval = -float("inf")
    else:
        score = read_best_score(run_dir)
        if score is not None:
            loaded.best_eval = score
    if cfg != load_run_config(run_dir):  # a new budget or device: kept for the next resume
        save_config(cfg, run_dir)
    truncate_metrics(run_dir / "metrics.csv", loaded.num_timesteps)
    truncate_log(run_dir / "curriculum.jsonl", loaded.num_timesteps)
    if loaded.num_timesteps:
        venv.seed(cfg.seed + loaded.num_timesteps)  # fresh episodes, not a replay of the first
    return loaded


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
        cfg: Resolved configuration. When resuming it must be the run's saved
            configuration except where :func:`~mbm_agent.training.config.resume_config`
            allows a change (``steps``: the new total budget, ``device``,
            ``torch_threads``); any other difference is refused.
        resume: A run folder to continue from its newest readable checkpoint.
        command: The command line to record (default: ``sys.argv``).
        progress: Show a progress bar.
        finalize: Run the final evaluation, plot and GIF.

    Raises:
        ConfigError: A bad setting, a refused change on resume, or a run folder that
            exists already.
        ModelFileError: Nothing readable to resume from.
        RunLockedError: Another live process is writing the run folder.
    """
    run_dir: Path | None = None
    if resume is not None:
        run_dir = Path(resume)
        cfg = resume_config(run_dir, _resume_changes(cfg, run_dir))

    # Env and algorithm come first: a bad env id or hyperparameter is then an
    # error that leaves no half-made run folder behind.
    # 0 (the default) picks a count that does not collapse when other processes
    # share the cores (see training/threads.py for the measurements).
    torch.set_num_threads(torch_threads_for(cfg.torch_threads))
    venv, vocab = make_train_env(cfg, cfg.seed)
    model: BaseAlgorithm | None = None
    try:
        model = build_algorithm(cfg, venv, None)
        if resume is None and cfg.init_from is not None:
            init_policy_from(model, cfg, vocab)
        if run_dir is None:
            run_dir = _new_run_dir(cfg)
        with RunLock(run_dir):
            if resume is None:
                save_config(cfg, run_dir)
                state = TrainState()
            else:
                state = _prepare_resume(cfg, run_dir, model, venv, vocab)
            tensorboard = _tensorboard_dir(run_dir)
            model.tensorboard_log = str(tensorboard) if tensorboard is not None else None
            cmd = " ".join(shlex.quote(a) for a in (command if command is not None else sys.argv))
            append_text(run_dir / "command.txt", cmd + "\n")
            return _learn(cfg, run_dir, model, vocab, state, resume is not None, progress, finalize)
    finally:
        if model is not None and model.env is not None and model.env is not venv:
            model.env.close()  # a curriculum level's envs
        venv.close()


def _learn(
    cfg: TrainConfig,
    run_dir: Path,
    model: BaseAlgorithm,
    vocab: Vocabulary | None,
    state: TrainState,
    resumed: bool,
    progress: bool,
    finalize: bool,
) -> TrainResult:
    """Train from ``state`` to ``cfg.steps``, save checkpoint, final and best, finalize."""
    eval_kwargs = evaluation_env_kwargs(cfg.env_id, cfg.env_kwargs)

    def periodic(agent: Agent, episodes: int) -> dict[str, Any]:
        return evaluate_agent(
            agent, cfg.env_id, eval_kwargs, episodes=episodes, n_envs=min(episodes, 32)
        )

    callback = TrainerCallback(cfg, run_dir, vocab, state, periodic, progress)
    best = run_dir / "best"
    best_before = weights_digest(best) if resumed else None
    if resumed:
        # Reports that name weights best/ no longer holds: an earlier session was killed
        # between replacing best/ and setting its reports aside.
        moved = set_aside_reports(run_dir, main_report=True, changed=False)
        if moved:
            print(
                f"{len(moved)} report(s) of an earlier best policy moved to {moved[0].parent}.",
                file=sys.stderr,
            )
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
                reset_num_timesteps=not resumed or state.num_timesteps == 0,
                tb_log_name="train",
                progress_bar=False,
            )
    finally:
        if own_sigint:
            signal.signal(signal.SIGINT, previous)
    callback.model = model
    ckpt = callback.checkpoint()
    save_policy(model.policy, model_spec(model, cfg, vocab), run_dir / "final", vocab)
    if not (run_dir / "best").exists() or (
        state.best_eval == -float("inf") and read_best_score(run_dir) is None
    ):
        # Never evaluated (in this session or an earlier one): best/ is the final policy,
        # renewed at the end of every session (copied whole, then renamed in).
        tmp = fresh_tmp_dir(run_dir / "best")
        try:
            shutil.copytree(run_dir / "final", tmp, dirs_exist_ok=True)
            replace_dir(tmp, run_dir / "best")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if cfg.sb3_zip:
        target = run_dir / "sb3_model.zip"
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        model.save(partial)
        os.replace(partial, target)
    interrupted = callback.stop_requested
    if resumed and best_before is not None and best_before != weights_digest(best):
        # eval.json too when no final evaluation follows to re-make it
        moved = set_aside_reports(run_dir, main_report=interrupted or not finalize)
        if moved:
            print(
                f"best/ changed in this session: {len(moved)} report(s) of the earlier best "
                f"policy moved to {moved[0].parent} (re-run them with mbm-agent eval).",
                file=sys.stderr,
            )
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
    agent = load_agent(run_dir, "best")
    report = evaluate_agent(
        agent,
        cfg.env_id,
        evaluation_env_kwargs(cfg.env_id, cfg.env_kwargs),
        episodes=cfg.final_eval_episodes,
        n_envs=min(cfg.final_eval_episodes, 64),
        meta=policy_meta(run_dir.name, "best", run_dir / "best"),
    )
    write_report(report, run_dir)
    try:
        learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    except ImportError as exc:
        warnings.warn(f"No learning curve: {exc}", stacklevel=2)
    if cfg.gif_episodes > 0:
        record_gif(agent, cfg, run_dir / "episodes.gif", cfg.gif_episodes)
    return report


def record_gif(agent: Agent, cfg: TrainConfig, path: Path, episodes: int) -> Path:
    """Play ``episodes`` evaluation episodes with the agent and save them as a GIF.

    A recurrent policy's state is carried through each episode and reset at its start.
    """
    env, _ = make_single_env(
        cfg.env_id,
        evaluation_env_kwargs(cfg.env_id, cfg.env_kwargs),
        agent.vocabulary,
        render_mode="rgb_array",
        adapter=agent.adapter,
    )
    actor = agent.actor()
    frames = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + 10_000_000 + ep)
        actor.reset()
        done = False
        while not done:
            frame: Any = env.render()
            if frame is not None:
                frames.append(np.asarray(frame))
            action = actor({k: np.asarray(v)[None] for k, v in obs.items()})[0]
            obs, _, terminated, truncated, _ = env.step(int(action))
            done = terminated or truncated
        frame = env.render()
        if frame is not None:
            frames.append(np.asarray(frame))
    env.close()
    if not frames:
        raise RuntimeError(f"{cfg.env_id} rendered no frames; cannot write {path}.")
    return save_gif(frames, path)
