"""Slow third-party envs: ``--vec-env async`` (SB3's SubprocVecEnv) against ``dummy``, same run.

Both vector envs are built the way ``mbm-agent train`` builds them
(``mbm_agent.training.envs.make_train_env``: observation adapter, success
info, monitor) over the same env, one after the other in this process, and
each is measured twice:

(a) stepping: random actions, env-steps/s of ``venv.step`` alone;
(b) training: env-steps/s of PPO's ``learn()`` with our policy (rollouts and
    updates), as ``mbm-agent train`` runs it.

The default env, ``SlowEnv-v0`` (defined here), sleeps ``--sleep-ms`` per step,
standing in for an emulator or a physics simulator whose step costs
milliseconds of work outside Python; with worker processes those sleeps
overlap. A cheap env (e.g. ``--env BabyAI-GoToObj-v0``) shows the other side:
there passing observations between processes costs more than it saves, and
``dummy`` stays the right choice.

With ``--workers K`` a third peer runs ``async`` with the envs split among ``K``
worker processes (``vec_env_workers``, :class:`~mbm_agent.sb3.vec_env.WorkerGroupVecEnv`):
one message per worker per step instead of one per env, K processes importing torch.

Usage::

    python benchmarks/vec_env_speed.py                      # SlowEnv, 5 ms a step, 4 envs
    python benchmarks/vec_env_speed.py --env BabyAI-GoToObj-v0 --sleep-ms 0
    python benchmarks/vec_env_speed.py --env BabyAI-GoToObjMaze-v0 --n-envs 64 --workers 2 --no-per-env
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # worker processes import this module by name
    sys.path.insert(0, str(ROOT))

from mbm_agent.training.config import resolve_config  # noqa: E402
from mbm_agent.training.envs import make_train_env  # noqa: E402
from mbm_agent.training.trainer import build_algorithm  # noqa: E402

SLOW_ID = "benchmarks.vec_env_speed:SlowEnv-v0"


class SlowEnv(gym.Env[dict[str, Any], int]):
    """A small frame and a position; each step sleeps ``sleep_ms`` (an emulator's work)."""

    def __init__(self, sleep_ms: float = 5.0) -> None:
        self.observation_space = spaces.Dict(
            {
                "frame": spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(4)
        self.sleep_s = sleep_ms / 1000.0
        self._t = 0

    def _obs(self) -> dict[str, Any]:
        return {
            "frame": np.full((16, 16, 3), self._t % 255, np.uint8),
            "pos": self.np_random.uniform(-1, 1, 2).astype(np.float32),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        time.sleep(self.sleep_s)
        self._t += 1
        return self._obs(), float(action == 0), False, self._t >= 64, {}


if "SlowEnv-v0" not in gym.registry:
    gym.register("SlowEnv-v0", entry_point=SlowEnv)


def measure(
    env_id: str, vec_env: str, workers: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """``(start-up s, stepping steps/s, PPO steps/s)`` of one vector env."""
    kwargs = {"sleep_ms": args.sleep_ms} if env_id == SLOW_ID else {}
    cfg = resolve_config(
        env_id,
        overrides={
            "n_envs": args.n_envs,
            "vec_env": vec_env,
            "vec_env_workers": workers,
            "env_kwargs": kwargs,
            "algo_kwargs": {"n_steps": 64, "batch_size": 128, "n_epochs": 2},
        },
    )
    if cfg.algo_kwargs.get("sequence_length", 0) > 64:  # a memory trained on long sequences
        cfg = dataclasses.replace(cfg, algo_kwargs={**cfg.algo_kwargs, "sequence_length": 64})
    start = time.perf_counter()
    venv, _ = make_train_env(cfg, seed=0)
    venv.reset()
    startup = time.perf_counter() - start
    try:
        rng = np.random.default_rng(0)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            venv.step(rng.integers(0, venv.action_space.n, args.n_envs))
            steps += args.n_envs
        stepping = steps / (time.perf_counter() - start)
        model = build_algorithm(cfg, venv, None)
        model.learn(args.n_envs * 64)  # warm-up rollout and update
        start = time.perf_counter()
        model.learn(args.ppo_steps, reset_num_timesteps=False)
        training = args.ppo_steps / (time.perf_counter() - start)
    finally:
        venv.close()
    return startup, stepping, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=SLOW_ID, help="env id (default: the slow env here)")
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="SlowEnv's sleep per step")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="stepping time per vec env")
    parser.add_argument("--ppo-steps", type=int, default=1024, help="timed PPO env steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also measure async with the envs split among this many worker processes "
        "(vec_env_workers; WorkerGroupVecEnv)",
    )
    parser.add_argument(
        "--no-per-env",
        action="store_true",
        help="skip async with one process per env (64 envs: 64 processes importing torch)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = {"dummy": ("dummy", 0)}
    if not args.no_per_env:
        peers["async"] = ("async", 0)
    if args.workers:
        peers[f"async/{args.workers}"] = ("async", args.workers)
    results = {name: measure(args.env, v, k, args) for name, (v, k) in peers.items()}
    print(
        f"{args.env}, {args.n_envs} envs"
        + (f", {args.sleep_ms} ms/step" if args.env == SLOW_ID else "")
    )
    print(f"{'vec_env':10} {'start-up s':>10} {'step/s':>10} {'PPO step/s':>11}")
    for name, (startup, stepping, training) in results.items():
        print(f"{name:10} {startup:10.1f} {stepping:10.0f} {training:11.0f}")
    _, d_step, d_ppo = results["dummy"]
    for name in list(peers)[1:]:
        _, step, ppo = results[name]
        print(f"{name} / dummy: stepping {step / d_step:.2f}x, PPO {ppo / d_ppo:.2f}x")


if __name__ == "__main__":
    main()
