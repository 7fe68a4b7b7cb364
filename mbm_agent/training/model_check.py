"""Checks of a policy's ``model.json`` before anything is built from it: field types and sizes.

A ``model.json`` from a stranger can ask for any architecture. :func:`check_model_json`
checks every field the loader reads (types, allowed values, size bounds) so that
a malformed one is a :class:`~mbm_agent.training.storage.ModelFileError` naming
the file and the field, never a raw ``TypeError``; and it bounds what building
the policy allocates: at most :data:`MAX_PARAMETERS` parameters, found from
:func:`parameter_bound` (a cheap upper bound of our architectures, checked by a
property test) and, when that bound is above the limit, by counting the
parameters on PyTorch's ``meta`` device, which allocates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mbm_agent.training.storage import RESTORE_HINT, ModelFileError

#: Most parameters a loaded policy may have: 2**28 (1 GiB of float32), refused before
#: any of them is allocated.
MAX_PARAMETERS = 2**28
#: Widest layer a model.json may ask for (encoder widths, ``net_arch``, LSTM sizes).
MAX_WIDTH = 2**14
#: Deepest ``net_arch`` (and most LSTM layers).
MAX_LAYERS = 64
#: Most observation keys.
MAX_KEYS = 256
#: Most actions of a Discrete action space.
MAX_ACTIONS = 2**20

#: Encoder fields that are layer widths.
_WIDTH_FIELDS = (
    "features_dim",
    "image_dim",
    "word_dim",
    "text_dim",
    "audio_dim",
    "vector_dim",
    "grid_embed_dim",
    "fusion_dim",
    "attention_heads",
)
#: Channels our convolutions use inside (the largest), and SB3's own extractor's width.
_INNER_WIDTH = 64
_SB3_EXTRACTOR_WIDTH = 512


def _fail(path: Path | str, field: str, message: str) -> ModelFileError:
    return ModelFileError(f"{path}: field {field!r} {message}; {RESTORE_HINT}.")


def _width(value: Any, path: Path | str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        raise _fail(path, field, f"must be an integer in [1, {MAX_WIDTH}], got {value!r:.80}")
    return value


def _layers(value: Any, path: Path | str, field: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_LAYERS:
        raise _fail(
            path, field, f"must be a list of at most {MAX_LAYERS} layer widths, got {value!r:.80}"
        )
    return [_width(v, path, f"{field}[{i}]") for i, v in enumerate(value)]


def check_model_json(spec: Mapping[str, Any], path: Path | str) -> None:
    """Check the fields of a policy's ``model.json`` that building it reads.

    Args:
        spec: The parsed ``model.json``.
        path: The file, for the messages.

    Raises:
        ModelFileError: A field has the wrong type, a value that is not allowed or
            a size beyond the bounds of this module (the message names the field).
    """
    for field, kind in (
        ("algo", str),
        ("env_id", str),
        ("extractor", str),
        ("observation_space", dict),
        ("action_space", dict),
        ("encoder", dict),
        ("modalities", dict),
        ("policy_kwargs", dict),
        ("env_kwargs", dict),
    ):
        if field in spec and not isinstance(spec[field], kind):
            raise _fail(
                path,
                field,
                f"must be a JSON {'string' if kind is str else 'object'}, got "
                f"{type(spec[field]).__name__} {spec[field]!r:.80}",
            )
    for field in ("algo", "observation_space", "action_space", "encoder"):
        if field not in spec:
            raise _fail(path, field, "is missing")
    if "vocabulary" in spec and not isinstance(spec["vocabulary"], bool):
        raise _fail(path, "vocabulary", f"must be true or false, got {spec['vocabulary']!r:.80}")
    for key, modality in spec.get("modalities", {}).items():
        if not isinstance(modality, str):
            raise _fail(path, f"modalities.{key}", f"must be a modality name, got {modality!r:.80}")
    obs = spec["observation_space"]
    if obs.get("type") != "Dict" or not isinstance(obs.get("spaces"), dict):
        raise _fail(path, "observation_space", "must be a Dict space")
    if not 1 <= len(obs["spaces"]) <= MAX_KEYS:
        raise _fail(path, "observation_space", f"must have 1 to {MAX_KEYS} keys")
    for name in _WIDTH_FIELDS:
        if name in spec["encoder"]:
            _width(spec["encoder"][name], path, f"encoder.{name}")
    kwargs = spec.get("policy_kwargs", {})
    net_arch = kwargs.get("net_arch")
    if net_arch is not None:
        if isinstance(net_arch, dict):
            unknown = sorted(set(net_arch) - {"pi", "vf", "qf"})
            if unknown:
                raise _fail(path, "policy_kwargs.net_arch", f"has unknown part(s) {unknown}")
            for part, widths in net_arch.items():
                _layers(widths, path, f"policy_kwargs.net_arch.{part}")
        else:
            _layers(net_arch, path, "policy_kwargs.net_arch")
    for name in ("lstm_hidden_size", "n_lstm_layers"):
        if name in kwargs:
            _width(kwargs[name], path, f"policy_kwargs.{name}")
    if "n_lstm_layers" in kwargs and kwargs["n_lstm_layers"] > MAX_LAYERS:
        raise _fail(path, "policy_kwargs.n_lstm_layers", f"must be at most {MAX_LAYERS}")
    if "activation_fn" in kwargs and not isinstance(kwargs["activation_fn"], str):
        raise _fail(path, "policy_kwargs.activation_fn", "must be an activation name")
    action = spec["action_space"]
    if action.get("type") == "Discrete":
        n = action.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ACTIONS:
            raise _fail(
                path, "action_space.n", f"must be an integer in [1, {MAX_ACTIONS}], got {n!r:.80}"
            )


def _elements(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _span(space: Mapping[str, Any]) -> int:
    """How many values an integer Box takes (rows of an embedding table over them)."""

    def extreme(v: Any, pick: Any) -> float:
        values = v if isinstance(v, list) else [v]
        return float(pick(float(x) for x in values))

    span = extreme(space.get("high", 0), max) - extreme(space.get("low", 0), min) + 1
    return int(min(max(span, 1), 2**62))


def _key_bound(key: str, space: Mapping[str, Any], declared: str | None, width: int) -> int:
    """A bound on the parameters of one key's encoder (and its share of the fusion)."""
    kind = space.get("type")
    if kind == "Discrete":
        values = int(space.get("n", 1))
    elif kind == "MultiDiscrete":
        values = int(sum(space.get("nvec", [])))
    else:
        shape = space.get("shape") if kind == "Box" else space.get("n")
        values = _elements([int(s) for s in (shape if isinstance(shape, list) else [shape or 1])])
    dims = [int(s) for s in space.get("shape", [])] if kind == "Box" else []
    modality = (declared or "").split(":")[0] or _infer(key, space)
    integer = kind == "Box" and str(space.get("dtype", "")).startswith(("int", "uint"))
    if modality == "ignore":
        return 0
    if modality == "image" and len(dims) == 3:
        # The CNN's flattened map holds at most 2 values per input value (the small
        # CNN on frames under 16 px), plus what rounding sizes up adds.
        inputs = 2 * values + 64 * (dims[0] + dims[1] + dims[2] + 1)
    elif modality == "text":
        inputs = values + (_span(space) if integer else values)
    elif modality == "symbolic_grid" and len(dims) == 3:
        inputs = 16 * values + 64 * (dims[0] + dims[1] + 1) + min(dims[0], dims[-1]) * _span(space)
    else:  # audio patch convs keep up to 16 values per input value on tiny inputs
        inputs = 16 * values + (_span(space) if integer else 0)
    return inputs * width + 64 * width * width


def _infer(key: str, space: Mapping[str, Any]) -> str:
    """The modality an undeclared key gets (``encoding.config.infer_modality``'s rules)."""
    from mbm_agent.encoding.config import DEFAULT_MODALITIES

    if key in DEFAULT_MODALITIES:
        return DEFAULT_MODALITIES[key]
    dims = space.get("shape", []) if space.get("type") == "Box" else []
    if space.get("dtype") == "uint8" and len(dims) == 3:
        return "image"
    return "vector"


def parameter_bound(spec: Mapping[str, Any]) -> int:
    """An upper bound on the parameters of the policy ``spec`` describes, computed cheaply.

    Valid for every encoder, fusion and algorithm of this package (a property test
    builds random policies and compares); when it is above :data:`MAX_PARAMETERS`
    the exact count is taken on the ``meta`` device.
    """
    encoder = spec.get("encoder", {})
    kwargs = spec.get("policy_kwargs", {})
    net_arch = kwargs.get("net_arch") or [64, 64]
    parts = list(net_arch.values()) if isinstance(net_arch, dict) else [net_arch]
    widths = [int(encoder.get(name, 256)) for name in _WIDTH_FIELDS]
    widths += [int(w) for part in parts for w in part]
    widths += [int(kwargs.get("lstm_hidden_size", 256)), _INNER_WIDTH]
    if spec.get("extractor") == "sb3":
        widths.append(_SB3_EXTRACTOR_WIDTH)
    width = max(widths)
    keys = spec["observation_space"]["spaces"]
    declared = spec.get("modalities", {})
    n_actions = int(spec.get("action_space", {}).get("n", 1) or 1)
    per_key = sum(_key_bound(k, sub, declared.get(k), width) for k, sub in keys.items())
    layers = sum(len(part) for part in parts) + 4 * int(kwargs.get("n_lstm_layers", 1)) + 16
    heads = (n_actions + 1) * width
    total = per_key + layers * 8 * width * width + heads
    # Twice: DQN keeps a target network, and actor and critic may not share the extractor.
    shared = spec.get("algo") not in ("dqn", "qrdqn") and kwargs.get(
        "share_features_extractor", True
    )
    return total if shared else 2 * total


def count_parameters_meta(build: Any) -> int:
    """Parameters of the module ``build()`` makes, counted on the ``meta`` device (no memory)."""
    import torch

    with torch.device("meta"):
        module = build()
    return int(sum(p.numel() for p in module.parameters()))
