"""summed_embedding: the bag forward and index_add backward give the plain lookup's numbers."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mbm_agent.encoding import encoders
from mbm_agent.encoding.encoders import SymbolicGridEncoder, summed_embedding


def _ids(shape: tuple[int, ...], rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, rows, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(5, 7, 7, 3), (4, 2), (9, 1)])
def test_values_and_gradients_match_the_plain_lookup(shape):
    torch.manual_seed(0)
    weight = torch.randn(20, 6, requires_grad=True)
    idx = _ids(shape, 20)  # repeated ids, so the backward must add up several rows
    upstream = torch.randn(*shape[:-1], 6)
    got = summed_embedding(idx, weight)
    (got_grad,) = torch.autograd.grad(got, weight, upstream)
    want = F.embedding(idx, weight).sum(dim=-2)
    (want_grad,) = torch.autograd.grad(want, weight, upstream)
    assert got.grad_fn is not None and "SummedEmbedding" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_tracing_and_no_grad_see_the_plain_lookup():
    weight = torch.randn(20, 6, requires_grad=True)
    idx = _ids((3, 4, 3), 20)
    with torch.no_grad():
        plain = summed_embedding(idx, weight)
    torch.testing.assert_close(plain, F.embedding(idx, weight).sum(dim=-2))
    encoder = SymbolicGridEncoder((7, 7, 3), True, [11, 6, 3])
    grids = _ids((2, 7, 7, 3), 3)
    traced = torch.jit.trace(encoder, (grids,), check_trace=False)
    graph = str(traced.graph)
    assert "embedding" in graph and "SummedEmbedding" not in graph
    torch.testing.assert_close(traced(grids), encoder(grids))


def test_grid_encoder_trains_through_the_fast_path(monkeypatch):
    calls = []
    original = encoders._SummedEmbedding.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(encoders._SummedEmbedding, "apply", spy)
    torch.manual_seed(0)
    encoder = SymbolicGridEncoder((7, 7, 3), True, [11, 6, 3])
    grids = torch.stack(
        [_ids((8, 7, 7), 11, 1), _ids((8, 7, 7), 6, 2), _ids((8, 7, 7), 3, 3)], dim=-1
    )
    encoder(grids).square().sum().backward()
    assert calls == [1]
    fast = encoder.embedding.weight.grad.clone()
    encoder.zero_grad()
    # The same encoder with the lookup done the plain way.
    idx = grids + encoder.offsets
    emb = encoder.embedding(idx).sum(dim=3)
    encoder._trunk(emb.permute(0, 3, 1, 2), None).square().sum().backward()
    torch.testing.assert_close(fast, encoder.embedding.weight.grad)
    assert fast.abs().sum() > 0
