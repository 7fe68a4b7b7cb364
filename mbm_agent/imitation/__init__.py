"""Imitation: expert demonstrations and behaviour cloning.

- :mod:`~mbm_agent.imitation.demos`: record, save and load expert demonstrations.
- :mod:`~mbm_agent.imitation.bc`: fit a policy to them; its run folders train,
  evaluate and export like any other.
"""
