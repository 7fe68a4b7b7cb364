"""A policy with memory, exported: every format and runtime carries its state as the torch policy.

One small memory policy (GoToObject 5x5, weights drawn so that its state changes
its greedy actions) is exported to every format. Over a recorded 100-step stream
(two episodes, the second starting at a step in the middle), each runtime must
give the torch policy's logits, values and actions step by step, whether the new
episode is announced by ``episode_start`` or by ``reset()``; in a batch of two,
``reset([1])`` restarts one slot only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from memory_helpers import make_memory_matter, memory_policy, play
from numpy.typing import NDArray

from mbm_agent.deploy.export import export_policy
from mbm_agent.deploy.network import STATE_INPUT, STATE_OUTPUT, PolicyNetwork
from mbm_agent.deploy.runtime import load_exported
from mbm_agent.training.agent import Agent
from mbm_agent.training.storage import ModelFileError

STEPS = 100
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-5, "savedmodel": 1e-3, "tflite": 1e-3}

Stream = tuple[dict[str, NDArray[Any]], NDArray[np.float32]]


@pytest.fixture(scope="module")
def agent() -> Agent:
    policy, spec, vocab = memory_policy()
    make_memory_matter(policy)
    return Agent(policy, spec, vocab)


@pytest.fixture(scope="module")
def stream(agent: Agent) -> Stream:
    """A greedy stream of the torch agent (its Actor) and each step's episode_start flag."""
    actor = agent.actor()
    obs, starts = play(lambda batch, start: int(actor(batch, start.astype(bool))[0]), STEPS)
    assert starts[0] == 1 and int(starts[1:].sum()) > 0 and starts[1:].sum() < STEPS // 10
    return obs, starts


def torch_steps(agent: Agent, obs: dict[str, NDArray[Any]], starts: NDArray[Any]) -> Any:
    """The torch policy's log-probabilities and values, stepped ``(T, B)`` with its state."""
    policy = agent.policy
    steps, batch = starts.shape
    state = policy.initial_state(batch)  # type: ignore[operator]
    log_probs, values = [], []
    with torch.no_grad():
        for t in range(steps):
            step_obs = {k: torch.as_tensor(v[t]) for k, v in obs.items()}
            lp, v, state = policy.step(step_obs, state, torch.as_tensor(starts[t]))  # type: ignore[operator]
            log_probs.append(lp.numpy())
            values.append(v[:, 0].numpy())
    return np.stack(log_probs), np.stack(values)


def log_softmax(logits: NDArray[Any]) -> NDArray[Any]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def runtimes(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The exported policy in every format (Keras ones when TF is here), and the Keras runner."""
    root = tmp_path_factory.mktemp("memory-exports")
    formats = ["onnx", "torchscript"]
    try:
        import mbm_agent.deploy.keras  # noqa: F401

        formats += ["savedmodel", "tflite"]
    except ImportError:
        pass
    out: dict[str, Any] = {
        fmt: load_exported(export_policy(agent, fmt, root / fmt)) for fmt in formats
    }
    if "savedmodel" in formats:
        from mbm_agent.deploy.keras import load_savedmodel

        out["keras-runner"] = load_savedmodel(root / "savedmodel" / "savedmodel")
    return out


def test_export_json_names_the_state(runtimes: dict[str, Any]) -> None:
    for fmt, policy in runtimes.items():
        if fmt == "keras-runner":
            assert policy.memory == 16
            continue
        spec = json.loads((policy.path / "export.json").read_text())
        assert spec["state"] == {
            "input": STATE_INPUT,
            "output": STATE_OUTPUT,
            "size": 16,
            "dtype": "float32",
        }
        assert spec["outputs"] == ["action", "logits", "value", STATE_OUTPUT]
        assert STATE_INPUT not in policy.input_names  # the runtime feeds it, not the caller
        assert policy.memory == 16


def run_stream(
    call: Callable[..., dict[str, NDArray[Any]]],
    reset: Callable[[], None],
    stream: Stream,
    announce: str,
) -> dict[str, NDArray[Any]]:
    """Step a runtime through the stream, one observation batch at a time."""
    obs, starts = stream
    reset()
    got: dict[str, list[NDArray[Any]]] = {"action": [], "logits": [], "value": []}
    for t in range(len(starts)):
        batch = {k: v[t : t + 1] for k, v in obs.items()}
        if announce == "episode_start":
            out = call(batch, episode_start=np.array([bool(starts[t])]))
        else:
            if starts[t] and t:
                reset()
            out = call(batch)
        for name in got:
            got[name].append(np.asarray(out[name]).reshape(1, -1)[0])
    return {name: np.stack(values) for name, values in got.items()}


@pytest.mark.parametrize("announce", ["episode_start", "reset"])
def test_every_runtime_steps_as_the_torch_policy(
    agent: Agent, runtimes: dict[str, Any], stream: Stream, announce: str
) -> None:
    obs, starts = stream
    ref_log_probs, ref_values = torch_steps(
        agent, {k: v[:, None] for k, v in obs.items()}, starts[:, None]
    )
    ref_log_probs, ref_values = ref_log_probs[:, 0], ref_values[:, 0]
    # Without its state the policy acts otherwise: the comparison below can tell.
    stateless, _ = torch_steps(agent, {k: v[:, None] for k, v in obs.items()}, np.ones((STEPS, 1)))
    assert (stateless[:, 0].argmax(-1) != ref_log_probs.argmax(-1)).sum() >= 5

    for name, policy in runtimes.items():
        tol = TOLERANCE.get(name, 1e-3)
        got = run_stream(policy, policy.reset, stream, announce)
        np.testing.assert_allclose(
            log_softmax(got["logits"]), ref_log_probs, atol=tol * 10, err_msg=name
        )
        np.testing.assert_allclose(got["value"][:, 0], ref_values, atol=tol * 10, err_msg=name)
        near_tie = np.sort(ref_log_probs, axis=-1)[:, -2] > ref_log_probs.max(-1) - 1e-3
        same = got["action"][:, 0] == ref_log_probs.argmax(-1)
        assert np.all(same | near_tie), name


def test_a_reset_restarts_only_its_slot(
    agent: Agent, runtimes: dict[str, Any], stream: Stream
) -> None:
    obs, _ = stream
    # Slot 0 plays steps 0-39 as one episode; slot 1 steps 40-79, restarted at its 20th.
    pair = {k: np.stack([v[:40], v[40:80]], axis=1) for k, v in obs.items()}
    starts = np.zeros((40, 2), dtype=np.float32)
    starts[0] = 1.0
    starts[20, 1] = 1.0
    ref_log_probs, _ = torch_steps(agent, pair, starts)
    for name, policy in runtimes.items():
        policy.reset()
        for t in range(40):
            if t == 20:
                policy.reset([1])
            out = policy({k: v[t] for k, v in pair.items()})
            np.testing.assert_allclose(
                log_softmax(out["logits"]),
                ref_log_probs[t],
                atol=TOLERANCE.get(name, 1e-3) * 10,
                err_msg=f"{name} step {t}",
            )
        assert policy.state.shape == (2, 16)


def test_the_torch_network_steps_as_the_policy(agent: Agent) -> None:
    net = PolicyNetwork.from_agent(agent)
    assert net.memory == 16 and net.output_names[-1] == STATE_OUTPUT
    obs = net.random_observations(5)
    state = torch.rand(5, 16) * 2 - 1
    tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
    with torch.no_grad():
        log_probs, values, new_state = agent.policy.step(tensors, state, torch.zeros(5))  # type: ignore[operator]
        action, logits, value, next_state = net(tensors, state)
    torch.testing.assert_close(torch.log_softmax(logits, -1), log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, values[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(next_state, new_state, atol=1e-6, rtol=1e-5)
    assert torch.equal(action, logits.argmax(1))
    # No state given: new episodes.
    torch.testing.assert_close(net(tensors)[1], net(tensors, torch.zeros(5, 16))[1])


def test_a_malformed_state_entry_is_refused(runtimes: dict[str, Any], tmp_path: Path) -> None:
    source = runtimes["torchscript"].path
    for bad in (
        {"input": "h", "output": STATE_OUTPUT, "size": 16, "dtype": "float32"},
        {"input": STATE_INPUT, "output": STATE_OUTPUT, "size": 0, "dtype": "float32"},
        {"input": STATE_INPUT, "output": STATE_OUTPUT, "size": True, "dtype": "float32"},
        [16],
    ):
        copy = tmp_path / f"copy-{abs(hash(json.dumps(bad)))}"
        shutil.copytree(source, copy)
        spec = json.loads((copy / "export.json").read_text())
        spec["state"] = bad
        (copy / "export.json").write_text(json.dumps(spec))
        with pytest.raises(ModelFileError, match=r"export.json: field 'state'"):
            load_exported(copy)


def test_episode_start_needs_one_flag_per_slot(runtimes: dict[str, Any], stream: Stream) -> None:
    obs, _ = stream
    batch = {k: v[:2] for k, v in obs.items()}
    with pytest.raises(ValueError, match="episode_start has 3 flags for a batch of 2"):
        runtimes["torchscript"](batch, episode_start=[True, False, True])


def test_the_keras_twin_copies_the_memory_both_ways(agent: Agent) -> None:
    pytest.importorskip("tensorflow")
    from mbm_agent.deploy.keras import keras_to_torch, torch_to_keras

    net = PolicyNetwork.from_agent(agent)
    model = torch_to_keras(net)
    assert {STATE_INPUT} <= {i.name for i in model.inputs}
    other = PolicyNetwork.from_agent(agent)
    assert other.memory_core is not None
    with torch.no_grad():
        for param in other.memory_core.parameters():
            param.zero_()
    keras_to_torch(model, other)
    for mine, theirs in zip(
        net.memory_core.parameters(),  # type: ignore[union-attr]
        other.memory_core.parameters(),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs)
