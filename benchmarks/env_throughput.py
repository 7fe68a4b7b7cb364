"""Environment throughput: our games (single and natively batched) against MiniGrid.

Prints env-steps per second for each of our games (the version to use,
``envs.LATEST``) at N=1 (the single env from
``gym.make(...)``, random actions, resetting at episode ends) and at
N=256 (the native vector env; env-steps/s = N x batched steps/s), next to
MiniGrid's ``BabyAI-GoToLocal-v0`` with ``RGBImgPartialObsWrapper`` (pixel
frames, single env), and the ratios against it. Every measurement warms up,
then runs for a fixed wall-clock budget.

Targets: ours at N=256 >= 30x MiniGrid; ours at N=1 >= 2x MiniGrid.

Usage::

    python benchmarks/env_throughput.py --seconds 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs

MINIGRID_ID = "BabyAI-GoToLocal-v0"
TARGET_VEC = 30.0
TARGET_SINGLE = 2.0


def timed(step: Callable[[], None], seconds: float, warmup: float, per_call: int) -> float:
    """Env-steps/s of ``step`` (which advances ``per_call`` env-steps) over ``seconds``."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        step()
    calls = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(16):  # check the clock every few calls, not every one
            step()
        calls += 16
        now = time.perf_counter()
        if now >= end:
            return calls * per_call / (now - start)


def single_stepper(env: gym.Env[Any, Any], seed: int) -> Callable[[], None]:
    """One random step of a single env, resetting when an episode ends."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    actions = iter(())

    def step() -> None:
        nonlocal actions
        action = next(actions, None)
        if action is None:  # draw random actions in blocks: the policy is not what we time
            actions = iter(rng.integers(0, n_actions, 4096).tolist())
            action = next(actions)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    return step


def vector_stepper(env_id: str, n: int, seed: int) -> Callable[[], None]:
    """One batched random step of the native vector env (it autoresets itself)."""
    vec = envs.make_vec(env_id, n)
    vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n_actions = int(vec.single_action_space.n)
    blocks = rng.integers(0, n_actions, (64, n))
    i = 0

    def step() -> None:
        nonlocal i
        vec.step(blocks[i % 64])
        i += 1

    return step


def minigrid_stepper(seed: int) -> Callable[[], None]:
    try:
        import minigrid  # noqa: F401 - registers the MiniGrid/BabyAI ids
        from minigrid.wrappers import RGBImgPartialObsWrapper
    except ImportError as exc:
        raise SystemExit(
            "The MiniGrid baseline needs minigrid: pip install 'mbm-agent[minigrid]'."
        ) from exc
    env = RGBImgPartialObsWrapper(gym.make(MINIGRID_ID))
    return single_stepper(env, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed wall budget per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up per row")
    parser.add_argument("--num-envs", type=int, default=256, help="worlds in the vector env")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.num_envs

    print(f"# env throughput: {args.seconds:g} s per row after {args.warmup:g} s warm-up")
    # BabyAI prints each rejected layout; keep the table readable.
    # Warm the process up first (allocator and CPU clock): measured here, whichever
    # batched env ran first in a fresh process stepped up to 2x slower than later.
    for env_id in envs.LATEST:
        timed(vector_stepper(env_id, n, args.seed), 0.1, args.warmup, n)
    # The baseline is timed before and after ours and keeps its better figure, so
    # a noisy moment on this shared machine cannot flatter the ratios.
    with contextlib.redirect_stdout(io.StringIO()):
        baseline = timed(minigrid_stepper(args.seed), args.seconds, args.warmup, 1)
    rows = []
    for env_id in envs.LATEST:
        # Through gym.make with its default wrappers, exactly as the MiniGrid env is.
        single = timed(single_stepper(gym.make(env_id), args.seed), args.seconds, args.warmup, 1)
        batched = timed(vector_stepper(env_id, n, args.seed), args.seconds, args.warmup, n)
        rows.append((env_id, single, batched))
    with contextlib.redirect_stdout(io.StringIO()):
        baseline = max(baseline, timed(minigrid_stepper(args.seed), args.seconds, args.warmup, 1))

    header = (
        f"{'environment':<28}{'N=1 steps/s':>14}{f'N={n} steps/s':>16}"
        f"{'N=1 / MG':>11}{f'N={n} / MG':>13}"
    )
    print(header)
    print("-" * len(header))
    print(f"{MINIGRID_ID + ' (RGB)':<28}{baseline:>14,.0f}{'-':>16}{'1.0x':>11}{'-':>13}")
    ok = True
    for env_id, single, batched in rows:
        r1, rn = single / baseline, batched / baseline
        ok &= r1 >= TARGET_SINGLE and rn >= TARGET_VEC
        print(f"{env_id:<28}{single:>14,.0f}{batched:>16,.0f}{r1:>10.1f}x{rn:>12.1f}x")
    print(
        f"targets: N={n} >= {TARGET_VEC:g}x MiniGrid, N=1 >= {TARGET_SINGLE:g}x MiniGrid: "
        f"{'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
