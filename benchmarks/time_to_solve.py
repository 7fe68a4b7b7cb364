"""Wall-clock to a held-out success target, per game: our default against two peers.

For each game and seed, three peers train one after the other in this process,
on the same cores, with the same torch thread count:

- ``ours``: ``mbm-agent train GAME`` as it is (the game's config from
  ``mbm_agent/configs/``: its encoder, reward prediction, memory, curriculum),
  through :func:`mbm_agent.training.trainer.train`;
- ``sb3-default``: the same config with SB3's own ``MultiInputPolicy`` extractor
  and plain PPO (no reward prediction, no memory, no curriculum): the grid's
  ``sb3-default`` variant (``mbm_agent/grid/spec.py``, ``PLAIN_PPO``);
- ``cleanrl``: the hand-written, memoryless PPO loop of ``examples/cleanrl_ppo.py``
  with our encoder and the game's PPO settings (``game_settings``).

Each trains up to ``--max-steps`` and is scored on held-out seeds (the seeds
``mbm-agent eval`` uses) every ``--eval-every`` steps, greedy and sampled, with
``--eval-episodes`` episodes per mode. The table gives, per run, the steps at
which each mode first reached ``--target``, the minutes of training until both
had (the issue-16 bar: greedy AND sampled), that time over ours on the same game
and seed, and the last evaluation's success; a run that never got there says
"not reached in N steps".

Wall clock counts training only (rollouts, updates, and for the trainer peers the
checkpoints ``mbm-agent train`` writes anyway); evaluations are excluded. The
trainer peers save a checkpoint every ``--eval-every`` steps (and no periodic
evaluation runs during training); each checkpoint is scored after training, and
its time is the training clock it saved (``state.json``'s ``wall_time``, the
clock of ``metrics.csv``'s ``time_s``). The CleanRL loop pauses its clock while
it evaluates. Evaluation points fall on the first update at or past each multiple
of ``--eval-every``, plus the end of training.

Results go to ``OUT/<timestamp>/``: ``results.json`` (rewritten after each run,
so a stopped benchmark keeps what it measured), ``table.md``, and the trainer
peers' run folders under ``runs/`` (their scored checkpoints pruned to the newest
two afterwards, as ``mbm-agent train`` keeps them).

Usage (the full benchmark takes hours on 2 cores)::

    python benchmarks/time_to_solve.py
    python benchmarks/time_to_solve.py --games mbm/FindSound-v0 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import envs
from mbm_agent.evaluation import evaluate_agent
from mbm_agent.grid.spec import PLAIN_PPO
from mbm_agent.training.agent import load_agent
from mbm_agent.training.checkpoints import checkpoint_folders, prune_checkpoints
from mbm_agent.training.config import TrainConfig, resolve_config
from mbm_agent.training.trainer import train

GAMES = ("mbm/FindSound-v0", "mbm/GoToObject-v1", "mbm/SoundMaze-v1")
PEERS = ("ours", "sb3-default", "cleanrl")
MODES = ("greedy", "sampled")
#: Config overrides of the trainer peers, on top of the game's own config.
TRAINER_PEERS: dict[str, dict[str, Any]] = {
    "ours": {},
    "sb3-default": {"extractor": "sb3", "algo_kwargs": PLAIN_PPO, "curriculum": None},
}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cleanrl_ppo.py"

Point = dict[str, Any]  # steps, train_seconds, greedy, sampled


def load_example() -> ModuleType:
    """``examples/cleanrl_ppo.py`` as a module."""
    spec = importlib.util.spec_from_file_location("cleanrl_ppo_example", EXAMPLE)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load {EXAMPLE}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trainer_config(
    game: str, peer: str, seed: int, args: argparse.Namespace, runs_dir: Path
) -> TrainConfig:
    """The trainer peer's config: the game's, with the benchmark's budget and checkpoints."""
    overrides = {
        **TRAINER_PEERS[peer],
        "steps": args.max_steps,
        "seed": seed,
        "torch_threads": args.torch_threads,
        "eval_every": 0,  # scored from the checkpoints after training
        "checkpoint_every": args.eval_every,
        "keep_checkpoints": 1_000_000,
        "gif_episodes": 0,
        "runs_dir": str(runs_dir),
        "run_name": f"{envs.game_name(game)}-{peer}-s{seed}",
    }
    return resolve_config(game, overrides=overrides)


def run_trainer_peer(
    game: str, peer: str, seed: int, args: argparse.Namespace, runs_dir: Path
) -> tuple[list[Point], Path]:
    """Train a trainer peer, then score each of its checkpoints; its points and run folder."""
    cfg = trainer_config(game, peer, seed, args, runs_dir)
    result = train(cfg, command=["time_to_solve.py", game, peer], progress=False, finalize=False)
    if result.interrupted:  # Ctrl-C: the trainer saved a checkpoint and stopped
        raise KeyboardInterrupt
    points = []
    for steps, ckpt in checkpoint_folders(result.run_dir):
        state = json.loads((ckpt / "state.json").read_text())
        agent = load_agent(ckpt / "policy")
        success = {
            mode: float(
                evaluate_agent(
                    agent,
                    game,
                    cfg.env_kwargs,
                    episodes=args.eval_episodes,
                    n_envs=min(args.eval_episodes, 32),
                    deterministic=mode == "greedy",
                    baselines=False,
                )["success"]["rate"]
            )
            for mode in MODES
        }
        points.append({"steps": steps, "train_seconds": float(state["wall_time"]), **success})
    # Scored: keep what mbm-agent train keeps (the newest two), not ~20 x a few MB.
    prune_checkpoints(result.run_dir, 2)
    return points, result.run_dir


def run_cleanrl_peer(
    example: ModuleType, game: str, seed: int, args: argparse.Namespace
) -> list[Point]:
    """Train the CleanRL-style loop, evaluating as it goes; its points."""
    points: list[Point] = []
    settings = example.game_settings(game)
    example.train(
        args.max_steps,
        **settings,
        seed=seed,
        env_id=game,
        env_kwargs=resolve_config(game).env_kwargs,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        on_eval=lambda p: points.append(p._asdict()),
    )
    return points


def first_reaching(points: Sequence[Point], target: float, modes: Sequence[str]) -> Point | None:
    """The first point at which every mode in ``modes`` scored at least ``target``."""
    for point in sorted(points, key=lambda p: p["steps"]):
        if all(point[m] >= target for m in modes):
            return point
    return None


def summarize_run(points: Sequence[Point], target: float) -> dict[str, Any]:
    """When each mode, and both, first reached ``target``; the last evaluation."""
    if not points:
        raise ValueError("A run without evaluations: nothing to summarise.")
    reached: dict[str, dict[str, float] | None] = {}
    for name, modes in (("greedy", ("greedy",)), ("sampled", ("sampled",)), ("both", MODES)):
        point = first_reaching(points, target, modes)
        reached[name] = (
            None
            if point is None
            else {"steps": int(point["steps"]), "train_seconds": float(point["train_seconds"])}
        )
    last = max(points, key=lambda p: p["steps"])
    return {"reached": reached, "final": dict(last)}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _ratio(run: Mapping[str, Any], ours: Mapping[str, Any] | None) -> str:
    """The run's minutes to target (both modes) over ours, same game and seed."""
    if ours is None or run["peer"] == "ours":
        return "1.00x" if ours is not None and ours["reached"]["both"] is not None else "-"
    base, mine = ours["reached"]["both"], run["reached"]["both"]
    if base is None and mine is None:
        return "-"
    if base is None:  # ours took longer than its whole training
        total = ours["final"]["train_seconds"]
        return f"<{mine['train_seconds'] / total:.2f}x" if total > 0 else "-"
    if base["train_seconds"] <= 0:
        return "-"
    if mine is None:  # at least its whole training time
        return f">{run['final']['train_seconds'] / base['train_seconds']:.2f}x"
    return f"{mine['train_seconds'] / base['train_seconds']:.2f}x"


def table(runs: Sequence[Mapping[str, Any]], target: float) -> str:
    """The results as a Markdown table, one row per run (plus a median row per peer)."""
    pct = f"{100 * target:g}%"
    lines = [
        f"| game | peer | seed | steps to {pct} greedy | steps to {pct} sampled "
        f"| minutes to {pct} (both) | time vs ours | final success greedy / sampled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = {(r["game"], r["seed"]): r for r in runs if r["peer"] == "ours"}

    def steps(run: Mapping[str, Any], mode: str) -> str:
        hit = run["reached"][mode]
        return f"{hit['steps']:,}" if hit is not None else "not reached"

    for run in runs:
        both = run["reached"]["both"]
        final = run["final"]
        minutes = (
            _minutes(both["train_seconds"])
            if both is not None
            else f"not reached in {final['steps']:,} steps"
        )
        lines.append(
            f"| {run['game']} | {run['peer']} | {run['seed']} | {steps(run, 'greedy')} "
            f"| {steps(run, 'sampled')} | {minutes} "
            f"| {_ratio(run, ours.get((run['game'], run['seed'])))} "
            f"| {final['greedy']:.2f} / {final['sampled']:.2f} |"
        )
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["game"], run["peer"]), []).append(run)
    for (game, peer), group in groups.items():
        if len(group) < 2:
            continue
        hits = [r["reached"]["both"] for r in group]
        done = [h["train_seconds"] for h in hits if h is not None]
        minutes = (
            _minutes(statistics.median(done))
            if len(done) == len(group)
            else f"reached by {len(done)} of {len(group)} seeds"
        )
        finals = [r["final"] for r in group]
        lines.append(
            f"| {game} | {peer} | median of {len(group)} | - | - | {minutes} | - "
            f"| {statistics.median(f['greedy'] for f in finals):.2f} / "
            f"{statistics.median(f['sampled'] for f in finals):.2f} |"
        )
    return "\n".join(lines) + "\n"


def _out_dir(root: Path) -> Path:
    """A fresh ``root/<timestamp>`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = root / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"{root} holds too many results of {stamp}.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--games", nargs="+", default=list(GAMES), choices=envs.ENV_IDS)
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--eval-episodes", type=int, default=100, help="per mode")
    parser.add_argument("--target", type=float, default=0.95, help="held-out success rate")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_solve"))
    args = parser.parse_args(argv)
    for name in ("max_steps", "eval_every", "eval_episodes", "torch_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1.")
    if not 0.0 <= args.target <= 1.0:
        parser.error("--target is a success rate, between 0 and 1.")
    if any(s < 0 for s in args.seeds):
        parser.error("--seeds must be non-negative.")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and return the results written to ``results.json``."""
    args = parse_args(argv)
    out = _out_dir(args.out)
    torch.set_num_threads(args.torch_threads)
    example = load_example() if "cleanrl" in args.peers else None
    results: dict[str, Any] = {
        "meta": {
            "games": args.games,
            "peers": args.peers,
            "seeds": args.seeds,
            "max_steps": args.max_steps,
            "eval_every": args.eval_every,
            "eval_episodes": args.eval_episodes,
            "target": args.target,
            "torch_threads": args.torch_threads,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "clock": "training wall-clock seconds; evaluations excluded",
            "both": "greedy and sampled success at or above the target at the same evaluation",
        },
        "runs": [],
    }
    for game in args.games:
        for seed in args.seeds:
            for peer in args.peers:
                print(f"== {game} {peer} seed {seed}", file=sys.stderr, flush=True)
                run_dir: Path | None = None
                if peer == "cleanrl":
                    assert example is not None
                    points = run_cleanrl_peer(example, game, seed, args)
                else:
                    points, run_dir = run_trainer_peer(game, peer, seed, args, out / "runs")
                run = {
                    "game": game,
                    "peer": peer,
                    "seed": seed,
                    "run_dir": None if run_dir is None else str(run_dir),
                    **summarize_run(points, args.target),
                    "points": points,
                }
                results["runs"].append(run)
                (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results["runs"], args.target)
    (out / "table.md").write_text(text)
    print(text)
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
