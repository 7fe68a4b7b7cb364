"""Training: configuration, env factories, saved policies, checkpoints and the trainer.

- :mod:`~mbm_agent.training.config`: :class:`TrainConfig`, its YAML defaults
  (``mbm_agent/configs/``), precedence and validation.
- :mod:`~mbm_agent.training.storage`: atomic writes, safetensors, spaces as JSON.
- :mod:`~mbm_agent.training.agent`: policy folders (``save_policy``, ``load_agent``)
  and :class:`Agent`.
- :mod:`~mbm_agent.training.adapter`: :class:`ObservationAdapter`, any env's raw
  observations (plain Box, strings, waveforms) converted into our contract at the
  env's edge, saved with the model.
- :mod:`~mbm_agent.training.wrappers`, :mod:`~mbm_agent.training.envs`: envs ready
  for the encoder (MiniGrid / BabyAI and any ``module:EnvId`` too) and the training
  and evaluation vector envs (``dummy`` or ``async`` worker processes).
- :mod:`~mbm_agent.training.inspection`: what ``mbm-agent inspect`` prints.
- :mod:`~mbm_agent.training.threads`: torch's thread count for a run.
- :mod:`~mbm_agent.training.checkpoints`, :mod:`~mbm_agent.training.callback`,
  :mod:`~mbm_agent.training.trainer`: resumable checkpoints, the SB3 callback and
  :func:`~mbm_agent.training.trainer.train`, which writes a run folder.
- :mod:`~mbm_agent.training.demo`: ``mbm-agent demo``.

The package imports nothing itself, so importing one module (e.g.
:mod:`mbm_agent.evaluation` importing :mod:`~mbm_agent.training.envs`) does not
load the trainer.
"""
