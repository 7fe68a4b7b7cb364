"""``mbm-agent demo``: the README's main job.

Trains an agent on a game of ours to a real bar on a 2-core CPU in a few
minutes, evaluates it on held-out seeds, and leaves a complete run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from mbm_agent.training.config import resolve_config
from mbm_agent.training.trainer import train

DEMO_ENV = "mbm/FindSound-v0"
#: The success rate the full demo must reach on held-out seeds.
DEMO_BAR = 0.90
DEMO_OVERRIDES: dict[str, object] = {
    "steps": 150_000,
    "eval_every": 50_000,
    "eval_episodes": 64,
    "final_eval_episodes": 200,
    "checkpoint_every": 50_000,
}
QUICK_OVERRIDES: dict[str, object] = {
    "steps": 2_048,
    "n_envs": 8,
    "eval_every": 1_024,
    "eval_episodes": 8,
    "final_eval_episodes": 16,
    "checkpoint_every": 1_024,
    "gif_episodes": 1,
    "algo_kwargs": {"n_steps": 64, "batch_size": 128},
}


def run_demo(*, quick: bool = False, runs_dir: str = "runs", seed: int = 0) -> int:
    """Train, evaluate and report; returns the process exit code (1 if the bar is missed)."""
    overrides = dict(QUICK_OVERRIDES if quick else DEMO_OVERRIDES)
    overrides.update(runs_dir=runs_dir, seed=seed)
    cfg = resolve_config(DEMO_ENV, overrides=overrides)
    print(
        f"mbm-agent demo: training {cfg.algo.upper()} + multimodal encoder ({cfg.fusion}) on {DEMO_ENV} for {cfg.steps} steps"
    )
    t0 = time.perf_counter()
    result = train(cfg, command=["mbm-agent", "demo", *(["--quick"] if quick else [])])
    minutes = (time.perf_counter() - t0) / 60
    if result.report is None:
        print("Interrupted; the run folder holds what was saved.")
        return 130
    success = float(result.report["success"]["rate"])
    low, high = result.report["success"]["ci"]
    run = Path(result.run_dir)
    print(f"\nrun folder: {run}  ({minutes:.1f} min)")
    print(
        f"held-out success: {success:.1%}  (95% CI {low:.1%}-{high:.1%}, {result.report['meta']['episodes']} episodes)"
    )
    for name in ("eval.md", "learning_curve.png", "episodes.gif", "best/model.json"):
        print(f"  {run / name}")
    if quick:
        print("(--quick: a smoke run; the full demo trains to the bar)")
        return 0
    if success >= DEMO_BAR:
        print(f"PASS: success {success:.1%} >= bar {DEMO_BAR:.0%}")
        return 0
    print(f"BELOW BAR: success {success:.1%} < {DEMO_BAR:.0%}")
    return 1
