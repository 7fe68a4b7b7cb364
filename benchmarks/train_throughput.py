"""End-to-end PPO training throughput: our pipeline against SB3's default one.

Both train PPO on the same game with the same hyperparameters, in this process,
one after the other, and report environment steps per second of ``learn()``
(rollouts and updates included):

(a) ours, as ``mbm-agent train`` runs it: the native batched vector env
    (``envs.sb3.SB3VecEnv``), frames left channel-last (``KeepChannelsLast``),
    the default ``MultimodalExtractor`` (images scaled inside the encoder),
    fused Adam, the ``MultimodalActorCriticPolicy`` (``mbm_agent.sb3.policy_class``)
    and the ``MultimodalRolloutBuffer`` (``mbm_agent.sb3.algorithm_kwargs``);
(b) SB3's default: ``MultiInputPolicy`` with ``CombinedExtractor`` (NatureCNN on
    the frame, everything else flattened) over a ``DummyVecEnv`` of single envs.

Target: (a) / (b) >= 3x.

Usage::

    python benchmarks/train_throughput.py --env mbm/SoundMaze-v1 --steps 16384
"""

from __future__ import annotations

import argparse
import time
import warnings

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

import envs
from envs.sb3 import SB3VecEnv
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.sb3 import KeepChannelsLast, algorithm_kwargs, policy_class, policy_kwargs_for

TARGET = 3.0


def measure(models: dict[str, PPO], steps: int, warmup: int, rounds: int) -> dict[str, float]:
    """Env-steps/s of each model's ``learn()``, timed in interleaved rounds.

    After a warm-up ``learn(warmup)`` each, the models take turns at
    ``learn(steps // rounds)``, ``rounds`` times, so a slow spell of a shared
    machine falls on both pipelines rather than on whichever ran then.
    """
    for model in models.values():
        model.learn(warmup)
    chunk = steps // rounds
    seconds = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(chunk, reset_num_timesteps=False)
            seconds[name] += time.perf_counter() - start
    return {name: chunk * rounds / seconds[name] for name in models}


def main() -> None:
    """Run both pipelines and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="mbm/SoundMaze-v1", choices=envs.ENV_IDS)
    parser.add_argument("--steps", type=int, default=16384, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=int, default=4096)
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved timing rounds per pipeline"
    )
    parser.add_argument("--n-envs", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads (default: torch's, as mbm-agent train)",
    )
    parser.add_argument(
        "--encoder",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="EncoderConfig overrides (strings), e.g. text_encoder=bow",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    hyper = {
        "n_steps": 64,
        "batch_size": 256,
        "n_epochs": 4,
        "learning_rate": 5e-4,
        "seed": 0,
        "device": "cpu",
    }

    ours_env: VecEnv = KeepChannelsLast(VecMonitor(SB3VecEnv(args.env, args.n_envs)))
    ours = PPO(
        policy_class("ppo"),
        ours_env,
        policy_kwargs=policy_kwargs_for(
            EncoderConfig(**dict(kv.split("=") for kv in args.encoder)), {}, {"net_arch": [64]}
        ),
        **algorithm_kwargs("ppo", ours_env.observation_space),
        **hyper,
    )
    sb3_env: VecEnv = VecMonitor(
        DummyVecEnv([lambda: gym.make(args.env) for _ in range(args.n_envs)])
    )
    sb3 = PPO("MultiInputPolicy", sb3_env, policy_kwargs={"net_arch": [64]}, **hyper)

    models = {
        "ours (native vec env + MultimodalExtractor)": ours,
        "SB3 default (DummyVecEnv + CombinedExtractor)": sb3,
    }
    fps = measure(models, args.steps, args.warmup, args.rounds)
    rows = [
        (name, fps[name], sum(p.numel() for p in model.policy.parameters()))
        for name, model in models.items()
    ]
    print(
        f"PPO on {args.env}, {args.n_envs} envs, n_steps=64, batch 256, 4 epochs, "
        f"{args.threads} torch threads, {args.steps} steps each in {args.rounds} interleaved rounds"
    )
    print(f"{'pipeline':<48} {'env-steps/s':>12} {'params':>10}")
    for name, rate, params in rows:
        print(f"{name:<48} {rate:>12,.0f} {params:>10,}")
    ratio = rows[0][1] / rows[1][1]
    print(
        f"ratio ours / SB3 default: {ratio:.2f}x (target >= {TARGET:.0f}x): {'met' if ratio >= TARGET else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
