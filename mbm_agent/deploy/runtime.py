"""Acting with an exported policy, with no SB3 and no training code: :func:`load_exported`.

:func:`load_exported` reads an export folder written by
:func:`mbm_agent.deploy.export.export_policy` (``export.json``, the model file and,
for text games, ``vocabulary.json``) and returns an :class:`ExportedPolicy` that
checks each observation against ``export.json`` and runs the model with its
format's runtime (ONNX Runtime, TorchScript, TensorFlow or LiteRT)::

    from mbm_agent.deploy.runtime import load_exported
    policy = load_exported("runs/my-run/exports/onnx")
    action = policy.act(obs)

A policy with memory is exported with its recurrent state as one more input and
output (``export.json``'s ``state``); :class:`ExportedPolicy` carries it between
calls, one episode per slot, as :class:`~mbm_agent.training.agent.Actor` does:
call ``policy.reset()`` (or ``reset(slots)``) when episodes start, or pass
``episode_start``.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from mbm_agent.deploy.memory import SlotStates
from mbm_agent.deploy.network import OUTPUT_NAMES, STATE_INPUT, STATE_OUTPUT, output_names
from mbm_agent.encoding.config import MAX_MEMORY
from mbm_agent.encoding.spec import InputSpec, check_observation
from mbm_agent.encoding.values import check_values
from mbm_agent.training.model_check import MAX_ACTIONS, MAX_KEYS
from mbm_agent.training.storage import MAX_SPACE_DIMS, MAX_SPACE_ELEMENTS, ModelFileError, read_json

if TYPE_CHECKING:
    from envs.core.text import Vocabulary
    from mbm_agent.training.adapter import AdapterState, ObservationAdapter

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "savedmodel", "tflite")
"""Export formats :func:`export_policy` writes."""

EXPORT_FORMAT = "mbm-agent/export"
EXPORT_VERSION = 1

#: The model file (or folder) each format writes inside the export folder.
MODEL_FILES: dict[str, str] = {
    "onnx": "policy.onnx",
    "torchscript": "policy.pt",
    "savedmodel": "savedmodel",
    "tflite": "policy.tflite",
}

EXPORT_EXTRA = "pip install 'mbm-agent[export]'"
TF_EXTRA = "pip install 'mbm-agent[tf]'"
Runner = Callable[[dict[str, NDArray[Any]]], dict[str, NDArray[Any]]]
"""A loaded model: batched, checked inputs by name -> outputs by name (the state's too)."""


def require_onnxruntime() -> ModuleType:
    """ONNX Runtime, or an ImportError naming the pip extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"Running an ONNX export needs onnxruntime ({exc}): {EXPORT_EXTRA}."
        ) from exc
    return onnxruntime


_TF_MODULES = ("tensorflow", "keras", "tf_keras")


@contextlib.contextmanager
def tf_import_hint(fmt: str) -> Iterator[None]:
    """Turn a missing TensorFlow (imported lazily by the Keras twin) into the pip fix."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in _TF_MODULES:
            raise ImportError(f"The {fmt} format needs TensorFlow ({exc}): {TF_EXTRA}.") from exc
        raise


def require_keras_twin(fmt: str) -> ModuleType:
    """The Keras twin (:mod:`mbm_agent.deploy.keras`), or an ImportError naming the fix."""
    try:
        with tf_import_hint(fmt):
            from mbm_agent.deploy import keras as twin
    except ModuleNotFoundError as exc:
        if exc.name == "mbm_agent.deploy.keras":
            raise ImportError(
                f"The {fmt} format needs mbm_agent.deploy.keras, which this installation of "
                "mbm-agent lacks; export to 'onnx' or 'torchscript' instead."
            ) from exc
        raise
    return twin


# -- loading ---------------------------------------------------------------------------
def normalize_outputs(raw: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
    """A runner's outputs with the dtypes and shapes every format returns (the new state's too)."""
    out = {name: np.asarray(raw[name]) for name in OUTPUT_NAMES}
    out["action"] = out["action"].astype(np.int64, copy=False).reshape(-1)
    out["logits"] = out["logits"].astype(np.float32, copy=False)
    out["value"] = out["value"].astype(np.float32, copy=False).reshape(-1)
    if STATE_OUTPUT in raw:
        out[STATE_OUTPUT] = np.asarray(raw[STATE_OUTPUT]).astype(np.float32, copy=False)
    return out


def onnx_runner(path: Path, threads: int, providers: list[str] | None, memory: int = 0) -> Runner:
    """Run an ONNX file with ONNX Runtime (``memory``: size of its recurrent state, 0: none)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), options, providers=providers or ["CPUExecutionProvider"]
    )
    outputs = list(output_names(memory))

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return dict(zip(outputs, session.run(outputs, feeds), strict=True))

    return run


def torchscript_runner(path: Path, names: list[str], memory: int = 0) -> Runner:
    """Run a traced TorchScript file whose inputs are ``names``, in order.

    With ``memory`` (the size of its recurrent state), the state is its last input
    and its last output.
    """
    names = [*names, STATE_INPUT] if memory else list(names)
    outputs = output_names(memory)
    with warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export, which has no loader
        # for deployment yet; the format is still read by every torch 2.x.
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        with torch.inference_mode():
            outs = module(*(torch.from_numpy(feeds[k]) for k in names))
        return {name: t.numpy() for name, t in zip(outputs, outs, strict=True)}

    return run


def keras_runner(path: Path, fmt: str, threads: int = 1) -> Runner:
    """Run a SavedModel or TFLite file through the Keras twin's loaders."""
    twin = require_keras_twin(fmt)
    with tf_import_hint(fmt):
        if fmt == "savedmodel":
            loaded = twin.load_savedmodel(path)
        elif "num_threads" in inspect.signature(twin.load_tflite).parameters:
            loaded = twin.load_tflite(path, num_threads=threads)
        else:
            loaded = twin.load_tflite(path)

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return dict(loaded.run(feeds))

    return run


class ExportedPolicy:
    """An exported policy loaded for acting; see :func:`load_exported`.

    Call it on an observation dict of numpy arrays, either one observation as
    the env emits it or a batch with a leading batch dimension. When the policy
    was trained on converted observations (``export.json``'s
    ``observation_adapter``: raw strings to token ids, waveform chunks to log-mel
    features, a plain Box to a Dict), the raw observation is converted here in
    numpy, as in training; already converted keys pass unchanged. A waveform is
    heard over a rolling window of the last steps: call :meth:`reset` at episode
    starts.

    A policy with memory (``export.json``'s ``state``) carries its recurrent
    state from one call to the next, slot by slot, as
    :class:`~mbm_agent.training.agent.Actor` does: a slot starts a new episode
    (a zero state) on the first call, after :meth:`reset`, where ``episode_start``
    is set and when the batch size changes. Keys, dtypes and
    shapes are checked against ``export.json`` before the model runs; safe
    dtype conversions (e.g. int32 token ids to int64) are made, unsafe ones
    (float frames for a uint8 input) are refused with a message, by the check
    every runtime shares (:func:`mbm_agent.encoding.spec.check_observation`).

    Attributes:
        path: The export folder.
        spec: ``export.json``.
        format: The export format (a member of :data:`FORMATS`).
        inputs: The model inputs, in order.
        n_actions: Number of actions.
        vocabulary: The instruction vocabulary, if the policy reads text.
        adapter: The conversion of raw observations, or None when there is none.
        memory: Size of the recurrent state (0: a policy without memory).
    """

    def __init__(self, path: Path, spec: dict[str, Any], run: Runner) -> None:
        self.path = path
        self.spec = spec
        self.format = str(spec["export_format"])
        self.inputs = [InputSpec.from_json(d) for d in spec["inputs"]]
        self.n_actions = int(spec["n_actions"])
        self._ignored = set(spec.get("ignored_keys") or ())
        self._run = run
        self.memory = int((spec.get("state") or {}).get("size", 0))
        self._states: SlotStates | None = SlotStates(self.memory) if self.memory else None
        self.vocabulary: Vocabulary | None = None
        if spec.get("vocabulary"):
            from envs.core.text import Vocabulary

            vocab_path = path / str(spec["vocabulary"])
            try:
                self.vocabulary = Vocabulary.load(vocab_path)
            except (ValueError, OSError, RecursionError) as exc:
                raise ModelFileError(f"{vocab_path}: {exc}; re-export the policy.") from exc
            for info in self.inputs:
                if (spec.get("modalities") or {}).get(info.name) == "text" and info.shape != (
                    self.vocabulary.max_len,
                ):
                    raise ModelFileError(
                        f"{vocab_path} (max_len {self.vocabulary.max_len}) does not fit input "
                        f"{info.name!r} of shape {info.shape} in {path / 'export.json'}; "
                        "re-export the policy."
                    )
        self.adapter: ObservationAdapter | None = None
        self._adapter_state: AdapterState | None = None
        if spec.get("observation_adapter"):
            from mbm_agent.training.adapter import ObservationAdapter

            try:
                self.adapter = ObservationAdapter.from_dict(spec["observation_adapter"])
            except ValueError as exc:
                raise ModelFileError(f"{path / 'export.json'}: {exc}") from exc
            self._adapter_state = self.adapter.new_state(1)

    def reset(self, slots: NDArray[np.bool_] | list[int] | None = None) -> None:
        """Start new episodes in ``slots`` (all when None).

        Their recurrent state is zeroed on the next call, their waveform windows silenced.
        """
        if self._adapter_state is not None:
            self._adapter_state.reset(slots)
        if self._states is not None:
            self._states.reset(slots)

    @property
    def state(self) -> NDArray[np.float32] | None:
        """A policy with memory: ``(B, memory)`` state after the last call (else None)."""
        return None if self._states is None else self._states.state

    @property
    def input_names(self) -> list[str]:
        """Observation keys the model reads, in input order."""
        return [i.name for i in self.inputs]

    def __repr__(self) -> str:
        inputs = ", ".join(f"{i.name}: {i.dtype}{list(i.shape)}" for i in self.inputs)
        return f"ExportedPolicy({self.format}, {self.path}, inputs=({inputs}), n_actions={self.n_actions})"

    def __call__(
        self,
        obs: Mapping[str, Any] | NDArray[Any],
        episode_start: NDArray[np.bool_] | list[bool] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """All outputs: ``action`` (int64), ``logits`` and ``value`` (float32).

        Args:
            obs: One observation (arrays of the per-sample shapes) or a batch
                (a leading batch dimension on every key).
            episode_start: A policy with memory: ``(B,)``, True where the
                observation starts an episode (its state starts from zeros).

        Returns:
            ``{"action", "logits", "value"}``, batched like ``obs``.

        Raises:
            ValueError: A key is missing or unknown, or a dtype or shape does not fit
                (the message names the key, what was expected and what was given).
        """
        if self.adapter is not None:
            if episode_start is not None and self._adapter_state is not None:
                flags = np.asarray(episode_start, dtype=bool).reshape(-1)
                if self._adapter_state.batch == len(flags):
                    self._adapter_state.reset(np.flatnonzero(flags))
            obs = self.adapter.adapt(obs, self._adapter_state)
        feeds, batched = self.prepare(obs)
        if self._states is not None:
            batch = len(next(iter(feeds.values())))
            feeds[STATE_INPUT] = self._states.before(batch, episode_start)
        out = normalize_outputs(self._run(feeds))
        if self._states is not None:
            self._states.after(out.pop(STATE_OUTPUT))
        if not batched:
            return {name: np.asarray(value[0]) for name, value in out.items()}
        return out

    def act(
        self,
        obs: Mapping[str, Any] | NDArray[Any],
        episode_start: NDArray[np.bool_] | list[bool] | None = None,
    ) -> NDArray[Any]:
        """Deterministic actions: ``(B,)`` int64 for a batch, a 0-d int64 array for one observation."""
        return self(obs, episode_start)["action"]

    def prepare(
        self, obs: Mapping[str, Any] | NDArray[Any]
    ) -> tuple[dict[str, NDArray[Any]], bool]:
        """Check and convert an observation into model inputs.

        Args:
            obs: One observation or a batch, keyed like the observation space.

        Returns:
            ``(batched inputs by name, whether obs was batched)``.

        Raises:
            ValueError: See :meth:`__call__`.
        """
        checked = check_observation(self.inputs, obs, single=True, ignored=self._ignored)
        # The rule every runtime shares (the torch agent's too): no NaN/inf, no empty
        # batch, whatever the backend would make of them.
        for info in self.inputs:
            check_values(info.name, checked.values[info.name], info.dtype, info.shape)
        return checked.values, checked.batched


_INPUT_DTYPES = ("uint8", "int64", "float32", "int32", "float64", "bool")


def _plain_file_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and "\0" not in value
    )


def check_export_json(spec: Mapping[str, Any], path: Path) -> None:
    """Check the fields of ``export.json`` that loading reads.

    Raises:
        ModelFileError: A field is malformed (the message names the file and the
            field); ``file`` and ``vocabulary`` must name files inside the folder.
    """

    def fail(field: str, message: str) -> ModelFileError:
        return ModelFileError(f"{path}: field {field!r} {message}; re-export the policy.")

    fmt = spec.get("export_format")
    if fmt not in FORMATS:
        raise fail("export_format", f"names an unknown format {fmt!r} (known: {list(FORMATS)})")
    for field in ("file", "vocabulary"):
        value = spec.get(field)
        if value is None and (field == "vocabulary" or field not in spec):
            continue
        if not _plain_file_name(value):
            raise fail(field, f"must name a file inside the export folder, got {value!r:.80}")
    inputs = spec.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_KEYS:
        raise fail("inputs", f"must be a list of 1 to {MAX_KEYS} inputs")
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise fail(where, "must be an object with a 'name' string")
        if item.get("dtype") not in _INPUT_DTYPES:
            raise fail(f"{where}.dtype", f"must be one of {list(_INPUT_DTYPES)}")
        shape = item.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_SPACE_DIMS
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_SPACE_ELEMENTS
                for d in shape
            )
            or int(np.prod(shape, dtype=np.float64)) > MAX_SPACE_ELEMENTS
        ):
            raise fail(
                f"{where}.shape",
                f"must be a list of at most {MAX_SPACE_DIMS} sizes holding at most "
                f"{MAX_SPACE_ELEMENTS} values",
            )
    n_actions = spec.get("n_actions")
    if isinstance(n_actions, bool) or not isinstance(n_actions, int):
        raise fail("n_actions", "must be an integer")
    if not 1 <= n_actions <= MAX_ACTIONS:
        raise fail("n_actions", f"must be in [1, {MAX_ACTIONS}]")
    ignored = spec.get("ignored_keys") or []
    if not isinstance(ignored, list) or not all(isinstance(k, str) for k in ignored):
        raise fail("ignored_keys", "must be a list of key names")
    if not isinstance(spec.get("modalities") or {}, Mapping):
        raise fail("modalities", "must be an object")
    state = spec.get("state")
    if state is not None:
        size = state.get("size") if isinstance(state, Mapping) else None
        if (
            not isinstance(state, Mapping)
            or state.get("input") != STATE_INPUT
            or state.get("output") != STATE_OUTPUT
            or state.get("dtype") != "float32"
            or isinstance(size, bool)
            or not isinstance(size, int)
            or not 1 <= size <= MAX_MEMORY
        ):
            raise fail(
                "state",
                f"must be null or {{'input': {STATE_INPUT!r}, 'output': {STATE_OUTPUT!r}, "
                f"'dtype': 'float32', 'size': 1 to {MAX_MEMORY}}}",
            )
        if any(isinstance(i, Mapping) and i.get("name") == STATE_INPUT for i in inputs):
            raise fail("inputs", f"must not name an observation {STATE_INPUT!r} (the state's)")


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
    check_export_json(spec, folder / "export.json")
    fmt = spec["export_format"]
    model = folder / str(spec.get("file", MODEL_FILES[fmt]))
    if not model.exists():
        raise ModelFileError(f"{model} is missing; re-export the policy.")
    memory = int((spec.get("state") or {}).get("size", 0))
    if fmt == "onnx":
        run = onnx_runner(model, threads, providers, memory)
    elif fmt == "torchscript":
        run = torchscript_runner(model, [str(d["name"]) for d in spec["inputs"]], memory)
    else:
        run = keras_runner(model, fmt, threads)
    return ExportedPolicy(folder, spec, run)
