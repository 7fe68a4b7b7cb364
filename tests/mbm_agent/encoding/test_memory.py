"""unroll_memory: the fused GRU over stretches gives what stepping the cell gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mbm_agent.encoding import memory
from mbm_agent.encoding.memory import unroll_memory

N, L, F, H = 6, 20, 10, 8


def _step_by_step(core: nn.GRUCell, inputs: torch.Tensor, state: torch.Tensor, keep: torch.Tensor):
    """The reference: the cell stepped once per step, as the rollout steps it."""
    outputs = []
    for t in range(inputs.shape[1]):
        state = core(inputs[:, t], state * keep[:, t, None])
        outputs.append(state)
    return torch.stack(outputs, dim=1)


def _keep(starts: list[tuple[int, int]]) -> torch.Tensor:
    keep = torch.ones(N, L)
    for seq, t in starts:
        keep[seq, t] = 0.0
    return keep


def _outputs_and_grads(fn, core, inputs, state, keep):
    for p in (*core.parameters(), inputs, state):
        p.grad = None
    out = fn(core, inputs, state, keep)
    # A loss that weighs every step and unit differently, so every gradient path counts.
    (out * torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in (*core.parameters(), inputs, state)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "starts",
    [
        [],  # no episode starts: one fused call
        [(0, 0), (3, 0)],  # starts at the first step only reset the stored state
        [(1, 5), (4, 5), (2, 13), (5, 19)],  # starts inside the sequences
        # Starts in 14 of the 20 steps, under the share that steps the cell: many short
        # fused stretches (denser starts step the cell itself, the reference's own loop).
        [(t % N, t) for t in range(L) if t % 10 not in (2, 5, 8)],
    ],
    ids=["none", "first-step", "inside", "many"],
)
def test_unroll_gives_the_step_by_step_states_and_gradients(starts, bias):
    torch.manual_seed(0)
    core = nn.GRUCell(F, H, bias=bias)
    inputs = torch.randn(N, L, F, requires_grad=True)
    state = torch.randn(N, H, requires_grad=True)
    keep = _keep(starts)
    cuts = int((keep[:, 1:] == 0).any(dim=0).sum())
    assert cuts + 1 <= memory.LOOP_SHARE * L  # the fused path runs
    want, want_grads = _outputs_and_grads(_step_by_step, core, inputs, state, keep)
    got, got_grads = _outputs_and_grads(unroll_memory, core, inputs, state, keep)
    assert got.shape == (N, L, H)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_reset_zeroes_the_state_the_step_reads():
    torch.manual_seed(1)
    core = nn.GRUCell(F, H)
    inputs = torch.randn(1, L, F)
    keep = torch.ones(1, L)
    keep[0, 7] = 0.0
    with torch.no_grad():
        out = unroll_memory(core, inputs, torch.randn(1, H), keep)
        # From step 7 on, the sequence is a fresh episode: the same as starting it from zeros.
        fresh = unroll_memory(core, inputs[:, 7:], torch.zeros(1, H), torch.ones(1, L - 7))
    torch.testing.assert_close(out[:, 7:], fresh)


def test_fused_stretches_unless_starts_are_dense(monkeypatch):
    calls = []
    original = memory._step_by_step

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(memory, "_step_by_step", spy)
    core = nn.GRUCell(F, H)
    inputs, state = torch.randn(N, L, F), torch.zeros(N, H)
    unroll_memory(core, inputs, state, _keep([(1, 5), (2, 13)]))
    assert calls == []
    every_step = torch.ones(N, L)
    every_step[0, :] = 0.0
    unroll_memory(core, inputs, state, every_step)
    assert calls == [1]
