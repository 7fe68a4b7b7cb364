"""The viewer shows a policy with memory as it acts: its state carried through each episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from memory_helpers import save_memory_run

from mbm_agent.view.session import LoadedRun, Panel, analyse

STEPS = 120  # over two episodes of the small game (at most 50 steps each)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> LoadedRun:
    path: Path = save_memory_run(tmp_path_factory.mktemp("memory-view") / "run")
    return LoadedRun.load(path)


def test_the_panel_carries_the_state_through_each_episode(run: LoadedRun) -> None:
    policy = run.agent.policy
    assert run.network.memory == 16
    panel = Panel(run, seed=7)
    state = policy.initial_state(1)  # type: ignore[operator]
    episodes, differs = 0, 0
    for i in range(STEPS):
        if panel.log.done:  # a terminal observation: the next step starts an episode
            panel.step()
            episodes += 1
            continue
        start = torch.tensor([float(panel.log.steps == 0)])
        obs = {k: torch.as_tensor(np.asarray(v)[None]) for k, v in panel.obs.items()}
        with torch.no_grad():
            log_probs, value, state = policy.step(obs, state, start)  # type: ignore[operator]
        np.testing.assert_allclose(panel.analysis.probs, log_probs.exp()[0].numpy(), atol=1e-5)
        assert panel.analysis.value == pytest.approx(float(value[0, 0]), abs=1e-5)
        stateless = analyse(run.network, panel.obs, set(), [], None, None)
        differs += not np.allclose(stateless.probs, panel.analysis.probs, atol=1e-3)
        if i == 10:  # masking a sense and back re-reads the same state, not the next
            before = panel.analysis.probs.copy()
            key = next(iter(run.network.keys))
            panel.set_mask(key, True)
            panel.set_mask(key, False)
            np.testing.assert_allclose(panel.analysis.probs, before, atol=1e-7)
        # A person's action moves the episode on from the same state as the agent's.
        panel.step(0 if i == 5 else None)
    assert episodes >= 2
    assert differs > STEPS // 2  # the state matters to what the panel shows
