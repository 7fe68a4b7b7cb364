"""Single-observation inference latency: exported policies against SB3's ``predict``.

Every path answers the same question, "one raw observation dict from the env
in, one action out", on the same observations, one at a time (batch 1), after a
warm-up, with one thread. The paths take turns in blocks of calls, so a change
in the machine's load falls on all of them alike:

- SB3 default: ``model.predict`` of SB3's ``MultiInputPolicy`` with
  ``CombinedExtractor`` (NatureCNN on the frame), the peer;
- ours through SB3: ``model.predict`` of a policy with our default
  ``MultimodalExtractor``;
- ours as a plain torch module: :class:`~mbm_agent.deploy.network.PolicyNetwork`
  under ``torch.inference_mode``;
- the exports, through :func:`mbm_agent.deploy.runtime.load_exported` (input checks
  included): TorchScript, ONNX Runtime, and TFLite / SavedModel when
  :mod:`mbm_agent.deploy.keras` and TensorFlow are installed;
- ONNX Runtime's bare ``session.run`` (no input checks), to show their cost.

Policies are untrained (latency does not depend on the weights). Target: the
fastest exported path as users run it (``load_exported().act``) is >= 5x faster
than SB3's default ``predict`` and its median is under 1 ms.

Usage::

    python benchmarks/inference_latency.py --env mbm/SoundMaze-v1 [--fusion film]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.sb3 import SB3VecEnv
from mbm_agent.deploy.export import export_policy
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.deploy.runtime import FORMATS, load_exported
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.sb3 import KeepChannelsLast, policy_kwargs_for
from mbm_agent.training.agent import policy_spec

TARGET_RATIO = 5.0
TARGET_P50_MS = 1.0
USER_PATH = "load_exported().act"  # the exported paths the target is about


def collect(env_id: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` observations from an episode of random actions (resetting as needed)."""
    env = envs.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append({k: np.array(v) for k, v in obs.items()})
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return out


def measure(
    paths: list[tuple[str, Callable[[dict[str, np.ndarray]], Any]]],
    observations: list[dict[str, np.ndarray]],
    reps: int,
    warmup: int,
    block: int = 50,
) -> list[np.ndarray]:
    """Per-call latencies in ms of every path, ``reps`` calls each after ``warmup``.

    The paths take turns in blocks of ``block`` calls, so that a change in the
    machine's load (other processes) falls on all of them alike.
    """
    n = len(observations)
    for _, act in paths:
        for i in range(warmup):
            act(observations[i % n])
    times = [np.empty(reps) for _ in paths]
    for first in range(0, reps, block):
        for (_, act), out in zip(paths, times, strict=True):
            for i in range(first, min(first + block, reps)):
                obs = observations[i % n]
                start = time.perf_counter_ns()
                act(obs)
                out[i] = (time.perf_counter_ns() - start) / 1e6
    return times


def actions_of(
    act: Callable[[dict[str, np.ndarray]], Any], observations: list[dict[str, np.ndarray]]
) -> list[int]:
    """The action a path takes on each observation."""
    return [int(np.asarray(act(obs)).reshape(-1)[0]) for obs in observations]


def main() -> None:
    """Build every path, time it and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="mbm/SoundMaze-v1", choices=envs.ENV_IDS)
    parser.add_argument(
        "--fusion",
        default=EncoderConfig().fusion,
        choices=sorted(FUSION_MODES),
        help="fusion mode of our policy (the rest is the default EncoderConfig)",
    )
    parser.add_argument("--reps", type=int, default=3000, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--n-obs", type=int, default=100, help="distinct observations cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="export folder (default: a temp dir)"
    )
    parser.add_argument("--skip-tf", action="store_true", help="skip SavedModel and TFLite")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before the Keras twin imports TF
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore")

    observations = collect(args.env, args.n_obs, args.seed)
    cfg = EncoderConfig(fusion=args.fusion)
    sb3 = PPO("MultiInputPolicy", DummyVecEnv([lambda: gym.make(args.env)]), device="cpu", seed=0)
    ours_sb3 = PPO(
        "MultiInputPolicy",
        KeepChannelsLast(SB3VecEnv(args.env, 1)),
        policy_kwargs=policy_kwargs_for(cfg, {}, {}),
        device="cpu",
        seed=0,
    )
    spec = policy_spec(
        ours_sb3.policy,
        algo="ppo",
        env_id=args.env,
        env_kwargs={},
        encoder=cfg,
        modalities={},
        policy_kwargs={},
        vocabulary=None,
    )
    net = PolicyNetwork.from_sb3_policy(ours_sb3.policy, spec)

    def torch_act(obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            action, _, _ = net(to_tensor_obs({k: v[None] for k, v in obs.items()}))
        return action.numpy()

    paths: list[tuple[str, Callable[[dict[str, np.ndarray]], Any]]] = [
        (
            "SB3 default predict (CombinedExtractor)",
            lambda o: sb3.predict(o, deterministic=True)[0],
        ),
        (
            "ours via SB3 predict (MultimodalExtractor)",
            lambda o: ours_sb3.predict(o, deterministic=True)[0],
        ),
        ("ours PolicyNetwork (torch, inference_mode)", torch_act),
    ]
    notes: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="mbm_latency_")
    root = args.out or Path(tmp.name)
    formats = [f for f in FORMATS if not (args.skip_tf and f in ("savedmodel", "tflite"))]
    export_seconds: dict[str, float] = {}
    for fmt in formats:
        start = time.perf_counter()
        try:
            folder = export_policy(net, fmt, root / fmt)
        except ImportError as exc:
            notes.append(f"{fmt}: skipped ({exc})")
            continue
        except Exception as exc:
            notes.append(f"{fmt}: export failed ({type(exc).__name__}: {exc})")
            continue
        export_seconds[fmt] = time.perf_counter() - start
        policy = load_exported(folder, threads=1)
        label = {
            "onnx": f"ONNX Runtime ({policy.spec.get('exporter')} export)",
            "torchscript": "TorchScript",
            "savedmodel": "SavedModel",
            "tflite": "TFLite",
        }[fmt]
        paths.append((f"{label}, {USER_PATH}", policy.act))
        if fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(folder / policy.spec["file"]), options, providers=["CPUExecutionProvider"]
            )

            def bare(obs: dict[str, np.ndarray], session: Any = session) -> np.ndarray:
                return session.run(["action"], {k: v[None] for k, v in obs.items()})[0]

            paths.append(("ONNX Runtime, bare session.run (no checks)", bare))

    all_times = measure(paths, observations, args.reps, args.warmup)
    reference_actions = actions_of(torch_act, observations)
    rows = [
        (
            name,
            float(np.percentile(t, 50)),
            float(np.percentile(t, 99)),
            actions_of(act, observations),
        )
        for (name, act), t in zip(paths, all_times, strict=True)
    ]

    peer_p50 = rows[0][1]
    print(
        f"Single-observation latency on {args.env} (fusion={args.fusion}), {args.reps} calls after "
        f"{args.warmup} warm-up, {args.n_obs} observations cycled, 1 thread"
    )
    print(f"{'path':<52} {'p50 ms':>8} {'p99 ms':>8} {'vs SB3':>8}  same actions")
    for name, p50, p99, actions in rows:
        same = (
            "-"
            if name.startswith(("SB3 default", "ours PolicyNetwork"))
            else ("yes" if actions == reference_actions else "NO")
        )
        print(f"{name:<52} {p50:>8.3f} {p99:>8.3f} {peer_p50 / p50:>7.1f}x  {same}")
    for note in notes:
        print("note:", note)
    if export_seconds:
        print("export time: " + ", ".join(f"{fmt} {s:.1f} s" for fmt, s in export_seconds.items()))
    exported = [r for r in rows if r[0].endswith(USER_PATH)]
    if exported:
        best = min(exported, key=lambda r: r[1])
        ratio = peer_p50 / best[1]
        met = ratio >= TARGET_RATIO and best[1] < TARGET_P50_MS
        print(
            f"fastest exported path: {best[0]}: {ratio:.1f}x SB3 default predict (target >= "
            f"{TARGET_RATIO:.0f}x), p50 {best[1]:.3f} ms (target < {TARGET_P50_MS:.0f} ms): "
            f"{'met' if met else 'NOT met'}"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
