"""Training: configuration, env factories, saved policies, checkpoints and the trainer.

- :mod:`~mbm_agent.training.config`: :class:`TrainConfig`, its YAML defaults
  (``mbm_agent/configs/``), precedence and validation.
- :mod:`~mbm_agent.training.storage`: atomic writes, safetensors, spaces as JSON.
- :mod:`~mbm_agent.training.agent`: policy folders (``save_policy``, ``load_agent``)
  and :class:`Agent`.
- :mod:`~mbm_agent.training.wrappers`, :mod:`~mbm_agent.training.envs`: envs ready
  for the encoder (MiniGrid / BabyAI too) and the training and evaluation vector envs.
- :mod:`~mbm_agent.training.checkpoints`, :mod:`~mbm_agent.training.callback`,
  :mod:`~mbm_agent.training.trainer`: resumable checkpoints, the SB3 callback and
  :func:`~mbm_agent.training.trainer.train`, which writes a run folder.
- :mod:`~mbm_agent.training.demo`: ``mbm-agent demo``.

The package imports nothing itself, so importing one module (e.g.
:mod:`mbm_agent.evaluation` importing :mod:`~mbm_agent.training.envs`) does not
load the trainer.
"""
