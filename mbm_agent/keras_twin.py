"""Alias of the Keras twin; the code lives in :mod:`mbm_agent.deploy.keras` (needs the ``tf`` extra)."""

from __future__ import annotations

from mbm_agent.deploy.keras import (
    OUTPUT_NAMES,
    OUTPUTS,
    SIGNATURE,
    KerasMultimodalEncoder,
    PolicyRunner,
    build_keras_policy,
    export_savedmodel,
    export_tflite,
    keras_to_torch,
    load_savedmodel,
    load_tflite,
    torch_to_keras,
)

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
