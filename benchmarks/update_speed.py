"""The PPO update of a policy with memory: two faster paths against the code they replaced.

PPO with memory replays every stored sequence through the GRU in each update, and a
symbolic-grid encoder (MiniGrid / BabyAI) looks up and sums one embedding per
channel of each of a minibatch's 49 cells. Measured in this process, interleaved:

1. ``mbm_agent.encoding.memory.unroll_memory`` (``torch.gru``, ``nn.GRU``'s fused loop,
   over each stretch without an episode start) against stepping the ``GRUCell`` once
   per step from Python, forward + backward, on the shapes of a game's config
   (default BabyAI-GoToObjMaze-v0: 32 sequences of 128 steps per minibatch, 256
   features, 128 units) at several densities of episode starts;
2. ``mbm_agent.encoding.encoders.summed_embedding`` (``embedding_bag`` forward,
   ``index_add_`` backward) against ``F.embedding(...).sum(-2)``, forward + backward,
   on a minibatch of 7x7x3 grids;
3. whole PPO iterations (rollout + update) of ``mbm-agent train ENV``'s own model (its
   config, env and policy; the level as registered, without the curriculum): the old
   paths (``LOOP_SHARE`` below zero, the plain lookup patched in), the fused unroll
   alone, and both.

Usage::

    python benchmarks/update_speed.py
    python benchmarks/update_speed.py --init-from runs/<a GoToObjMaze run>   # trained policy
    python benchmarks/update_speed.py --env mbm/SoundMaze-v0 --iterations 6
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mbm_agent.encoding import encoders, memory
from mbm_agent.encoding.memory import unroll_memory

FAST_EMBEDDING = encoders.summed_embedding
DEFAULT_LOOP_SHARE = memory.LOOP_SHARE


def _plain_embedding(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding(idx, weight).sum(dim=-2)


def _step_by_step(core: nn.GRUCell, x: torch.Tensor, h: torch.Tensor, keep: torch.Tensor):
    """The cell stepped once per step: ``unroll_memory`` told to always take that path."""
    memory.LOOP_SHARE = -1.0
    try:
        return unroll_memory(core, x, h, keep)
    finally:
        memory.LOOP_SHARE = DEFAULT_LOOP_SHARE


def time_unrolls(n: int, length: int, features: int, units: int, rounds: int) -> None:
    """Part 1: forward + backward of one minibatch's unroll, per density of starts."""
    torch.manual_seed(0)
    core = nn.GRUCell(features, units)
    x = torch.randn(n, length, features, requires_grad=True)
    h = torch.randn(n, units)
    peers: dict[str, Callable[..., torch.Tensor]] = {
        "step by step": _step_by_step,
        "unroll_memory": unroll_memory,
    }
    print(f"1. unroll forward + backward: {n} sequences x {length} steps, {features} -> {units}")
    print(f"{'episode starts':<24} {'step by step ms':>16} {'unroll_memory ms':>17} {'ratio':>7}")
    for every in (0, 576, 128, 32, 8, 1):
        keep = torch.ones(n, length)
        if every:
            keep = (torch.rand(n, length) >= 1.0 / every).float()
        seconds = dict.fromkeys(peers, 0.0)
        for _ in range(rounds):
            for name, fn in peers.items():
                start = time.perf_counter()
                fn(core, x, h, keep).square().sum().backward()
                seconds[name] += time.perf_counter() - start
        label = "none" if not every else f"1 per {every} steps"
        a, b = (seconds[k] / rounds * 1000 for k in peers)
        print(f"{label:<24} {a:>16.1f} {b:>17.1f} {a / b:>6.2f}x")


def time_embeddings(batch: int, rounds: int) -> None:
    """Part 2: forward + backward of one minibatch's grid lookup."""
    torch.manual_seed(0)
    weight = torch.randn(768, 16, requires_grad=True)
    # MiniGrid's channels (object < 11, colour < 6, state < 3), offset as the encoder does.
    idx = torch.stack(
        [
            torch.randint(0, 11, (batch, 7, 7)),
            torch.randint(0, 6, (batch, 7, 7)) + 256,
            torch.randint(0, 3, (batch, 7, 7)) + 512,
        ],
        dim=-1,
    )
    upstream = torch.randn(batch, 7, 7, 16)
    peers = {"F.embedding + sum": _plain_embedding, "summed_embedding": FAST_EMBEDDING}
    seconds = dict.fromkeys(peers, 0.0)
    for _ in range(rounds):
        for name, fn in peers.items():
            start = time.perf_counter()
            fn(idx, weight).backward(upstream)
            seconds[name] += time.perf_counter() - start
    a, b = (seconds[k] / rounds * 1000 for k in peers)
    print(f"\n2. grid lookup forward + backward: {batch} grids of 7x7x3 ids, 16-wide embeddings")
    print(f"{'F.embedding + sum':<24} {a:>10.1f} ms")
    print(f"{'summed_embedding':<24} {b:>10.1f} ms   ratio {a / b:.2f}x")


def _use(unroll: bool, fast_embedding: bool) -> None:
    memory.LOOP_SHARE = DEFAULT_LOOP_SHARE if unroll else -1.0
    encoders.summed_embedding = FAST_EMBEDDING if fast_embedding else _plain_embedding


def time_training(env_id: str, iterations: int, rounds: int, init_from: str | None) -> None:
    """Part 3: env-steps/s of whole PPO iterations, old paths against new."""
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.envs import make_train_env
    from mbm_agent.training.trainer import build_algorithm, init_policy_from

    cfg = resolve_config(env_id, overrides={"curriculum": None, "init_from": init_from})
    if not cfg.algo_kwargs.get("memory"):
        raise SystemExit(f"{env_id}'s config has no memory: nothing to compare.")
    venv, vocab = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    if init_from is not None:
        # A trained policy ends episodes as training would by then: a realistic share
        # of episode starts in the sequences (an untrained one mostly runs out of time).
        init_policy_from(model, cfg, vocab)
    chunk = iterations * cfg.n_envs * int(cfg.algo_kwargs["n_steps"])
    peers = {
        "old (cell steps, lookup)": (False, False),
        "fused unroll": (True, False),
        "fused unroll + bag": (True, True),
    }
    model.learn(chunk)  # warm-up
    seconds = dict.fromkeys(peers, 0.0)
    try:
        for _ in range(rounds):
            for name, flags in peers.items():
                _use(*flags)
                start = time.perf_counter()
                model.learn(chunk, reset_num_timesteps=False)
                seconds[name] += time.perf_counter() - start
    finally:
        _use(True, True)
        venv.close()
    rates = {name: chunk * rounds / s for name, s in seconds.items()}
    kwargs = cfg.algo_kwargs
    print(
        f"\n3. PPO iterations of `mbm-agent train {env_id}` (no curriculum"
        f"{', from ' + init_from if init_from else ''}): {cfg.n_envs} envs, "
        f"n_steps {kwargs['n_steps']}, sequences of {kwargs['sequence_length']}, "
        f"{chunk * rounds:,} steps per peer in {rounds} interleaved rounds"
    )
    old = rates["old (cell steps, lookup)"]
    for name, rate in rates.items():
        print(f"{name:<26} {rate:>10,.0f} env-steps/s   {rate / old:.2f}x")


def main() -> None:
    """Run both parts and print their tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="BabyAI-GoToObjMaze-v0")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--iterations", type=int, default=2, help="PPO iterations per peer per round (part 3)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-training", action="store_true", help="parts 1 and 2 only")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="part 3 starts from this run's policy (e.g. one trained on ENV)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    time_unrolls(args.sequences, args.length, args.features, args.units, args.rounds * 3)
    time_embeddings(args.sequences * args.length, args.rounds * 3)
    if not args.skip_training:
        time_training(args.env, args.iterations, args.rounds, args.init_from)


if __name__ == "__main__":
    main()
