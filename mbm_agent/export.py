"""Alias of the export API; the code lives in :mod:`mbm_agent.deploy.export` and :mod:`mbm_agent.deploy.runtime`."""

from __future__ import annotations

from mbm_agent.deploy.export import (
    ONNX_EXPORTERS,
    VERIFY_TOLERANCE,
    ExportError,
    export_policy,
    input_specs,
)
from mbm_agent.deploy.runtime import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    FORMATS,
    MODEL_FILES,
    OUTPUT_NAMES,
    ExportedPolicy,
    Runner,
    load_exported,
)
from mbm_agent.encoding.spec import InputSpec

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FORMATS",
    "MODEL_FILES",
    "ONNX_EXPORTERS",
    "OUTPUT_NAMES",
    "VERIFY_TOLERANCE",
    "ExportError",
    "ExportedPolicy",
    "InputSpec",
    "Runner",
    "export_policy",
    "input_specs",
    "load_exported",
]
