"""Deployable exports of a trained policy: ONNX, TorchScript, TF SavedModel and TFLite.

:func:`export_policy` turns a run (or a policy folder, an
:class:`~mbm_agent.training.agent.Agent`, a :class:`~mbm_agent.deploy.network.PolicyNetwork`)
into a folder holding the model file, ``export.json`` (what the inputs and
outputs are) and, for text games, ``vocabulary.json``.
:func:`~mbm_agent.deploy.runtime.load_exported` reads that folder back and acts,
with no SB3 and no training code involved::

    from mbm_agent.deploy.runtime import load_exported
    policy = load_exported("runs/my-run/exports/onnx")
    action = policy.act(obs)

The exported model takes the raw observation, exactly as the env emits it
(uint8 frames, int64 token ids, float32 audio), one input per observation key,
with a dynamic batch dimension; the preprocessing (scaling, channel order,
token lookup) is inside. For an env whose observations are converted at its
edge (raw strings, waveforms, a plain Box: see
:mod:`mbm_agent.training.adapter`), the model takes the converted arrays (token
ids, log-mel features) and ``export.json`` holds the conversion
(``observation_adapter``), which :class:`~mbm_agent.deploy.runtime.ExportedPolicy`
applies in numpy first: ``policy.act(obs)`` takes the raw observation the env
emits. It returns three outputs:

- ``action``: ``(B,)`` int64, the deterministic action (argmax of ``logits``);
- ``logits``: ``(B, n_actions)`` float32, the action logits (Q-values for DQN);
- ``value``: ``(B,)`` float32, the critic's value (``max Q`` for DQN).

A policy with memory (``policy_kwargs.memory``, a GRU over the fused features)
takes one more input, ``recurrent_state`` ``(B, memory)`` float32 (zeros when an
episode starts), and returns a fourth output, ``next_recurrent_state``, to feed
back on the episode's next step; ``export.json``'s ``state`` names both and gives
the size (``null`` without memory). :class:`~mbm_agent.deploy.runtime.ExportedPolicy`
carries it for you (``reset()`` / ``episode_start`` at episode starts).

Formats:

- ``onnx``: ``policy.onnx``, run with ONNX Runtime (``pip install
  'mbm-agent[export]'``). Written by torch's dynamo exporter, or by the
  TorchScript-based one when dynamo fails (``export.json`` says which).
- ``torchscript``: ``policy.pt``, a traced module for ``torch.jit.load``.
- ``savedmodel``, ``tflite``: through the Keras twin of the policy
  (:mod:`mbm_agent.deploy.keras`, ``pip install 'mbm-agent[tf]'``).

An ONNX file is a graph of operators and loads without running Python code.
TorchScript and SavedModel files hold programs: load only exports you trust.

Every export is checked before it is kept: the written file is loaded back and
must reproduce the torch policy's outputs at batch sizes 1 and 7 (with memory,
over three steps, each from the state the export itself returned).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from mbm_agent._version import __version__
from mbm_agent.deploy.network import (
    STATE_INPUT,
    STATE_OUTPUT,
    PolicyNetwork,
    UnsupportedPolicyError,
)
from mbm_agent.deploy.runtime import (
    EXPORT_EXTRA,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    FORMATS,
    MODEL_FILES,
    Runner,
    keras_runner,
    normalize_outputs,
    onnx_runner,
    require_keras_twin,
    tf_import_hint,
    torchscript_runner,
)
from mbm_agent.encoding.spec import InputSpec
from mbm_agent.training.agent import Agent, PolicySource, load_agent, policy_source
from mbm_agent.training.config import ConfigError
from mbm_agent.training.storage import (
    ModelFileError,
    atomic_write_text,
    fresh_tmp_dir,
    read_json,
    replace_dir,
)

if TYPE_CHECKING:
    from envs.core.text import Vocabulary

ONNX_EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "legacy")
"""``auto``: dynamo, falling back to the TorchScript-based (``legacy``) exporter."""

#: How far an export's outputs may drift from the torch policy's before the export
#: is rejected (absolute plus relative to the reference), per format.
VERIFY_TOLERANCE: dict[str, float] = {
    "onnx": 1e-4,
    "torchscript": 1e-5,
    "savedmodel": 1e-3,
    "tflite": 1e-3,
}

_VERIFY_BATCHES = (1, 7)
_VERIFY_STEPS = 3  # of a policy with memory, each from the state the last one returned


class ExportError(RuntimeError):
    """A policy cannot be exported to a format, or the exporter failed."""


# -- export --------------------------------------------------------------------------
def export_policy(
    source: str | Path | Agent | PolicyNetwork,
    fmt: str,
    out_dir: str | Path | None = None,
    which: str = "best",
    *,
    vocabulary: Vocabulary | None = None,
    onnx_exporter: str = "auto",
    opset: int | None = None,
) -> Path:
    """Export a policy to a deployable format.

    Args:
        source: A run folder (``runs/NAME``), a policy folder (``runs/NAME/best``),
            a loaded :class:`~mbm_agent.training.agent.Agent` or a
            :class:`~mbm_agent.deploy.network.PolicyNetwork`.
        fmt: One of :data:`FORMATS`.
        out_dir: Export folder. Defaults to ``<run>/exports/<fmt>/`` for a run's
            best policy, ``<run>/exports/<fmt>-final/`` and ``<fmt>-step-N/`` for its
            ``final/`` and checkpoint policies (:func:`~mbm_agent.training.agent.policy_source`),
            and to ``<policy folder>/exports/<fmt>/`` for any other policy folder;
            required for an Agent or a PolicyNetwork.
        which: With a run folder: ``"best"`` (falling back to ``final``) or ``"final"``.
        vocabulary: Vocabulary to copy beside the model; by default the policy's own
            (a run's or an Agent's).
        onnx_exporter: ``"auto"`` (dynamo, falling back to the TorchScript-based
            exporter if it fails), ``"dynamo"`` or ``"legacy"`` (TorchScript-based).
        opset: ONNX opset; the exporter's default when None.

    Returns:
        The export folder. It is written to a temporary folder and renamed into
        place, so a failed export leaves an earlier one in ``out_dir`` untouched.
        An existing ``out_dir`` is replaced only when it is empty or an earlier
        export (it holds mbm-agent's ``export.json``): an export never deletes
        anything it did not write.

    Raises:
        ValueError: An unknown format or exporter, or no ``out_dir`` for an
            in-memory policy.
        ExportError: The policy has a part the format cannot express (a recurrent
            or non-Discrete policy), or the exporter failed or produced a model
            that does not reproduce the policy.
        ImportError: The format's optional dependencies are missing (the message
            names the pip extra).
        ModelFileError: The run or policy folder is missing or damaged.
        ConfigError: ``out_dir`` is a file, or a non-empty folder that is not an export.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; known formats: {list(FORMATS)}.")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(
            f"Unknown onnx_exporter {onnx_exporter!r}; choose one of {list(ONNX_EXPORTERS)}."
        )
    net, spec, own_vocabulary, found = _resolve_source(source, which)
    origin = None
    if found is not None:
        home = found.home
        origin = found.model_dir.relative_to(home).as_posix() if found.model_dir != home else "."
    if out_dir is None:
        if found is None:
            raise ValueError(
                f"Pass out_dir to export a {type(source).__name__}: it does not know its run folder."
            )
        # exports/<fmt> for the best policy, exports/<fmt>-final and exports/<fmt>-step-N for
        # the others: in the run folder, which training never replaces or prunes.
        out_dir = found.home / "exports" / f"{fmt}{found.suffix}"
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    vocabulary = vocabulary if vocabulary is not None else own_vocabulary
    if fmt == "onnx":
        _require_onnx()
    elif fmt in ("savedmodel", "tflite"):
        require_keras_twin(fmt)

    net = _export_copy(net)
    tmp = fresh_tmp_dir(out_dir)
    try:
        target = tmp / MODEL_FILES[fmt]
        if fmt == "onnx":
            extra = _export_onnx(net, target, onnx_exporter, opset)
        elif fmt == "torchscript":
            extra = _export_torchscript(net, target)
        else:
            extra = _export_keras(net, target, fmt)
        meta = _metadata(net, spec, fmt, origin, vocabulary is not None)
        meta.update(extra)
        if vocabulary is not None:
            vocabulary.save(tmp / "vocabulary.json")
        atomic_write_text(tmp / "export.json", json.dumps(meta, indent=2))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_out_dir(out_dir: Path) -> None:
    """Refuse an export folder whose replacement would delete something that is not an export.

    Raises:
        ConfigError: ``out_dir`` is a file or a link, or a non-empty folder without
            mbm-agent's ``export.json`` (a run folder, ``runs/``, anything else).
    """
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ConfigError(
            f"--out {out_dir} is a file or a link; an export is a folder: pick a new one."
        )
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    try:
        ours = read_json(out_dir / "export.json", "the export").get("format") == EXPORT_FORMAT
    except ModelFileError:
        ours = False
    if not ours:
        inside = (
            f"e.g. --out {out_dir.parent / 'exports' / out_dir.name}"
            if (out_dir / "model.json").is_file()  # a policy folder, itself replaced whole
            else f"e.g. --out {out_dir / 'export'}"
        )
        raise ConfigError(
            f"--out {out_dir} is a folder holding other files, not an earlier export (it has "
            "no export.json of mbm-agent); an export replaces its folder whole, so it is only "
            f"written to a new or empty folder or over an earlier export, {inside}."
        )
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_ENTRIES)
    if foreign:
        raise ConfigError(
            f"--out {out_dir} is an earlier export that now also holds {', '.join(foreign)}, "
            "which mbm-agent did not write; an export replaces its folder whole. Move them "
            "out of the folder, or export to another --out."
        )


#: Every entry an export folder holds: what :func:`export_policy` writes there.
EXPORT_ENTRIES = frozenset({"export.json", "vocabulary.json", *MODEL_FILES.values()})


def _resolve_source(
    source: str | Path | Agent | PolicyNetwork, which: str
) -> tuple[PolicyNetwork, dict[str, Any], Vocabulary | None, PolicySource | None]:
    """``(net, spec, vocabulary, the policy's folder and home if it came from one)``."""
    if isinstance(source, PolicyNetwork):
        return source, {}, None, None
    if isinstance(source, Agent):
        return _network(source), dict(source.spec), source.vocabulary, None
    if not isinstance(source, str | Path):
        raise TypeError(
            f"source must be a run or policy folder, an Agent or a PolicyNetwork, got "
            f"{type(source).__name__}."
        )
    found = policy_source(source, which)
    agent = load_agent(found.model_dir)
    return _network(agent), dict(agent.spec), agent.vocabulary, found


def _network(agent: Agent) -> PolicyNetwork:
    try:
        return PolicyNetwork.from_agent(agent)
    except UnsupportedPolicyError as exc:
        algo = agent.spec.get("algo", "unknown")
        raise ExportError(
            f"This {algo} policy cannot be exported: {exc} Exports hold a policy with a "
            "Discrete action space (ppo, a2c or dqn; ppo and a2c with or without memory)."
        ) from exc


def _export_copy(net: PolicyNetwork) -> PolicyNetwork:
    """A frozen, eval-mode copy with the per-call input checks off (the loader checks)."""
    if not isinstance(net, PolicyNetwork):
        raise TypeError(f"Expected a PolicyNetwork, got {type(net).__name__}.")
    net = copy.deepcopy(net).eval()
    for encoder in (net.encoder, net.critic_encoder):
        if encoder is not None:
            encoder.check_inputs = False
    for param in net.parameters():
        param.requires_grad_(False)
    return net


class _PositionalPolicy(nn.Module):
    """The policy taking one tensor per observation key, positionally in ``net.keys`` order.

    With memory, the recurrent state is the last input and the new state the last output.
    """

    def __init__(self, net: PolicyNetwork) -> None:
        super().__init__()
        self.net = net
        self.keys = tuple(net.keys)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """``(action, logits, value)`` of the batch (and the new state)."""
        if self.net.memory:
            obs = dict(zip(self.keys, inputs[:-1], strict=True))
            return self.net(obs, inputs[-1])
        return self.net(dict(zip(self.keys, inputs, strict=True)))


def _input_names(net: PolicyNetwork) -> list[str]:
    """The exported model's inputs, in order: the observation keys, then the state."""
    return [*net.keys, STATE_INPUT] if net.memory else list(net.keys)


def _example_args(net: PolicyNetwork, batch: int) -> tuple[Tensor, ...]:
    """Positional example inputs for tracing (a nonzero state: no branch on zeros)."""
    example = _example(net, batch)
    args = [torch.from_numpy(example[k]) for k in net.keys]
    if net.memory:
        args.append(torch.from_numpy(_example_state(net, batch)))
    return tuple(args)


def _example_state(net: PolicyNetwork, batch: int, seed: int = 0) -> NDArray[np.float32]:
    """A random recurrent state in the GRU's range (-1, 1)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, net.memory)).astype(np.float32)


def input_specs(net: PolicyNetwork) -> list[InputSpec]:
    """The raw inputs of a policy network, in its input order (``export.json``'s ``inputs``)."""
    return list(net.encoder.input_specs)


def _example(net: PolicyNetwork, batch: int, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Random raw observations cast to the exported input dtypes."""
    obs = net.random_observations(batch, seed)
    return {i.name: obs[i.name].astype(i.dtype) for i in input_specs(net)}


def _metadata(
    net: PolicyNetwork,
    spec: Mapping[str, Any],
    fmt: str,
    origin: str | None,
    has_vocabulary: bool,
) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "export_format": fmt,
        "file": MODEL_FILES[fmt],
        "inputs": [spec.to_json() for spec in input_specs(net)],
        "outputs": list(net.output_names),
        # A policy with memory: its recurrent state, one more input and output (zeros
        # when an episode starts); None without memory.
        "state": (
            {"input": STATE_INPUT, "output": STATE_OUTPUT, "size": net.memory, "dtype": "float32"}
            if net.memory
            else None
        ),
        "n_actions": net.n_actions,
        "policy_kind": net.kind,
        "modalities": dict(net.encoder.modalities),
        "ignored_keys": list(net.encoder.ignored),
        "env_id": spec.get("env_id"),
        "env_kwargs": spec.get("env_kwargs"),
        "algo": spec.get("algo"),
        "source": origin,
        "vocabulary": "vocabulary.json" if has_vocabulary else None,
        # How raw env observations become the inputs (None: they are the inputs).
        "observation_adapter": spec.get("observation_adapter"),
        "mbm_agent_version": __version__,
        "torch_version": torch.__version__,
    }


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """Settings for capturing the policy's graph.

    Silences the exporters' progress logs and warnings (the result is verified
    instead), and turns off the fused "fast path" of torch's transformer layers:
    its single fused op (``aten::_transformer_encoder_layer_fwd``) has no ONNX
    equivalent, while the plain attention ops it stands for export everywhere.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    fastpath = torch.backends.mha.get_fastpath_enabled()
    logger.setLevel(logging.ERROR)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        logger.setLevel(level)


def _export_onnx(
    net: PolicyNetwork, target: Path, exporter: str, opset: int | None
) -> dict[str, Any]:
    import onnx

    wrapper = _PositionalPolicy(net).eval()
    args = _example_args(net, 2)
    names = _input_names(net)
    outputs = list(net.output_names)
    attempts = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    for attempt in attempts:
        target.unlink(missing_ok=True)
        try:
            with _tracing():
                if attempt == "dynamo":
                    batch = torch.export.Dim("batch")
                    torch.onnx.export(
                        wrapper,
                        args,
                        str(target),
                        input_names=names,
                        output_names=outputs,
                        dynamic_shapes=(tuple({0: batch} for _ in names),),
                        opset_version=opset,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        wrapper,
                        args,
                        str(target),
                        input_names=names,
                        output_names=outputs,
                        dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]},
                        opset_version=opset,
                        dynamo=False,
                    )
            onnx.checker.check_model(str(target))
            _verify(onnx_runner(target, 1, None, net.memory), net, "onnx")
        except Exception as exc:
            failures.append(f"{attempt} exporter: {type(exc).__name__}: {_first_line(exc)}")
            continue
        model = onnx.load(str(target), load_external_data=False)
        used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        result: dict[str, Any] = {"exporter": attempt, "opset": used}
        if failures:
            result["fallback_reason"] = failures[0]
        return result
    raise ExportError(
        "ONNX export failed (" + "; ".join(failures) + "). Try fmt='torchscript', or "
        "onnx_exporter='legacy' / 'dynamo' to see one exporter's full error."
    )


def _export_torchscript(net: PolicyNetwork, target: Path) -> dict[str, Any]:
    wrapper = _PositionalPolicy(net).eval()
    args = _example_args(net, 2)
    try:
        with _tracing():
            traced = torch.jit.trace(wrapper, args, check_trace=False)
            torch.jit.save(traced, str(target))
        _verify(torchscript_runner(target, list(net.keys), net.memory), net, "torchscript")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"TorchScript export failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    return {"exporter": "torch.jit.trace"}


def _export_keras(net: PolicyNetwork, target: Path, fmt: str) -> dict[str, Any]:
    twin = require_keras_twin(fmt)
    try:
        with tf_import_hint(fmt):
            if fmt == "savedmodel":
                twin.export_savedmodel(net, target)
            else:
                twin.export_tflite(net, target)
        if not target.exists():
            raise ExportError(f"The Keras twin wrote no {target.name} for the {fmt} export.")
        _verify(keras_runner(target, fmt), net, fmt)
    except (ExportError, ImportError):
        raise
    except Exception as exc:
        raise ExportError(
            f"{fmt} export through the Keras twin failed: {type(exc).__name__}: "
            f"{_first_line(exc)}; export to 'onnx' or 'torchscript' instead."
        ) from exc
    return {"exporter": "keras_twin"}


def _verify(run: Runner, net: PolicyNetwork, fmt: str) -> None:
    """Check that an exported model reproduces ``net`` at several batch sizes.

    A policy with memory is stepped :data:`_VERIFY_STEPS` times from a random
    state, the export from the states it returns and the torch policy from its own.
    """
    steps = _VERIFY_STEPS if net.memory else 1
    size = max(_VERIFY_BATCHES)
    observations = [_example(net, size, seed=12345 + step) for step in range(steps)]
    for batch in _VERIFY_BATCHES:
        ref_state = got_state = torch.from_numpy(_example_state(net, batch, seed=54321))
        for step, full in enumerate(observations):
            obs = {k: v[:batch] for k, v in full.items()}
            with torch.inference_mode():
                outs = net({k: torch.from_numpy(v) for k, v in obs.items()}, ref_state)
            reference = {"logits": outs[1].numpy(), "value": outs[2].numpy()}
            feeds = dict(obs)
            if net.memory:
                ref_state = outs[3]
                reference[STATE_OUTPUT] = ref_state.numpy()
                feeds[STATE_INPUT] = got_state.numpy()
            got = normalize_outputs(run(feeds))
            where = f"batch size {batch}" + (f", step {step + 1}" if net.memory else "")
            _compare(got, reference, fmt, where)
            if net.memory:
                got_state = torch.from_numpy(got[STATE_OUTPUT])


def _compare(
    got: Mapping[str, NDArray[Any]], reference: Mapping[str, NDArray[Any]], fmt: str, where: str
) -> None:
    tol = VERIFY_TOLERANCE[fmt]
    for name, ref in reference.items():
        out = got[name]
        if out.shape != ref.shape:
            raise ExportError(
                f"The {fmt} export returns {name} of shape {out.shape} at {where}, "
                f"expected {ref.shape}."
            )
        if not np.all(np.isfinite(out)):
            raise ExportError(
                f"The {fmt} export returns non-finite {name} (NaN or inf) at {where} where "
                "the torch policy's are finite."
            )
        diff = np.abs(out - ref)
        if not np.all(diff <= tol * (1.0 + np.abs(ref))):
            raise ExportError(
                f"The {fmt} export does not reproduce the policy: {name} differs by up to "
                f"{float(np.max(diff)):.2e} (tolerance {tol:.0e}) at {where}."
            )
    batch = len(reference["logits"])
    if got["action"].shape != (batch,) or not np.array_equal(
        got["action"], np.argmax(got["logits"], axis=1)
    ):
        raise ExportError(
            f"The {fmt} export returns actions that are not argmax(logits) at {where}."
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


# -- optional dependencies -------------------------------------------------------------
def _require_onnx() -> ModuleType:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs onnx and onnxruntime ({exc}): {EXPORT_EXTRA}."
        ) from exc
    return onnx
