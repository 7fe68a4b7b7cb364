"""benchmarks/time_to_solve.py end to end with tiny budgets, and its table from known points."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "time_to_solve.py"
GAME = "mbm/ModalityProbe-v0"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("time_to_solve_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(out: Path) -> tuple[dict, str]:
    (folder,) = out.iterdir()
    return json.loads((folder / "results.json").read_text()), (folder / "table.md").read_text()


def test_every_peer_runs_and_a_short_budget_is_not_reached(bench, tmp_path, capsys):
    args = ["--games", GAME, "--max-steps", "1536", "--eval-every", "512", "--eval-episodes", "4"]
    returned = bench.main([*args, "--out", str(tmp_path)])
    results, text = _results(tmp_path)
    assert returned == results
    assert results["meta"]["target"] == 0.95 and results["meta"]["torch_threads"] == 1
    assert [(r["game"], r["peer"], r["seed"]) for r in results["runs"]] == [
        (GAME, peer, 0) for peer in ("ours", "sb3-default", "cleanrl")
    ]
    for run in results["runs"]:
        # one evaluation per 512 steps (512 = one rollout of the probe's 32 x 16 for all)
        assert [p["steps"] for p in run["points"]] == [512, 1024, 1536], run["peer"]
        seconds = [p["train_seconds"] for p in run["points"]]
        assert 0.0 < seconds[0] < seconds[1] < seconds[2]
        for point in run["points"]:
            assert point["greedy"] in {0.0, 0.25, 0.5, 0.75, 1.0}  # 4 episodes
            assert point["sampled"] in {0.0, 0.25, 0.5, 0.75, 1.0}
        # 1,536 steps leave the probe near chance (0.25); 95% of 4 episodes is all four
        assert run["reached"] == {"greedy": None, "sampled": None, "both": None}, run
        assert run["final"] == run["points"][-1]
        if run["peer"] != "cleanrl":  # scored checkpoints pruned to the newest two
            assert len(list((Path(run["run_dir"]) / "checkpoints").iterdir())) == 2
    rows = [line for line in text.splitlines() if line.startswith(f"| {GAME} |")]
    assert len(rows) == 3
    assert all("not reached in 1,536 steps" in row for row in rows)
    assert text in capsys.readouterr().out


def test_a_reachable_target_gives_steps_minutes_and_ratios(bench, tmp_path):
    args = ["--games", GAME, "--peers", "ours", "cleanrl", "--max-steps", "512", "--target", "0"]
    bench.main([*args, "--eval-every", "512", "--eval-episodes", "2", "--out", str(tmp_path)])
    results, text = _results(tmp_path)
    for run in results["runs"]:
        assert run["reached"]["both"] == {
            "steps": 512,
            "train_seconds": run["points"][0]["train_seconds"],
        }
    assert "| ours | 0 | 512 | 512 |" in text and "1.00x" in text
    assert "not reached" not in text


def _run(bench, peer: str, seed: int, points: list[tuple[int, float, float, float]]) -> dict:
    pts = [
        dict(zip(("steps", "train_seconds", "greedy", "sampled"), p, strict=True)) for p in points
    ]
    return {"game": "g", "peer": peer, "seed": seed, **bench.summarize_run(pts, 0.95)}


def test_table_times_both_modes_and_compares_with_ours(bench):
    runs = [
        # greedy reaches at 100 steps, sampled at 200: solved (both) at 200, after 120 s
        _run(bench, "ours", 0, [(100, 60.0, 0.96, 0.9), (200, 120.0, 0.97, 0.95)]),
        _run(bench, "cleanrl", 0, [(100, 30.0, 0.5, 0.96), (200, 240.0, 0.96, 0.97)]),
        _run(bench, "sb3-default", 0, [(100, 90.0, 0.5, 0.5), (300, 360.0, 0.6, 0.7)]),
        _run(bench, "ours", 1, [(100, 30.0, 0.99, 0.99)]),
        _run(bench, "cleanrl", 1, [(100, 60.0, 0.4, 0.31)]),
    ]
    assert runs[0]["reached"] == {
        "greedy": {"steps": 100, "train_seconds": 60.0},
        "sampled": {"steps": 200, "train_seconds": 120.0},
        "both": {"steps": 200, "train_seconds": 120.0},
    }
    lines = bench.table(runs, 0.95).splitlines()
    assert lines[0].startswith("| game | peer | seed | steps to 95% greedy")
    assert lines[2] == "| g | ours | 0 | 100 | 200 | 2.0 | 1.00x | 0.97 / 0.95 |"
    assert lines[3] == "| g | cleanrl | 0 | 200 | 100 | 4.0 | 2.00x | 0.96 / 0.97 |"
    assert lines[4] == (
        "| g | sb3-default | 0 | not reached | not reached | not reached in 300 steps "
        "| >3.00x | 0.60 / 0.70 |"
    )
    assert lines[6] == (
        "| g | cleanrl | 1 | not reached | not reached | not reached in 100 steps "
        "| >2.00x | 0.40 / 0.31 |"
    )
    assert lines[7] == "| g | ours | median of 2 | - | - | 1.2 | - | 0.98 / 0.97 |"
    assert lines[8] == (
        "| g | cleanrl | median of 2 | - | - | reached by 1 of 2 seeds | - | 0.68 / 0.64 |"
    )


def test_bad_flags_are_refused(bench, tmp_path):
    for bad in (["--target", "1.5"], ["--max-steps", "0"], ["--peers", "rllib"]):
        with pytest.raises(SystemExit):
            bench.main([*bad, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
