"""Behaviour cloning: fit the usual actor-critic policy to expert demonstrations.

:func:`train_bc` fits the policy (multimodal encoder, actor layers, softmax over
actions) to :class:`~mbm_agent.imitation.demos.Demos` with a cross-entropy loss,
in torch or with Keras ``model.fit`` on the Keras twin, and :func:`bc_run` writes
a normal run folder (``best/``, ``final/``, metrics, evaluation report, GIF):
``mbm-agent eval``, ``load_agent``, exports and ``mbm-agent train --init-from``
(a PPO warm start) all take it.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import envs
from envs.core.text import Vocabulary
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.encoding.config import EncoderConfig, unknown_key_hint
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.evaluation import evaluate_agent, write_report
from mbm_agent.imitation.demos import DemoFileError, Demos
from mbm_agent.sb3.policy import fast_adam
from mbm_agent.training.agent import build_policy, load_agent, policy_spec, save_policy
from mbm_agent.training.config import (
    ALIASES,
    ConfigError,
    TrainConfig,
    check_name,
    encoder_from_dict,
    expand_aliases,
)
from mbm_agent.training.storage import atomic_write_text, space_to_dict
from mbm_agent.training.trainer import record_gif

BACKENDS = ("torch", "keras")


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
        encoder: The encoder's settings (a mapping of ``EncoderConfig`` fields is
            converted); ``fusion`` is short for ``encoder.fusion`` in :meth:`from_dict`.
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
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    modalities: dict[str, str] = field(default_factory=dict)
    net_arch: list[int] = field(default_factory=lambda: [64])
    # ReLU, not SB3's tanh: the fused features are unbounded, and on GoToObject the
    # tanh layer saturated at once (every unit at +-1, zero gradient) and BC stayed at
    # the majority action; with ReLU it learns.
    activation: str = "relu"
    eval_episodes: int = 200
    gif_episodes: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.encoder, Mapping):  # fields as --set or a file gives them
            self.encoder = encoder_from_dict(self.encoder)
        if not isinstance(self.encoder, EncoderConfig):
            raise ValueError(
                f"encoder must be an EncoderConfig or a mapping, got {self.encoder!r}."
            )
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BCConfig:
        """Settings from a mapping (``mbm-agent bc``'s flags and ``--set``).

        Raises:
            ConfigError: An unknown setting (with the closest known name) or a bad value.
        """
        data = expand_aliases(data, "BC settings")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = ", ".join(unknown_key_hint(k, [*known, *ALIASES]) for k in unknown)
            raise ConfigError(f"Unknown BC setting(s): {hints}; known: {[*known, *ALIASES]}.")
        try:
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc

    def policy_kwargs(self) -> dict[str, Any]:
        """The SB3 ``policy_kwargs`` (JSON form) of the cloned policy."""
        return {"net_arch": list(self.net_arch), "activation_fn": self.activation}


def _spec_for(
    env_id: str, env_kwargs: Mapping[str, Any], cfg: BCConfig
) -> tuple[dict[str, Any], Any, Vocabulary | None]:
    """An untrained PPO policy (and its spec) for the game, as ``mbm-agent train`` would build."""
    env = envs.make(env_id, **dict(env_kwargs))
    vocabulary = env.vocabulary
    encoder = cfg.encoder
    proto = {
        "algo": "ppo",
        "encoder": encoder.to_dict(),
        "modalities": dict(cfg.modalities),
        "policy_kwargs": cfg.policy_kwargs(),
    }
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

    class _Log(keras.callbacks.Callback):
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
    env_id = str(demos.meta["env_id"])
    game = envs.game_name(env_id)
    fusion = cfg.encoder.fusion
    name = check_name(run_name or f"{game}-bc-{cfg.backend}-{fusion}-s{cfg.seed}", "--run-name")
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
                    "encoder": cfg.encoder.to_dict(),
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
