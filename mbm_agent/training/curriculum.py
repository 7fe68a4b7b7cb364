"""An automatic curriculum over a game's difficulty arguments.

A game (or a user's config) declares easier versions of itself as *levels*:
overrides of its constructor arguments, easiest first, e.g. smaller rooms::

    curriculum:
      levels: [{grid_size: 5}, {grid_size: 6}, {grid_size: 7}]
      promote_at: 0.8
      window: 100

Training starts at the first level and moves to the next one when the
training success rate over the last ``window`` episodes of the current level
reaches ``promote_at``; after the last declared level comes the run's own
``env_kwargs`` (the game it is evaluated on), where it stays. Evaluation is
always on the run's own game.

Why it helps: in a small room the episodes are short, so the agent meets many
more instructions, objects and endings per step, and what it learns there
(which words name which things) carries over to the larger rooms, where it
would otherwise be learnt from far fewer endings. On GoToObject, PPO with
reward prediction reached 95% training success after ~300k steps with rooms
growing 5 -> 8, and after ~700k steps in the 8x8 room throughout.

Levels change only the env's arguments, never its observation or action space
(the trainer checks), so one policy serves every level. The current level is
saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mbm_agent.encoding.values import is_finite_number

CURRICULUM_FIELDS = ("levels", "promote_at", "window")


@dataclass
class Curriculum:
    """Levels of a run and where training stands among them.

    Attributes:
        levels: Per level, the env arguments it overrides (easiest first), the
            run's own arguments last (an empty override).
        promote_at: Training success rate over ``window`` episodes that moves on.
        window: Episodes of the current level the rate is measured over.
        level: Index of the current level.
    """

    levels: list[dict[str, Any]]
    promote_at: float = 0.8
    window: int = 100
    level: int = 0
    _recent: collections.deque[float] = field(default_factory=collections.deque, repr=False)

    def __post_init__(self) -> None:
        self._recent = collections.deque(maxlen=self.window)

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> Curriculum | None:
        """The curriculum a config's ``curriculum`` section declares (None when empty).

        Raises:
            ValueError: A malformed section; the message names the field and the fix
                (:class:`~mbm_agent.training.config.TrainConfig` raises it as a ``ConfigError``).
        """
        if not data:
            return None
        if not isinstance(data, Mapping):
            raise ValueError(
                f"curriculum must be a mapping such as {{levels: [{{grid_size: 5}}], "
                f"promote_at: 0.8}}, got {data!r}."
            )
        unknown = [k for k in data if k not in CURRICULUM_FIELDS]
        if unknown:
            raise ValueError(
                f"Unknown curriculum field(s) {unknown}; known: {list(CURRICULUM_FIELDS)}."
            )
        levels = data.get("levels")
        if not isinstance(levels, Sequence) or isinstance(levels, str) or not levels:
            raise ValueError(
                "curriculum.levels must be a non-empty list of env argument overrides, easiest "
                f"first, e.g. [{{grid_size: 5}}, {{grid_size: 6}}]; got {levels!r}."
            )
        for i, level in enumerate(levels):
            if not isinstance(level, Mapping) or not level:
                raise ValueError(
                    f"curriculum.levels[{i}] must be a non-empty mapping of env arguments, "
                    f"got {level!r}."
                )
            bad = [k for k in level if not isinstance(k, str)]
            if bad:
                raise ValueError(f"curriculum.levels[{i}] has non-string keys {bad}.")
        promote_at = data.get("promote_at", 0.8)
        if not is_finite_number(promote_at) or not 0.0 < promote_at <= 1.0:
            raise ValueError(
                f"curriculum.promote_at must be a success rate in (0, 1], got {promote_at!r}."
            )
        window = data.get("window", 100)
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 100_000:
            raise ValueError(
                f"curriculum.window must be an integer number of episodes in [1, 100000], "
                f"got {window!r}."
            )
        return cls([dict(level) for level in levels] + [{}], float(promote_at), window)

    @property
    def finished(self) -> bool:
        """Whether training has reached the run's own game (the last level)."""
        return self.level >= len(self.levels) - 1

    def env_kwargs(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The env arguments of the current level: the run's, with the level's overrides."""
        return {**base, **self.levels[self.level]}

    def record(self, successes: Sequence[bool]) -> bool:
        """Count finished training episodes; return True when the level should move on.

        Args:
            successes: Whether each episode that just ended succeeded.
        """
        if self.finished:
            return False
        self._recent.extend(float(s) for s in successes)
        return (
            len(self._recent) >= self.window
            and sum(self._recent) / len(self._recent) >= self.promote_at
        )

    def promote(self) -> None:
        """Move to the next level (and forget the episodes of this one)."""
        if not self.finished:
            self.level += 1
        self._recent.clear()

    def restore(self, level: int) -> None:
        """Resume at ``level`` (from a checkpoint); out-of-range values are clamped."""
        self.level = max(0, min(int(level), len(self.levels) - 1))
        self._recent.clear()

    def describe(self) -> str:
        """``"level 2/4 (grid_size=7)"`` for logs."""
        override = self.levels[self.level]
        what = ", ".join(f"{k}={v}" for k, v in override.items()) or "the run's own game"
        return f"level {self.level + 1}/{len(self.levels)} ({what})"
