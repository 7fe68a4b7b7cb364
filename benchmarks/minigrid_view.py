"""MiniGrid / BabyAI env steps: our fast view against MiniGrid's own ``gen_obs``.

``make_minigrid_env`` computes the agent's 7x7 view with
:func:`mbm_agent.training.minigrid_obs.fast_gen_obs` (the same observation, cell for
cell). This prints env-steps/s of the env as training builds it (``make_minigrid_env``,
32 copies in SB3's ``DummyVecEnv``, random actions), with the fast view and with
MiniGrid's, for a few BabyAI levels, and the ratio. The two are timed in alternating
rounds so that a noisy machine slows both alike; the ratio is the median over rounds.

Target: >= 1.5x env-steps/s on every level.

Usage::

    python benchmarks/minigrid_view.py --seconds 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from mbm_agent.training.wrappers import make_minigrid_env

LEVELS = ("BabyAI-GoToObjMaze-v0", "BabyAI-GoToRedBall-v0", "BabyAI-PickupLoc-v0")
TARGET = 1.5


def vec_env(env_id: str, n_envs: int, fast: bool, seed: int) -> DummyVecEnv:
    """``n_envs`` copies of the level as the trainer makes them."""
    venv = DummyVecEnv([lambda: make_minigrid_env(env_id, fast_observations=fast)] * n_envs)
    venv.seed(seed)
    venv.reset()
    return venv


def steps_per_second(venv: DummyVecEnv, seconds: float, rng: np.random.Generator) -> float:
    """Env-steps/s of random play for ``seconds`` of wall time."""
    n_actions = int(venv.action_space.n)  # type: ignore[attr-defined]
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        venv.step(rng.integers(n_actions, size=venv.num_envs))
        steps += venv.num_envs
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed wall time per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level")
    parser.add_argument("--n-envs", type=int, default=32, help="envs in the DummyVecEnv")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{'level':<26} {'MiniGrid view':>14} {'fast view':>12} {'ratio':>7}")
    ratios = []
    for env_id in args.levels:
        envs = {fast: vec_env(env_id, args.n_envs, fast, args.seed) for fast in (False, True)}
        rates: dict[bool, list[float]] = {False: [], True: []}
        rng = np.random.default_rng(args.seed)
        steps_per_second(envs[False], 0.3, rng)  # warm up both
        steps_per_second(envs[True], 0.3, rng)
        for _ in range(args.rounds):
            for fast in (False, True):
                rates[fast].append(steps_per_second(envs[fast], args.seconds, rng))
        ratio = statistics.median(f / s for f, s in zip(rates[True], rates[False], strict=True))
        ratios.append(ratio)
        slow_rate, fast_rate = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{env_id:<26} {slow_rate:>12,.0f}/s {fast_rate:>10,.0f}/s {ratio:>6.2f}x")
        for venv in envs.values():
            venv.close()
    worst = min(ratios)
    verdict = "met" if worst >= TARGET else "NOT met"
    print(f"slowest speed-up {worst:.2f}x (target >= {TARGET}x): {verdict}")


if __name__ == "__main__":
    main()
