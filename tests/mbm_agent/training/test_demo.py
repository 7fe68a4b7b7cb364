"""The README's main job, `mbm-agent demo`, in its reduced CI mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs_helpers import run_cli

from mbm_agent.training.demo import DEMO_ENV


@pytest.mark.slow
def test_demo_quick_leaves_a_complete_run_folder(tmp_path: Path) -> None:
    result = run_cli("demo", "--quick", "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1
    run = runs[0]
    for name in (
        "config.yaml",
        "metrics.csv",
        "eval.json",
        "eval.md",
        "learning_curve.png",
        "episodes.gif",
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for policy in ("best", "final"):
        assert (run / policy / "model.json").is_file()
        assert (run / policy / "model.safetensors").is_file()
    report = json.loads((run / "eval.json").read_text())
    assert report["meta"]["env_id"] == DEMO_ENV
    assert "held-out success" in result.stdout
