"""A GRU memory unrolled over sequences that may hold episode starts: :func:`unroll_memory`.

A policy with memory keeps one ``nn.GRUCell`` (``memory_core``): acting steps it once
per observation, and training replays it over stored sequences of consecutive steps,
resetting the state to zeros where an episode starts. Stepping the cell once per step
from Python costs two autograd nodes per step and a weight-gradient product per step
in the backward pass. :func:`unroll_memory` runs the cell's own weights through
``torch.gru`` (the fused loop of ``nn.GRU``) over each stretch of steps in which no
sequence of the batch starts an episode, and resets the state between stretches:
the same function as the step-by-step loop (equal up to float rounding: the input
projection is one product over all steps, and gradients are summed in another
order), at
2.5x its forward + backward speed without resets, 2.0x with one start per 576 steps
and 1.45x with one per 128 (``benchmarks/update_speed.py``; 1.16x env steps/s on a
whole PPO iteration of BabyAI-GoToObjMaze-v0). When starts are so
frequent that most stretches would be one step long, it steps the cell as before.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

__all__ = ["unroll_memory"]

LOOP_SHARE = 0.75
"""Step the cell one step at a time when more than this share of the steps start a stretch."""


def unroll_memory(core: nn.GRUCell, inputs: Tensor, state: Tensor, keep: Tensor) -> Tensor:
    """The GRU states along ``n`` sequences, reset to zeros where ``keep`` is 0.

    Args:
        core: The memory's GRU cell.
        inputs: ``(n, L, input_size)`` features, sequence by sequence.
        state: ``(n, hidden_size)`` state each sequence starts from.
        keep: ``(n, L)``: 0.0 where a step starts an episode (the state it reads is
            zeroed first), else 1.0.

    Returns:
        ``(n, L, hidden_size)``: the state after each step, as
        ``state = core(inputs[:, t], state * keep[:, t, None])`` step by step gives it
        (on CPU by stretches through ``torch.gru``; elsewhere step by step).
    """
    length = inputs.shape[1]
    if not inputs.is_cpu:
        # torch.gru is cuDNN's RNN there: its backward refuses eval mode and re-packs
        # the cell's separate weights on every call. Measured on CPU only.
        return _step_by_step(core, inputs, state, keep)
    cuts = torch.nonzero((keep[:, 1:] == 0).any(dim=0)).flatten().add(1).tolist()
    if len(cuts) + 1 > LOOP_SHARE * length:
        return _step_by_step(core, inputs, state, keep)
    weights = [core.weight_ih, core.weight_hh]
    if core.bias:
        weights += [core.bias_ih, core.bias_hh]
    bounds = [0, *cuts, length]
    outputs = []
    for start, end in itertools.pairwise(bounds):
        state = state * keep[:, start, None]
        # torch.gru(input, hx, params, has_biases, num_layers, dropout, train,
        # bidirectional, batch_first): nn.GRU's functional form.
        out, last = torch.gru(
            inputs[:, start:end],
            state[None],
            weights,
            core.bias,
            1,
            0.0,
            core.training,
            False,
            True,
        )
        outputs.append(out)
        state = last[0]
    return torch.cat(outputs, dim=1)


def _step_by_step(core: nn.GRUCell, inputs: Tensor, state: Tensor, keep: Tensor) -> Tensor:
    outputs = []
    for t in range(inputs.shape[1]):
        state = core(inputs[:, t], state * keep[:, t, None])
        outputs.append(state)
    return torch.stack(outputs, dim=1)
