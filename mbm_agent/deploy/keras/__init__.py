"""The Keras twin of :class:`~mbm_agent.deploy.network.PolicyNetwork`: same function, TensorFlow graph.

Every torch encoder and fusion mode has a Keras 3 layer here computing the same
numbers from the same raw observations (uint8 frames, integer token ids, float
spectrograms): casts, ``/255`` and bounds scaling, one-hot encodings and channel
order all happen inside, as in torch. The layers are ordinary trainable Keras
layers, so the twin also serves behaviour cloning with ``model.fit``.

- :class:`KerasMultimodalEncoder`: dict of raw inputs -> ``(B, features_dim)``
  (:mod:`~mbm_agent.deploy.keras.layers`, weights tied by
  :mod:`~mbm_agent.deploy.keras.porting`).
- :func:`build_keras_policy`: a functional ``keras.Model`` with one named input
  per observation key and outputs ``{"action", "logits", "value"}``, built from a
  :class:`PolicyNetwork` (architecture only) or from a space and settings.
- :func:`torch_to_keras` / :func:`keras_to_torch`: weights across, both ways
  (:mod:`~mbm_agent.deploy.keras.policy`).
- :func:`export_savedmodel` / :func:`export_tflite`: deployable files with a
  serving signature on the raw observation dict (dynamic batch)
  (:mod:`~mbm_agent.deploy.keras.export`), and :func:`load_savedmodel` /
  :func:`load_tflite` to run them on numpy (:mod:`~mbm_agent.deploy.keras.runtime`).

Not mirrored: modality masks and modality dropout (the twin always sees every
modality; the torch ``missing`` embeddings are neither used nor copied).

Example::

    net = PolicyNetwork.from_agent(mbm_agent.load_agent("runs/my-run"))
    export_tflite(net, "policy.tflite")
    run = load_tflite("policy.tflite")
    out = run(obs)  # {"action": (B,) int64, "logits": (B, A), "value": (B,)}
"""

from __future__ import annotations

try:  # first: a missing TensorFlow is named here, before any module of the package needs it
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "mbm_agent.deploy.keras needs TensorFlow: pip install 'mbm-agent[tf]'"
    ) from _exc

from mbm_agent.deploy.keras.export import export_savedmodel, export_tflite
from mbm_agent.deploy.keras.layers import KerasMultimodalEncoder
from mbm_agent.deploy.keras.policy import build_keras_policy, keras_to_torch, torch_to_keras
from mbm_agent.deploy.keras.runtime import SIGNATURE, PolicyRunner, load_savedmodel, load_tflite
from mbm_agent.deploy.network import OUTPUT_NAMES

OUTPUTS = OUTPUT_NAMES
"""The policy model's output names (:data:`mbm_agent.deploy.network.OUTPUT_NAMES`; kept for
imports of the earlier name)."""

__all__ = [
    "OUTPUTS",
    "OUTPUT_NAMES",
    "SIGNATURE",
    "KerasMultimodalEncoder",
    "PolicyRunner",
    "build_keras_policy",
    "export_savedmodel",
    "export_tflite",
    "keras_to_torch",
    "load_savedmodel",
    "load_tflite",
    "torch_to_keras",
]
