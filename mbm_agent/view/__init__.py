"""``mbm-agent view`` (a local web app) and ``mbm-agent report --html`` (one self-contained file).

- :mod:`mbm_agent.view.session`: a run's agent on its env, stepped one action at a
  time, with the numbers the page shows (probabilities, value, per-sense and
  per-word contributions, fusion weights).
- :mod:`mbm_agent.view.sound`: the waveform behind the audio features, WAV encoding.
- :mod:`mbm_agent.view.app`: the Starlette app and the server (``serve``).
- :mod:`mbm_agent.view.report`: the HTML report of a run.

The web stack (Starlette, uvicorn, websockets) is the ``view`` extra:
``pip install 'mbm-agent[view]'``.
"""
