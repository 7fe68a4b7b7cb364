"""The automatic torch thread count does not oversubscribe shared cores."""

from __future__ import annotations

import pytest
import torch
import yaml

from mbm_agent.cli import main
from mbm_agent.training.threads import (
    MAX_AUTO_THREADS,
    auto_torch_threads,
    available_cores,
    torch_threads_for,
)


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [
        (2, 2.1, 1),  # a shared 2-core machine already busy: one thread, not a collapse
        (2, 0.3, 2),
        (8, 0.2, MAX_AUTO_THREADS),  # quiet and large: capped
        (8, 5.6, 2),
        (16, 40.0, 1),  # far more work than cores
        (1, 0.0, 1),
    ],
)
def test_auto_threads_leave_the_busy_cores_alone(cores: int, load: float, threads: int) -> None:
    assert auto_torch_threads(cores, load) == threads


def test_explicit_counts_and_omp_num_threads_win(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_threads_for(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert torch_threads_for(0) == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= torch_threads_for(0) <= min(MAX_AUTO_THREADS, available_cores())


def test_train_flags_set_threads_and_vector_env(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "mbm/GoToObject-v0", "--torch-threads", "3", "--vec-env", "async"]
    assert main([*argv, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["torch_threads"] == 3 and cfg["vec_env"] == "async"
