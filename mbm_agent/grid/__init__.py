"""The reference grid: train and evaluate a grid of runs, summarise them with intervals.

``mbm-agent bench`` runs, for each game, each fusion mode over several seeds,
plus ablations and a baseline, and writes under ``runs/reference/`` (default):

- ``runs/<game>-<variant>-s<seed>/``: ordinary run folders (``mbm-agent eval``,
  ``compare``, ``load_agent`` and exports take them);
- ``summary.md`` / ``summary.json``: per game and variant the IQM over seeds of
  held-out success and return with 95% stratified-bootstrap intervals, the
  steps to reach 90% periodic-evaluation success, wall time, and each required
  modality masked at evaluation next to the chance level the game implies;
- ``curves-<game>.png``: held-out success against environment steps, mean over seeds.

Variants: a fusion mode (``concat``, ``film``, ``attention``, ``gated``);
``mask-<modality>``: the game's recipe without that key (the encoder ignores
it), so it is masked at training and at evaluation: its default fusion trained
by PPO, or on a game with a BC recipe, that recipe (clone and fine-tune);
``sb3-default``: SB3's own ``MultiInputPolicy`` (``CombinedExtractor``) on the
same observations and budget. Runs that finished (``eval.json`` present) are
skipped, runs that stopped are resumed from their last checkpoint, so the
command picks up where it stopped. ``--quick`` shrinks every budget to a smoke
test that CI runs.

Modules: :mod:`~mbm_agent.grid.spec` (games, variants, cells),
:mod:`~mbm_agent.grid.cell` (one cell: train or clone, evaluate, resume),
:mod:`~mbm_agent.grid.run` (the whole grid, sequential or on Ray),
:mod:`~mbm_agent.grid.ray` (the Ray Tune backend) and
:mod:`~mbm_agent.grid.summary` (``summary.md``, curves, published agents).
"""
