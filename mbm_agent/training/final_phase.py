"""A last stretch of training with other hyperparameters: :class:`FinalPhase`.

Why. The discount ``gamma`` decides what a policy trades for speed. With 0.99, a
success 100 steps later is worth a third of one now, so once a policy finds the goal
in most worlds, a quick search that misses it now and then is worth nearly as much as
a thorough one: BabyAI's GoToObjMaze plateaued at 92-96% held-out success from ~5M
steps on (seed 0 to 10M), its failures searches that never had the object in view.
Trained from the start with 0.999, the value is harder to learn and the level comes
later (81.0% greedy at 3M steps against 84.5-88.5%), so the longer horizon belongs at
the end. Measured there (README, "Learning from scratch"): from seed 0's 9M policy,
1M more steps with 0.999 gave 97.0% greedy / 99.5% sampled (96.0 / 94.5 before); on
the three 6M runs, a last 1M with 0.999 moved them within the seeds' spread (IQM 95.2
/ 97.7 against 94.2 / 97.8), so no shipped config turns it on yet.

A config section ``final_phase: {steps: N, gamma: G}`` trains the run's last ``N``
env steps with discount ``G``; ``ent_coef`` and ``learning_rate`` (a constant) may be
set for the phase too. From the rollout that holds step ``max(0, steps - N)`` on (all
of a run no longer than ``N``), each rollout and the update on it use the phase's
values (SB3's ``model.gamma`` and its rollout or replay buffer's, ``model.ent_coef``,
``model.lr_schedule``); the run's own come back when training ends. The switch is made
between rollouts from the step count alone, so a resumed run uses the values of the
step it resumes at; a resume with a larger ``steps`` moves the phase to the new end
(as RL Zoo's ``lin_`` schedules follow the new total).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mbm_agent.encoding.values import is_finite_number

#: The hyperparameters a final phase may set (their ranges are those of ``algo_kwargs``:
#: ``TrainConfig.validate`` checks them with ``check_algo_kwargs``).
SETTINGS: tuple[str, ...] = ("gamma", "ent_coef", "learning_rate")


@dataclass(frozen=True)
class FinalPhase:
    """The run's last ``steps`` env steps train with these hyperparameters (None: the run's own)."""

    steps: int
    gamma: float | None = None
    ent_coef: float | None = None
    learning_rate: float | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> FinalPhase | None:
        """Parse a ``final_phase`` section (``{}`` or None: no final phase).

        Raises:
            ValueError: Naming the key and the values it takes.
        """
        example = "final_phase: {steps: 1000000, gamma: 0.999}"
        if section is None or (isinstance(section, Mapping) and not section):
            return None
        if not isinstance(section, Mapping):
            raise ValueError(f"final_phase must be a mapping, e.g. {example}; got {section!r}.")
        unknown = sorted(set(section) - {"steps", *SETTINGS})
        if unknown:
            raise ValueError(
                f"final_phase has unknown keys {unknown}; it takes steps (the run's last env "
                f"steps) and any of {list(SETTINGS)}, e.g. {example}."
            )
        steps = section.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"final_phase.steps must be an integer >= 1 (the run's last env steps), got "
                f"{steps!r}, e.g. {example}."
            )
        values: dict[str, float] = {}
        for name in SETTINGS:
            if name not in section:
                continue
            value = section[name]
            if not is_finite_number(value):
                raise ValueError(
                    f"final_phase.{name} must be a number, got {value!r}, e.g. {example}."
                )
            values[name] = float(value)
        if not values:
            raise ValueError(
                f"final_phase sets none of {list(SETTINGS)}; give at least one, e.g. {example} "
                "(null for no final phase)."
            )
        return cls(steps=int(steps), **values)

    def start(self, total_steps: int) -> int:
        """The env step from which a run of ``total_steps`` trains with the phase's values."""
        return max(0, int(total_steps) - self.steps)

    def active(self, step: int, total_steps: int, rollout_steps: int = 1) -> bool:
        """Whether the rollout of ``rollout_steps`` env steps from ``step`` belongs to the phase.

        The rollout that holds the phase's first step belongs to it, so the phase covers
        at least its ``steps`` (rounded up to whole rollouts), however short.
        """
        return step + rollout_steps > self.start(total_steps)

    def settings(self) -> dict[str, float]:
        """The hyperparameters the phase sets, by name."""
        values = {name: getattr(self, name) for name in SETTINGS}
        return {name: value for name, value in values.items() if value is not None}
