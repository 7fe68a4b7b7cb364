"""Wall time of one bench grid: sequential in-process against Ray Tune with 2 workers.

Both run the same cells (ModalityProbe, two fusion modes x two seeds, the
game's full budget unless ``--steps``) into fresh folders, one after the
other in this process, and print the wall times and their ratio. The
sequential runner trains with torch's default threads (as ``mbm-agent bench
--backend sequential``); each Ray trial gets one CPU and one torch thread
(``--backend ray``, a local Ray started for the grid, its start-up included).

Usage::

    python benchmarks/grid_ray.py            # about 3 minutes on 2 cores
    python benchmarks/grid_ray.py --quick    # smoke-test budgets
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mbm_agent.grid.run import run_grid
from mbm_agent.grid.spec import build_grid


def main() -> None:
    """Run the grid both ways and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--game", default="mbm/ModalityProbe-v0")
    parser.add_argument("--fusions", nargs="+", default=["concat", "film"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, help="budget per run (default: the game's)")
    parser.add_argument("--workers", type=int, default=2, help="Ray trials at once")
    parser.add_argument("--quick", action="store_true", help="smoke-test budgets")
    args = parser.parse_args()
    cells = build_grid(
        [args.game], args.fusions, args.seeds, ablations=False, baseline=False, steps=args.steps
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sequential", "ray"):
            start = time.perf_counter()
            if backend == "ray":  # its start-up counts: a user's `mbm-agent bench` pays it
                import ray

                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            run_grid(
                cells, Path(tmp) / backend, quick=args.quick, backend=backend, log=lambda _: None
            )
            rows.append((backend, time.perf_counter() - start))
            if backend == "ray":
                ray.shutdown()
    print(
        f"grid: {len(cells)} runs of {args.game} ({', '.join(args.fusions)} x seeds "
        f"{args.seeds}), {os.cpu_count()} cores"
    )
    labels = {
        "sequential": "sequential (in-process, torch default threads)",
        "ray": f"Ray Tune, local, {args.workers} workers x 1 thread",
    }
    for backend, seconds in rows:
        print(f"{labels[backend]:<48} {seconds:8.1f} s")
    print(f"speed-up Ray / sequential: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
