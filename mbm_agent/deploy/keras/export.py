"""SavedModel and TFLite files of the Keras twin, serving the raw observation dict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from mbm_agent.deploy.keras.policy import torch_to_keras
from mbm_agent.deploy.keras.runtime import SIGNATURE
from mbm_agent.deploy.network import STATE_OUTPUT, PolicyNetwork, output_names


def _as_model(net_or_model: PolicyNetwork | Any) -> Any:
    if isinstance(net_or_model, PolicyNetwork):
        return torch_to_keras(net_or_model)
    if isinstance(net_or_model, keras.Model):
        return net_or_model
    raise ValueError(
        f"Expected a PolicyNetwork or a keras.Model from build_keras_policy, got "
        f"{type(net_or_model).__name__}."
    )


def _require_tf_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"SavedModel/TFLite export needs the TensorFlow Keras backend, this process uses "
            f"{keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras."
        )


def _serving_module(model: Any) -> tuple[Any, Any]:
    """A ``tf.Module`` holding the model and its serving function on the raw input dict."""
    signature = {
        inp.name: tf.TensorSpec((None, *inp.shape[1:]), tf.as_dtype(inp.dtype), name=inp.name)
        for inp in model.inputs
    }
    module = tf.Module()
    # Track the underlying tf.Variables themselves (as keras.export does): tracked through
    # the Keras model object they are saved in a form the TFLite converter cannot freeze.
    module.variables_ = [v.value for v in model.variables]

    names = output_names(int(any(layer.name == STATE_OUTPUT for layer in model.layers)))

    @tf.function(input_signature=[signature])
    def serve(obs: dict[str, Any]) -> dict[str, Any]:
        out = model(obs, training=False)
        return {k: out[k] for k in names}

    module.serve = serve
    return module, serve


def export_savedmodel(net_or_model: PolicyNetwork | Any, path: str | os.PathLike[str]) -> Path:
    """Write a TensorFlow SavedModel of the policy.

    The ``serving_default`` signature takes one tensor per observation key
    (named by the key, raw dtype, dynamic batch) and returns ``action`` (B,)
    int64, ``logits`` (B, A) float32 and ``value`` (B,) float32; a policy with
    memory also takes ``recurrent_state`` and returns ``next_recurrent_state``. Load it with
    :func:`load_savedmodel`, ``tf.saved_model.load`` or TF Serving.

    Args:
        net_or_model: A PolicyNetwork (converted with :func:`torch_to_keras`) or a
            Keras model from :func:`build_keras_policy` (e.g. trained with ``fit``).
        path: Output directory (created; files of an earlier export there are overwritten).

    Returns:
        The directory written.
    """
    _require_tf_backend()
    model = _as_model(net_or_model)
    module, serve = _serving_module(model)
    path = Path(path)
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})
    return path


def export_tflite(net_or_model: PolicyNetwork | Any, path: str | os.PathLike[str]) -> Path:
    """Write a float32 TFLite flatbuffer of the policy (builtin ops only).

    The ``serving_default`` signature has the same named inputs and outputs as
    :func:`export_savedmodel`. The batch dimension is dynamic: the runner
    resizes the input tensors to each call's batch (:func:`load_tflite` does).

    Args:
        net_or_model: A PolicyNetwork or a Keras model from :func:`build_keras_policy`.
        path: Output file (``.tflite``).

    Returns:
        The file written.

    Raises:
        RuntimeError: If the converter needs ops outside the TFLite builtins.
    """
    _require_tf_backend()
    module, serve = _serving_module(_as_model(net_or_model))
    # The converter names the signature of a single concrete function serving_default,
    # with the input and output names of the SavedModel one.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises its own error types
        raise RuntimeError(f"TFLite conversion with builtin ops failed: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path
