"""Deployment: a trained policy without SB3, its exports and the runtimes that act with them.

- :mod:`~mbm_agent.deploy.network`: :class:`PolicyNetwork`, the policy as one plain
  torch module on raw observations.
- :mod:`~mbm_agent.deploy.export`: :func:`export_policy` to ONNX, TorchScript,
  SavedModel or TFLite, each export verified against the torch policy.
- :mod:`~mbm_agent.deploy.runtime`: :func:`load_exported` and :class:`ExportedPolicy`.
- :mod:`~mbm_agent.deploy.keras`: the Keras twin of the policy network (the ``tf`` extra).

The package imports nothing itself: ONNX, TensorFlow and friends load only when used.
"""
