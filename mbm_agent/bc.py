"""Behaviour cloning from our games' experts: record demonstrations, fit a policy.

Every game has a shortest-path expert. :func:`record_demos` plays it over many
worlds at once and keeps whole episodes; :func:`save_demos` writes them as one
``.npz`` of plain arrays (observations per key, expert actions, episode ids,
and the metadata as a JSON string) that :func:`load_demos` reads with
``allow_pickle=False``. :func:`train_bc` fits the usual actor-critic policy
(multimodal encoder, actor layers, softmax over actions) with a cross-entropy
loss, in torch or with Keras ``model.fit`` on the Keras twin, and
:func:`bc_run` writes a normal run folder (``best/``, ``final/``, metrics,
evaluation report, GIF): ``mbm-agent eval``, ``load_agent``, exports and
``mbm-agent train --init-from`` (a PPO warm start) all take it.

With ``noise > 0`` the expert's executed action is replaced by a random one
with that probability while the label stays the expert's action (DART, Laskey
et al. 2017): the demonstrations then show how to recover from the small
mistakes a cloned policy makes, which plain expert data never does.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

import envs
from envs.core.text import Vocabulary
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.evaluation import episode_success
from mbm_agent.sb3.policy import fast_adam
from mbm_agent.training.agent import build_policy, policy_spec, save_policy
from mbm_agent.training.storage import atomic_write_bytes, atomic_write_text

DEMOS_FORMAT = "mbm-agent-demos"
DEMOS_VERSION = 1
BACKENDS = ("torch", "keras")


class DemoFileError(ValueError):
    """A demonstrations file is missing, corrupt or from another game."""


@dataclass
class Demos:
    """Expert demonstrations: whole episodes, step by step.

    Attributes:
        obs: Per observation key, ``(N, ...)`` raw observations.
        actions: ``(N,)`` expert actions (the labels).
        executed: ``(N,)`` actions actually taken (differ from ``actions`` with noise).
        rewards: ``(N,)`` rewards received.
        episode: ``(N,)`` episode index of each step.
        meta: ``env_id``, ``env_kwargs``, ``seed``, ``noise``, ``episodes``,
            ``success_rate`` (of the recorded episodes) and the game's ``vocabulary``.
    """

    obs: dict[str, NDArray[Any]]
    actions: NDArray[np.int64]
    executed: NDArray[np.int64]
    rewards: NDArray[np.float32]
    episode: NDArray[np.int64]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def n_episodes(self) -> int:
        """Number of whole episodes."""
        return int(self.episode.max()) + 1 if len(self.episode) else 0

    def subset(self, mask: NDArray[np.bool_]) -> Demos:
        """The steps where ``mask`` is True."""
        return Demos(
            {k: v[mask] for k, v in self.obs.items()},
            self.actions[mask],
            self.executed[mask],
            self.rewards[mask],
            self.episode[mask],
            dict(self.meta),
        )


def record_demos(
    env_id: str,
    episodes: int,
    *,
    n_envs: int = 32,
    seed: int = 0,
    noise: float = 0.0,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Demos:
    """Play the game's expert and keep ``episodes`` whole episodes.

    Args:
        env_id: One of our games (``envs.ENV_IDS``).
        episodes: Number of episodes to keep.
        n_envs: Worlds played at once.
        seed: Seed of the first world (world ``i`` starts from ``seed + i``) and
            of the noise.
        noise: Probability of executing a random action instead of the expert's
            (the label stays the expert's action).
        env_kwargs: Game arguments.

    Raises:
        ValueError: Unknown game, no expert, or bad arguments.
    """
    if env_id not in envs.ENV_IDS:
        raise ValueError(
            f"{env_id!r} has no expert to record; demonstrations come from our games: "
            f"{', '.join(envs.ENV_IDS)}."
        )
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}.")
    kwargs = dict(env_kwargs or {})
    n = max(1, min(n_envs, episodes))
    venv = envs.make_vec(env_id, n, autoreset_mode="same_step", **kwargs)
    rng = np.random.default_rng(seed)
    n_actions = int(venv.single_action_space.n)
    obs, _ = venv.reset(seed=seed)
    slot_episode = np.arange(n)
    next_episode = n
    steps: list[
        tuple[dict[str, NDArray[Any]], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]
    ] = []
    finished: set[int] = set()
    successes: dict[int, bool] = {}
    # Episode ids are handed out in start order; waiting for ids 0..E-1 (not for the
    # first E to finish) keeps long episodes as likely as short ones.
    while not all(e in finished for e in range(episodes)):
        expert = venv.expert_actions()
        executed = expert.copy()
        flip = rng.random(n) < noise
        executed[flip] = rng.integers(0, n_actions, size=int(flip.sum()))
        before = {k: np.array(v) for k, v in obs.items()}
        obs, reward, terminated, truncated, info = venv.step(executed)
        steps.append(
            (before, expert, executed, slot_episode.copy(), np.asarray(reward, dtype=np.float32))
        )
        done = np.asarray(terminated) | np.asarray(truncated)
        for i in np.flatnonzero(done):
            ep = int(slot_episode[i])
            finished.add(ep)
            success = episode_success(info, int(i))
            successes[ep] = bool(reward[i] > 0) if success is None else success
            slot_episode[i] = next_episode
            next_episode += 1
    vocabulary = venv.vocabulary
    venv.close()
    obs_cat = {k: np.concatenate([s[0][k] for s in steps]) for k in steps[0][0]}
    ep_cat = np.concatenate([s[3] for s in steps])
    # Whole episodes 0..E-1, each one's steps contiguous and in time order.
    order = np.argsort(ep_cat, kind="stable")
    order = order[ep_cat[order] < episodes]
    meta = {
        "format": DEMOS_FORMAT,
        "version": DEMOS_VERSION,
        "env_id": env_id,
        "env_kwargs": kwargs,
        "seed": seed,
        "noise": noise,
        "episodes": episodes,
        "success_rate": float(np.mean([successes[e] for e in range(episodes)])),
        "vocabulary": vocabulary.to_dict() if vocabulary is not None else None,
    }
    return Demos(
        {k: v[order] for k, v in obs_cat.items()},
        np.concatenate([s[1] for s in steps])[order].astype(np.int64),
        np.concatenate([s[2] for s in steps])[order].astype(np.int64),
        np.concatenate([s[4] for s in steps])[order].astype(np.float32),
        ep_cat[order].astype(np.int64),
        meta,
    )


def save_demos(demos: Demos, path: str | Path) -> Path:
    """Write demonstrations to ``path`` (``.npz``, compressed, no pickled objects), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    arrays: dict[str, NDArray[Any]] = {f"obs/{k}": v for k, v in demos.obs.items()}
    arrays.update(
        actions=demos.actions,
        executed=demos.executed,
        rewards=demos.rewards,
        episode=demos.episode,
        meta=np.array(json.dumps(demos.meta)),
    )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_demos(path: str | Path) -> Demos:
    """Read a demonstrations file written by :func:`save_demos` (never unpickles).

    Raises:
        DemoFileError: Missing, truncated, corrupt or foreign files (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise DemoFileError(
            f"{path} does not exist; record demonstrations with: mbm-agent demos ENV_ID --out {path}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    except ValueError as exc:
        raise DemoFileError(
            f"{path} holds pickled objects or is not an array file; refusing to load it ({exc})."
        ) from exc
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, ...
        raise DemoFileError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); record it again."
        ) from exc
    try:
        meta = json.loads(str(files.pop("meta")))
    except (KeyError, json.JSONDecodeError) as exc:
        raise DemoFileError(
            f"{path} has no readable metadata; is it an mbm-agent demos file?"
        ) from exc
    if meta.get("format") != DEMOS_FORMAT or meta.get("version") != DEMOS_VERSION:
        raise DemoFileError(
            f"{path} is not an mbm-agent demonstrations file of version {DEMOS_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})."
        )
    needed = ("actions", "executed", "rewards", "episode")
    missing = [k for k in needed if k not in files]
    obs = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("obs/")}
    if missing or not obs:
        raise DemoFileError(f"{path} lacks {missing or ['observations']}; record it again.")
    n = len(files["actions"])
    bad = [k for k, v in {**obs, **{k: files[k] for k in needed}}.items() if len(v) != n]
    if bad:
        raise DemoFileError(
            f"{path}: arrays {bad} do not have {n} steps like 'actions'; record it again."
        )
    return Demos(
        obs,
        files["actions"].astype(np.int64),
        files["executed"].astype(np.int64),
        files["rewards"].astype(np.float32),
        files["episode"].astype(np.int64),
        meta,
    )


@dataclass
class BCConfig:
    """Settings of a behaviour-cloning run.

    Attributes:
        backend: ``"torch"`` or ``"keras"`` (Keras ``model.fit`` on the Keras twin).
        epochs: Passes over the training demonstrations.
        batch_size: Samples per gradient step.
        learning_rate: Adam learning rate.
        max_grad_norm: Gradients are clipped to this global norm (as PPO does);
            without it early steps could push the encoder's ReLUs into a dead,
            constant-output state on FindSound.
        val_fraction: Fraction of episodes held out to pick the best epoch.
        seed: Seed of the initial weights and the batch order.
        encoder: ``EncoderConfig`` fields.
        modalities: Per-key modality declarations.
        net_arch: Hidden layers of the actor (and critic) after the encoder.
        activation: Activation of those layers (relu, tanh, elu, gelu); ``mbm-agent
            train --init-from`` adopts it.
        eval_episodes: Episodes of the evaluation at the end (held-out seeds).
        gif_episodes: Episodes recorded into ``episodes.gif``.
    """

    backend: str = "torch"
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    max_grad_norm: float = 0.5
    val_fraction: float = 0.1
    seed: int = 0
    encoder: dict[str, Any] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)
    net_arch: list[int] = field(default_factory=lambda: [64])
    # ReLU, not SB3's tanh: the fused features are unbounded, and on GoToObject the
    # tanh layer saturated at once (every unit at +-1, zero gradient) and BC stayed at
    # the majority action; with ReLU it learns.
    activation: str = "relu"
    eval_episodes: int = 200
    gif_episodes: int = 2

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not known; use one of {list(BACKENDS)}.")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "max_grad_norm"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.eval_episodes < 0 or self.gif_episodes < 0:
            raise ValueError("eval_episodes and gif_episodes must be >= 0.")
        EncoderConfig.from_dict(self.encoder)

    def policy_kwargs(self) -> dict[str, Any]:
        """The SB3 ``policy_kwargs`` (JSON form) of the cloned policy."""
        return {"net_arch": list(self.net_arch), "activation_fn": self.activation}


def _spec_for(
    env_id: str, env_kwargs: Mapping[str, Any], cfg: BCConfig
) -> tuple[dict[str, Any], Any, Vocabulary | None]:
    """An untrained PPO policy (and its spec) for the game, as ``mbm-agent train`` would build."""
    env = envs.make(env_id, **dict(env_kwargs))
    vocabulary = env.unwrapped.vocabulary  # type: ignore[attr-defined]
    encoder = EncoderConfig.from_dict(cfg.encoder)
    proto = {
        "algo": "ppo",
        "encoder": encoder.to_dict(),
        "modalities": dict(cfg.modalities),
        "policy_kwargs": cfg.policy_kwargs(),
    }
    from mbm_agent.training.storage import space_to_dict

    proto["observation_space"] = space_to_dict(env.observation_space)
    proto["action_space"] = space_to_dict(env.action_space)
    env.close()
    torch.manual_seed(cfg.seed)
    policy = build_policy(proto)
    spec = policy_spec(
        policy,
        algo="ppo",
        env_id=env_id,
        env_kwargs=dict(env_kwargs),
        encoder=encoder,
        modalities=cfg.modalities,
        policy_kwargs=cfg.policy_kwargs(),
        vocabulary=vocabulary,
    )
    return spec, policy, vocabulary


def _split(demos: Demos, val_fraction: float, seed: int) -> tuple[Demos, Demos | None]:
    n_eps = demos.n_episodes
    n_val = round(n_eps * val_fraction)
    if n_val == 0 or n_val >= n_eps:
        return demos, None
    val_eps = np.random.default_rng(seed).permutation(n_eps)[:n_val]
    is_val = np.isin(demos.episode, val_eps)
    return demos.subset(~is_val), demos.subset(is_val)


def _evaluate(net: PolicyNetwork, demos: Demos, batch: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the network on the demonstrations."""
    net.eval()
    correct, total = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(demos), batch):
            obs = to_tensor_obs({k: v[start : start + batch] for k, v in demos.obs.items()})
            labels = torch.as_tensor(demos.actions[start : start + batch])
            action, logits, _ = net(obs)
            total += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((action == labels).sum())
    n = max(1, len(demos))
    return total / n, correct / n


def _fit_torch(
    net: PolicyNetwork, train: Demos, val: Demos | None, cfg: BCConfig, log: Any
) -> list[dict[str, float]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, **fast_adam())
    loss_fn = nn.CrossEntropyLoss()
    obs_t = to_tensor_obs(train.obs)
    actions = torch.as_tensor(train.actions)
    history: list[dict[str, float]] = []
    best_state, best_loss = None, float("inf")
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(len(train), generator=gen)
        total, correct, seen = 0.0, 0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            _, logits, _ = net({k: v[idx] for k, v in obs_t.items()})
            loss = loss_fn(logits, actions[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=True)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == actions[idx]).sum())
            seen += len(idx)
        val_loss, val_acc = _evaluate(net, val) if val is not None else (math.nan, math.nan)
        row = {
            "epoch": epoch,
            "loss": total / seen,
            "accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        log(row)
        # The lowest held-out loss, not the first top accuracy: accuracy saturates early
        # while the action probabilities are still nearly flat, and PPO warm-started from
        # such a policy samples almost at random.
        score = val_loss if val is not None else row["loss"]
        if score < best_loss:
            best_loss = score
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


def _fit_keras(
    net: PolicyNetwork, train: Demos, val: Demos | None, cfg: BCConfig, log: Any
) -> list[dict[str, float]]:
    try:
        import keras

        from mbm_agent.deploy.keras import keras_to_torch, torch_to_keras
    except ImportError as exc:
        raise ImportError(
            f"backend='keras' needs TensorFlow and Keras 3: pip install 'mbm-agent[tf]' ({exc})."
        ) from exc
    keras.utils.set_random_seed(cfg.seed)
    model = torch_to_keras(net)
    logits_model = keras.Model(
        model.inputs,
        model.outputs["logits"] if isinstance(model.outputs, dict) else model.output["logits"],
    )
    logits_model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=cfg.max_grad_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class _Log(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.start = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            row = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", float("nan"))),
                "accuracy": float(logs.get("accuracy", float("nan"))),
                "val_loss": float(logs.get("val_loss", float("nan"))),
                "val_accuracy": float(logs.get("val_accuracy", float("nan"))),
                "seconds": time.perf_counter() - self.start,
            }
            history.append(row)
            log(row)

    history: list[dict[str, float]] = []
    monitor = "val_loss" if val is not None else "loss"
    stop = keras.callbacks.EarlyStopping(
        monitor=monitor, mode="min", patience=cfg.epochs, restore_best_weights=True
    )
    logits_model.fit(
        {k: v for k, v in train.obs.items()},
        train.actions,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        validation_data=({k: v for k, v in val.obs.items()}, val.actions)
        if val is not None
        else None,
        callbacks=[_Log(), stop],
        verbose=0,
    )
    keras_to_torch(model, net)
    net.eval()
    return history


def train_bc(
    demos: Demos, cfg: BCConfig, log: Any = None
) -> tuple[PolicyNetwork, Any, dict[str, Any], Vocabulary | None, list[dict[str, float]]]:
    """Fit a policy to the demonstrations.

    Returns:
        ``(net, sb3_policy, spec, vocabulary, history)``: the fitted network, the
        SB3 policy holding the same weights (what :func:`bc_run` saves), its
        ``model.json`` spec, the game's vocabulary and one row per epoch. The
        epoch with the lowest loss on held-out episodes is kept.
    """
    env_id = str(demos.meta["env_id"])
    env_kwargs = dict(demos.meta.get("env_kwargs", {}))
    spec, policy, vocabulary = _spec_for(env_id, env_kwargs, cfg)
    saved_vocab = demos.meta.get("vocabulary")
    if vocabulary is not None and saved_vocab is not None and vocabulary.to_dict() != saved_vocab:
        raise DemoFileError(
            f"The demonstrations' vocabulary differs from {env_id}'s; record them again "
            "with this version of the game."
        )
    missing = [k for k in policy.observation_space.spaces if k not in demos.obs]
    if missing:
        raise DemoFileError(f"The demonstrations lack observation key(s) {missing} of {env_id}.")
    net = PolicyNetwork.from_sb3_policy(policy, spec)
    train, val = _split(demos, cfg.val_fraction, cfg.seed)
    log = log or (lambda row: None)
    torch.manual_seed(cfg.seed)
    fit = _fit_torch if cfg.backend == "torch" else _fit_keras
    history = fit(net, train, val, cfg, log)
    net.copy_into_sb3_policy(policy)
    policy.set_training_mode(False)
    return net, policy, spec, vocabulary, history


def bc_run(
    demos: Demos,
    cfg: BCConfig,
    *,
    run_name: str | None = None,
    runs_dir: str | Path = "runs",
    demos_path: str | Path | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any] | None]:
    """Clone the expert and write a run folder; returns it and the evaluation report.

    The folder holds ``config.json`` (``algo`` is ``bc-torch`` or ``bc-keras``;
    the BC settings under ``bc``), ``command.txt``, ``metrics.csv`` (one row
    per epoch), ``best/`` and ``final/`` (the same cloned policy, loadable with
    ``load_agent``), and unless ``cfg.eval_episodes == 0`` the evaluation report
    on held-out seeds and ``episodes.gif``.
    """
    import shlex
    import sys

    env_id = str(demos.meta["env_id"])
    game = envs.game_name(env_id)
    fusion = EncoderConfig.from_dict(cfg.encoder).fusion
    name = run_name or f"{game}-bc-{cfg.backend}-{fusion}-s{cfg.seed}"
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        raise ValueError(f"Run folder {run_dir} already exists; pick another --run-name.")

    def log(row: Mapping[str, float]) -> None:
        if progress:
            print(
                f"epoch {int(row['epoch']):3d}  loss {row['loss']:.4f}  acc {row['accuracy']:.3f}  "
                f"val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.3f}  ({row['seconds']:.1f} s)",
                flush=True,
            )

    _, policy, spec, vocabulary, history = train_bc(demos, cfg, log)
    run_dir.mkdir(parents=True)
    try:
        # config.json as a training run's (compare groups by env_id, algo, fusion, seed).
        atomic_write_text(
            run_dir / "config.json",
            json.dumps(
                {
                    "env_id": env_id,
                    "algo": f"bc-{cfg.backend}",
                    "seed": cfg.seed,
                    "env_kwargs": demos.meta.get("env_kwargs", {}),
                    "encoder": EncoderConfig.from_dict(cfg.encoder).to_dict(),
                    "modalities": dict(cfg.modalities),
                    "policy_kwargs": cfg.policy_kwargs(),
                    "bc": asdict(cfg),
                    "demos": {
                        "path": str(demos_path) if demos_path is not None else None,
                        "steps": len(demos),
                        "episodes": demos.n_episodes,
                        "noise": demos.meta.get("noise"),
                        "seed": demos.meta.get("seed"),
                    },
                },
                indent=2,
            ),
        )
        cmd = " ".join(shlex.quote(a) for a in (command if command is not None else sys.argv))
        (run_dir / "command.txt").write_text(cmd + "\n", encoding="utf-8")
        with (run_dir / "metrics.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]) if history else ["epoch"])
            writer.writeheader()
            writer.writerows(history)
        save_policy(policy, spec, run_dir / "final", vocabulary)
        shutil.copytree(run_dir / "final", run_dir / "best")
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    report = None
    if cfg.eval_episodes > 0:
        from mbm_agent.evaluation import evaluate_agent, write_report
        from mbm_agent.training.agent import load_agent
        from mbm_agent.training.config import TrainConfig
        from mbm_agent.training.trainer import record_gif

        agent = load_agent(run_dir, "best")
        env_kwargs = dict(demos.meta.get("env_kwargs", {}))
        report = evaluate_agent(
            agent,
            env_id,
            env_kwargs,
            episodes=cfg.eval_episodes,
            n_envs=min(cfg.eval_episodes, 64),
            meta={"run": run_dir.name, "policy": "best", "trained_by": f"bc-{cfg.backend}"},
        )
        write_report(report, run_dir)
        if cfg.gif_episodes > 0:
            record_gif(
                agent,
                TrainConfig(env_id=env_id, env_kwargs=env_kwargs),
                run_dir / "episodes.gif",
                cfg.gif_episodes,
            )
    return run_dir, report
