"""Deployable exports of a trained policy: ONNX, TorchScript, TF SavedModel and TFLite.

:func:`export_policy` turns a run (or a policy folder, an
:class:`~mbm_agent.training.agent.Agent`, a :class:`~mbm_agent.inference.PolicyNetwork`)
into a folder holding the model file, ``export.json`` (what the inputs and
outputs are) and, for text games, ``vocabulary.json``. :func:`load_exported`
reads that folder back and acts, with no SB3 and no training code involved::

    from mbm_agent.export import load_exported
    policy = load_exported("runs/my-run/exports/onnx")
    action = policy.act(obs)

The exported model takes the raw observation, exactly as the env emits it
(uint8 frames, int64 token ids, float32 audio), one input per observation key,
with a dynamic batch dimension; the preprocessing (scaling, channel order,
token lookup) is inside. It returns three outputs:

- ``action``: ``(B,)`` int64, the deterministic action (argmax of ``logits``);
- ``logits``: ``(B, n_actions)`` float32, the action logits (Q-values for DQN);
- ``value``: ``(B,)`` float32, the critic's value (``max Q`` for DQN).

Formats:

- ``onnx``: ``policy.onnx``, run with ONNX Runtime (``pip install
  'mbm-agent[export]'``). Written by torch's dynamo exporter, or by the
  TorchScript-based one when dynamo fails (``export.json`` says which).
- ``torchscript``: ``policy.pt``, a traced module for ``torch.jit.load``.
- ``savedmodel``, ``tflite``: through the Keras twin of the policy
  (:mod:`mbm_agent.keras_twin`, ``pip install 'mbm-agent[tf]'``).

An ONNX file is a graph of operators and loads without running Python code.
TorchScript and SavedModel files hold programs: load only exports you trust.

Every export is checked before it is kept: the written file is loaded back and
must reproduce the torch policy's outputs at batch sizes 1 and 7.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from mbm_agent.inference import PolicyNetwork, UnsupportedPolicyError
from mbm_agent.training.storage import ModelFileError, fresh_tmp_dir, read_json, replace_dir

if TYPE_CHECKING:
    from envs.core.text import Vocabulary
    from mbm_agent.training.agent import Agent

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "savedmodel", "tflite")
"""Export formats :func:`export_policy` writes."""

ONNX_EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "legacy")
"""``auto``: dynamo, falling back to the TorchScript-based (``legacy``) exporter."""

OUTPUT_NAMES: tuple[str, ...] = ("action", "logits", "value")
"""Names of the exported model's outputs, in order."""

EXPORT_FORMAT = "mbm-agent/export"
EXPORT_VERSION = 1

#: The model file (or folder) each format writes inside the export folder.
MODEL_FILES: dict[str, str] = {
    "onnx": "policy.onnx",
    "torchscript": "policy.pt",
    "savedmodel": "savedmodel",
    "tflite": "policy.tflite",
}

#: How far an export's outputs may drift from the torch policy's before the export
#: is rejected (absolute plus relative to the reference), per format.
VERIFY_TOLERANCE: dict[str, float] = {
    "onnx": 1e-4,
    "torchscript": 1e-5,
    "savedmodel": 1e-3,
    "tflite": 1e-3,
}

_EXPORT_EXTRA = "pip install 'mbm-agent[export]'"
_TF_EXTRA = "pip install 'mbm-agent[tf]'"
_VERIFY_BATCHES = (1, 7)

Runner = Callable[[dict[str, NDArray[Any]]], dict[str, NDArray[Any]]]
"""A loaded model: batched, checked inputs by name -> outputs by name."""


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
            :class:`~mbm_agent.inference.PolicyNetwork`.
        fmt: One of :data:`FORMATS`.
        out_dir: Export folder. Defaults to ``<run>/exports/<fmt>/`` for a run
            folder or its ``best/``/``final/`` policy, and to
            ``<policy folder>/exports/<fmt>/`` for any other policy folder;
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

    Raises:
        ValueError: An unknown format or exporter, or no ``out_dir`` for an
            in-memory policy.
        ExportError: The policy has a part the format cannot express (a recurrent
            or non-Discrete policy), or the exporter failed or produced a model
            that does not reproduce the policy.
        ImportError: The format's optional dependencies are missing (the message
            names the pip extra).
        ModelFileError: The run or policy folder is missing or damaged.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; known formats: {list(FORMATS)}.")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(
            f"Unknown onnx_exporter {onnx_exporter!r}; choose one of {list(ONNX_EXPORTERS)}."
        )
    net, spec, own_vocabulary, default_dir, origin = _resolve_source(source, which)
    if out_dir is None:
        if default_dir is None:
            raise ValueError(
                f"Pass out_dir to export a {type(source).__name__}: it does not know its run folder."
            )
        out_dir = default_dir / "exports" / fmt
    out_dir = Path(out_dir)
    vocabulary = vocabulary if vocabulary is not None else own_vocabulary
    if fmt == "onnx":
        _require_onnx()
    elif fmt in ("savedmodel", "tflite"):
        _keras_twin(fmt)

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
        (tmp / "export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _resolve_source(
    source: str | Path | Agent | PolicyNetwork, which: str
) -> tuple[PolicyNetwork, dict[str, Any], Vocabulary | None, Path | None, str | None]:
    """``(net, spec, vocabulary, folder for default exports, where the policy came from)``."""
    from mbm_agent.training.agent import Agent, load_agent, resolve_model_dir

    if isinstance(source, PolicyNetwork):
        return source, {}, None, None, None
    if isinstance(source, Agent):
        return _network(source), dict(source.spec), source.vocabulary, None, None
    if not isinstance(source, str | Path):
        raise TypeError(
            f"source must be a run or policy folder, an Agent or a PolicyNetwork, got "
            f"{type(source).__name__}."
        )
    path = Path(source)
    model_dir = resolve_model_dir(path, which)
    agent = load_agent(model_dir)
    if model_dir != path:
        home = path
    elif model_dir.name in ("best", "final"):
        home = model_dir.parent
    else:
        home = model_dir
    origin = model_dir.relative_to(home).as_posix() if model_dir != home else "."
    return _network(agent), dict(agent.spec), agent.vocabulary, home, origin


def _network(agent: Agent) -> PolicyNetwork:
    try:
        return PolicyNetwork.from_agent(agent)
    except UnsupportedPolicyError as exc:
        algo = agent.spec.get("algo", "unknown")
        raise ExportError(
            f"This {algo} policy cannot be exported: {exc} Exports hold a feed-forward policy "
            "with a Discrete action space (ppo, a2c or dqn)."
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
    """The policy taking one tensor per observation key, positionally in ``net.keys`` order."""

    def __init__(self, net: PolicyNetwork) -> None:
        super().__init__()
        self.net = net
        self.keys = tuple(net.keys)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(action, logits, value)`` of the batch."""
        return self.net(dict(zip(self.keys, inputs, strict=True)))


@dataclass(frozen=True)
class InputInfo:
    """One input of an exported policy.

    Attributes:
        name: Observation key.
        dtype: Numpy dtype name (``uint8``, ``int64`` or ``float32``).
        shape: Per-sample shape (without the batch dimension).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(s) for s in data["shape"]))


def input_infos(net: PolicyNetwork) -> list[InputInfo]:
    """The raw inputs of a policy network, in its input order."""
    infos = []
    for key in net.keys:
        spec = net.encoder.encoders[key].input_spec
        dtype = spec.dummy(1).numpy().dtype
        infos.append(InputInfo(key, dtype.name, tuple(int(s) for s in spec.shape)))
    return infos


def _example(net: PolicyNetwork, batch: int, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Random raw observations cast to the exported input dtypes."""
    obs = net.random_observations(batch, seed)
    return {i.name: obs[i.name].astype(i.dtype) for i in input_infos(net)}


def _metadata(
    net: PolicyNetwork,
    spec: Mapping[str, Any],
    fmt: str,
    origin: str | None,
    has_vocabulary: bool,
) -> dict[str, Any]:
    from mbm_agent._version import __version__

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "export_format": fmt,
        "file": MODEL_FILES[fmt],
        "inputs": [i.to_dict() for i in input_infos(net)],
        "outputs": list(OUTPUT_NAMES),
        "n_actions": net.n_actions,
        "policy_kind": net.kind,
        "modalities": dict(net.encoder.modalities),
        "ignored_keys": list(net.encoder.ignored),
        "env_id": spec.get("env_id"),
        "env_kwargs": spec.get("env_kwargs"),
        "algo": spec.get("algo"),
        "source": origin,
        "vocabulary": "vocabulary.json" if has_vocabulary else None,
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
    example = _example(net, 2)
    args = tuple(torch.from_numpy(example[k]) for k in net.keys)
    names = list(net.keys)
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
                        output_names=list(OUTPUT_NAMES),
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
                        output_names=list(OUTPUT_NAMES),
                        dynamic_axes={n: {0: "batch"} for n in [*names, *OUTPUT_NAMES]},
                        opset_version=opset,
                        dynamo=False,
                    )
            onnx.checker.check_model(str(target))
            _verify(_onnx_runner(target, threads=1, providers=None), net, "onnx")
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
    example = _example(net, 2)
    args = tuple(torch.from_numpy(example[k]) for k in net.keys)
    try:
        with _tracing():
            traced = torch.jit.trace(wrapper, args, check_trace=False)
            torch.jit.save(traced, str(target))
        _verify(_torchscript_runner(target, list(net.keys)), net, "torchscript")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"TorchScript export failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    return {"exporter": "torch.jit.trace"}


def _export_keras(net: PolicyNetwork, target: Path, fmt: str) -> dict[str, Any]:
    twin = _keras_twin(fmt)
    try:
        with _tf_import_hint(fmt):
            if fmt == "savedmodel":
                twin.export_savedmodel(net, target)
            else:
                twin.export_tflite(net, target)
        if not target.exists():
            raise ExportError(f"The Keras twin wrote no {target.name} for the {fmt} export.")
        _verify(_keras_runner(target, fmt), net, fmt)
    except (ExportError, ImportError):
        raise
    except Exception as exc:
        raise ExportError(
            f"{fmt} export through the Keras twin failed: {type(exc).__name__}: "
            f"{_first_line(exc)}; export to 'onnx' or 'torchscript' instead."
        ) from exc
    return {"exporter": "keras_twin"}


def _verify(run: Runner, net: PolicyNetwork, fmt: str) -> None:
    """Check that an exported model reproduces ``net`` at several batch sizes."""
    tol = VERIFY_TOLERANCE[fmt]
    obs = _example(net, max(_VERIFY_BATCHES), seed=12345)
    with torch.inference_mode():
        _, ref_logits, ref_value = net({k: torch.from_numpy(v) for k, v in obs.items()})
    reference = {"logits": ref_logits.numpy(), "value": ref_value.numpy()}
    for batch in _VERIFY_BATCHES:
        got = _normalize_outputs(run({k: v[:batch] for k, v in obs.items()}))
        for name, ref in reference.items():
            out = got[name]
            if out.shape != ref[:batch].shape:
                raise ExportError(
                    f"The {fmt} export returns {name} of shape {out.shape} at batch size {batch}, "
                    f"expected {ref[:batch].shape}."
                )
            if not np.all(np.isfinite(out)):
                raise ExportError(
                    f"The {fmt} export returns non-finite {name} (NaN or inf) at batch size "
                    f"{batch} where the torch policy's are finite."
                )
            diff = np.abs(out - ref[:batch])
            if not np.all(diff <= tol * (1.0 + np.abs(ref[:batch]))):
                raise ExportError(
                    f"The {fmt} export does not reproduce the policy: {name} differs by up to "
                    f"{float(np.max(diff)):.2e} (tolerance {tol:.0e}) at batch size {batch}."
                )
        if got["action"].shape != (batch,) or not np.array_equal(
            got["action"], np.argmax(got["logits"], axis=1)
        ):
            raise ExportError(
                f"The {fmt} export returns actions that are not argmax(logits) at batch "
                f"size {batch}."
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
            f"ONNX export needs onnx and onnxruntime ({exc}): {_EXPORT_EXTRA}."
        ) from exc
    return onnx


def _require_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"Running an ONNX export needs onnxruntime ({exc}): {_EXPORT_EXTRA}."
        ) from exc
    return onnxruntime


_TF_MODULES = ("tensorflow", "keras", "tf_keras")


@contextlib.contextmanager
def _tf_import_hint(fmt: str) -> Iterator[None]:
    """Turn a missing TensorFlow (imported lazily by the Keras twin) into the pip fix."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in _TF_MODULES:
            raise ImportError(f"The {fmt} format needs TensorFlow ({exc}): {_TF_EXTRA}.") from exc
        raise


def _keras_twin(fmt: str) -> ModuleType:
    try:
        with _tf_import_hint(fmt):
            from mbm_agent import keras_twin
    except ModuleNotFoundError as exc:
        if exc.name == "mbm_agent.keras_twin":
            raise ImportError(
                f"The {fmt} format needs mbm_agent.keras_twin, which this installation of "
                "mbm-agent lacks; export to 'onnx' or 'torchscript' instead."
            ) from exc
        raise
    return keras_twin


# -- loading ---------------------------------------------------------------------------
def _normalize_outputs(raw: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
    out = {name: np.asarray(raw[name]) for name in OUTPUT_NAMES}
    out["action"] = out["action"].astype(np.int64, copy=False).reshape(-1)
    out["logits"] = out["logits"].astype(np.float32, copy=False)
    out["value"] = out["value"].astype(np.float32, copy=False).reshape(-1)
    return out


def _onnx_runner(path: Path, threads: int, providers: list[str] | None) -> Runner:
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), options, providers=providers or ["CPUExecutionProvider"]
    )
    outputs = list(OUTPUT_NAMES)

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return dict(zip(outputs, session.run(outputs, feeds), strict=True))

    return run


def _torchscript_runner(path: Path, names: list[str]) -> Runner:
    with warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export, which has no loader
        # for deployment yet; the format is still read by every torch 2.x.
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        with torch.inference_mode():
            outs = module(*(torch.from_numpy(feeds[k]) for k in names))
        return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, outs, strict=True)}

    return run


def _keras_runner(path: Path, fmt: str, threads: int = 1) -> Runner:
    twin = _keras_twin(fmt)
    with _tf_import_hint(fmt):
        if fmt == "savedmodel":
            loaded = twin.load_savedmodel(path)
        elif "num_threads" in inspect.signature(twin.load_tflite).parameters:
            loaded = twin.load_tflite(path, num_threads=threads)
        else:
            loaded = twin.load_tflite(path)

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return dict(loaded(feeds))

    return run


class ExportedPolicy:
    """An exported policy loaded for acting; see :func:`load_exported`.

    Call it on an observation dict of numpy arrays, either one observation as
    the env emits it or a batch with a leading batch dimension. Keys, dtypes and
    shapes are checked against ``export.json`` before the model runs; safe
    dtype conversions (e.g. int32 token ids to int64) are made, unsafe ones
    (float frames for a uint8 input) are refused with a message.

    Attributes:
        path: The export folder.
        spec: ``export.json``.
        format: The export format (a member of :data:`FORMATS`).
        inputs: The model inputs, in order.
        n_actions: Number of actions.
        vocabulary: The instruction vocabulary, if the policy reads text.
    """

    def __init__(self, path: Path, spec: dict[str, Any], run: Runner) -> None:
        self.path = path
        self.spec = spec
        self.format = str(spec["export_format"])
        self.inputs = [InputInfo.from_dict(d) for d in spec["inputs"]]
        self.n_actions = int(spec["n_actions"])
        self._ignored = set(spec.get("ignored_keys") or ())
        self._run = run
        self.vocabulary: Vocabulary | None = None
        if spec.get("vocabulary"):
            from envs.core.text import Vocabulary

            self.vocabulary = Vocabulary.load(path / str(spec["vocabulary"]))

    @property
    def input_names(self) -> list[str]:
        """Observation keys the model reads, in input order."""
        return [i.name for i in self.inputs]

    def __repr__(self) -> str:
        inputs = ", ".join(f"{i.name}: {i.dtype}{list(i.shape)}" for i in self.inputs)
        return f"ExportedPolicy({self.format}, {self.path}, inputs=({inputs}), n_actions={self.n_actions})"

    def __call__(self, obs: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
        """All outputs: ``action`` (int64), ``logits`` and ``value`` (float32).

        Args:
            obs: One observation (arrays of the per-sample shapes) or a batch
                (a leading batch dimension on every key).

        Returns:
            ``{"action", "logits", "value"}``, batched like ``obs``.

        Raises:
            ValueError: A key is missing or unknown, or a dtype or shape does not fit
                (the message names the key, what was expected and what was given).
        """
        feeds, batched = self.prepare(obs)
        out = _normalize_outputs(self._run(feeds))
        if not batched:
            return {name: np.asarray(value[0]) for name, value in out.items()}
        return out

    def act(self, obs: Mapping[str, Any]) -> NDArray[Any]:
        """Deterministic actions: ``(B,)`` int64 for a batch, a 0-d int64 array for one observation."""
        return self(obs)["action"]

    def prepare(self, obs: Mapping[str, Any]) -> tuple[dict[str, NDArray[Any]], bool]:
        """Check and convert an observation into model inputs.

        Args:
            obs: One observation or a batch, keyed like the observation space.

        Returns:
            ``(batched inputs by name, whether obs was batched)``.

        Raises:
            ValueError: See :meth:`__call__`.
        """
        if not isinstance(obs, Mapping):
            raise ValueError(
                f"obs must be a dict of arrays keyed {self.input_names}, got {type(obs).__name__}."
            )
        names = self.input_names
        missing = [k for k in names if k not in obs]
        unknown = [k for k in obs if k not in names and k not in self._ignored]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"lacks key(s) {missing}")
            if unknown:
                parts.append(f"has unexpected key(s) {unknown}")
            raise ValueError(
                f"obs {' and '.join(parts)}; this policy takes {names}"
                + (f" (keys it ignores: {sorted(self._ignored)})" if self._ignored else "")
                + ". Pass the observation dict the env emits."
            )
        feeds: dict[str, NDArray[Any]] = {}
        batched: bool | None = None
        batch: int | None = None
        for info in self.inputs:
            x = _cast(info, np.asarray(obs[info.name]))
            this_batched = _batching(info, x)
            if batched is None:
                batched = this_batched
            elif this_batched != batched:
                raise ValueError(
                    f"obs[{info.name!r}] is {'batched' if this_batched else 'a single sample'} "
                    f"(shape {x.shape}) but obs[{names[0]!r}] is "
                    f"{'batched' if batched else 'a single sample'}; give every key the same "
                    "leading batch dimension, or none."
                )
            if not this_batched:
                x = x[None]
            if batch is None:
                batch = int(x.shape[0])
            elif x.shape[0] != batch:
                raise ValueError(
                    f"obs[{info.name!r}] has batch size {x.shape[0]} but obs[{names[0]!r}] has "
                    f"{batch}."
                )
            if not x.flags.c_contiguous or not x.flags.writeable:
                x = np.array(x, order="C", copy=True)
            feeds[info.name] = x
        return feeds, bool(batched)


def _cast(info: InputInfo, x: NDArray[Any]) -> NDArray[Any]:
    """``x`` in the input's dtype, refusing conversions that would change values."""
    want = np.dtype(info.dtype)
    got = x.dtype
    if got == want:
        return x
    where = f"obs[{info.name!r}] has dtype {got}, expected {want}"
    if want == np.uint8:
        if np.issubdtype(got, np.floating):
            raise ValueError(
                f"{where}: this input takes the raw frames the env emits (uint8, 0-255); the "
                "model scales them itself. Frames holding 0-255 values: x.astype(np.uint8); "
                "frames scaled to [0, 1]: (x * 255).round().astype(np.uint8)."
            )
        raise ValueError(f"{where}: convert the frames with x.astype(np.uint8).")
    if np.issubdtype(want, np.integer):
        if np.issubdtype(got, np.integer) and np.can_cast(got, want, casting="safe"):
            return x.astype(want)
        hint = " (token ids from Vocabulary.encode)" if info.name == "text" else ""
        raise ValueError(f"{where}: give integers{hint} that fit in {want}.")
    if any(np.issubdtype(got, kind) for kind in (np.floating, np.integer, np.bool_)):
        return x.astype(want)
    raise ValueError(f"{where}: give real numbers.")


def _batching(info: InputInfo, x: NDArray[Any]) -> bool:
    """Whether ``x`` is a batch of the input's samples (else one sample); checks the shape."""
    shape = tuple(x.shape)
    if shape == info.shape:
        return False
    if shape[1:] == info.shape and len(shape) == len(info.shape) + 1:
        return True
    one = info.shape if info.shape else "() (a scalar)"
    raise ValueError(
        f"obs[{info.name!r}] has shape {shape}, expected {one} for one observation or "
        f"(B, {', '.join(str(s) for s in info.shape)}) for a batch."
        + (
            " The axes look permuted (channel-first vs channel-last); pass what the env emits."
            if len(shape) in (len(info.shape), len(info.shape) + 1)
            and sorted(shape[-len(info.shape) :]) == sorted(info.shape)
            and info.shape
            else ""
        )
    )


def load_exported(
    path: str | Path, *, threads: int = 1, providers: list[str] | None = None
) -> ExportedPolicy:
    """Load an export written by :func:`export_policy` for acting.

    Args:
        path: The export folder (``runs/NAME/exports/onnx``) or a file in it.
        threads: ONNX Runtime intra-op threads and TFLite interpreter threads (1
            suits single-observation latency; raise it for large batches).
            TorchScript and SavedModel use their framework's thread settings
            (e.g. ``torch.set_num_threads``).
        providers: ONNX Runtime execution providers; CPU by default.

    Returns:
        The policy: ``policy(obs)`` gives all outputs, ``policy.act(obs)`` actions.

    Raises:
        ModelFileError: No ``export.json`` in the folder, or it is damaged.
        ImportError: The runtime for the format is not installed (the message
            names the pip extra).
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not (folder / "export.json").is_file() and (folder / "exports").is_dir():
        found = sorted(p.name for p in (folder / "exports").iterdir() if p.is_dir())
        raise ModelFileError(
            f"{folder} is a run folder, not an export; pass one of its exports: "
            + ", ".join(str(folder / "exports" / name) for name in found)
            + "."
        )
    spec = read_json(folder / "export.json", "the exported policy")
    if spec.get("format") != EXPORT_FORMAT or spec.get("version") != EXPORT_VERSION:
        raise ModelFileError(
            f"{folder / 'export.json'} is not an mbm-agent export of version {EXPORT_VERSION} "
            f"(format {spec.get('format')!r}, version {spec.get('version')!r}); re-export the "
            "policy with this mbm-agent."
        )
    fmt = spec.get("export_format")
    if fmt not in FORMATS:
        raise ModelFileError(f"{folder / 'export.json'} names an unknown format {fmt!r}.")
    model = folder / str(spec.get("file", MODEL_FILES[fmt]))
    if not model.exists():
        raise ModelFileError(f"{model} is missing; re-export the policy.")
    if fmt == "onnx":
        run = _onnx_runner(model, threads, providers)
    elif fmt == "torchscript":
        run = _torchscript_runner(model, [str(d["name"]) for d in spec["inputs"]])
    else:
        run = _keras_runner(model, fmt, threads)
    return ExportedPolicy(folder, spec, run)
