"""The batched game core every environment is a view of.

A :class:`BatchedGame` holds the state of ``n`` worlds in numpy arrays and
steps them all with array code. The single Gymnasium env is a game with
``n = 1``; the vector env is the same class with ``n = num_envs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from numbers import Real
from typing import Any, ClassVar, TypeGuard

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.audio import AudioConfig
from envs.core.rng import WorldRandom
from envs.core.text import Vocabulary

Obs = dict[str, NDArray[Any]]


def check_int_arg(name: str, value: object, low: int, high: int | None = None) -> int:
    """Validate an integer constructor argument, naming it and its allowed range."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value}.")
    return int(value)


def is_real(value: object) -> TypeGuard[Real]:
    """A real number (numpy's included), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool | np.bool_)


def check_float_arg(name: str, value: object, low: float, high: float) -> float:
    """Validate a real-valued constructor argument, naming it and its allowed range."""
    allowed = f"a number in [{low:g}, {high:g}]"
    if not is_real(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__}).")
    if not low <= float(value) <= high:  # NaN fails too
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return float(value)


def frame_size_arg(value: int | tuple[int, int], minimum: int, why: str = "") -> tuple[int, int]:
    """Normalise ``frame_size`` (int or ``(H, W)``) and check it against ``minimum`` (``why`` explains it)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"frame_size must be an int or an (H, W) pair of ints, got {value!r}.")
    h, w = int(value[0]), int(value[1])
    if min(h, w) < minimum or max(h, w) > 1024:
        raise ValueError(
            f"frame_size must be between {minimum} and 1024 pixels per side{why}, got {(h, w)}."
        )
    return h, w


class BatchedGame(ABC):
    """``n`` worlds of one game, stepped together.

    Subclasses set the class attributes, build spaces in ``__init__`` and
    implement generation, transition, observation, instructions and the expert.
    Every random draw goes through ``self.rand`` (one stream per world) so a
    world's trajectory does not depend on what else is in the batch.
    """

    #: Observation keys this game emits, in order.
    modalities: ClassVar[tuple[str, ...]]
    #: Names of the discrete actions.
    action_names: ClassVar[tuple[str, ...]]
    #: Options ``reset`` accepts (none by default).
    reset_options: ClassVar[frozenset[str]] = frozenset()
    #: Success rate of a uniformly random choice among the candidates.
    chance_level: float

    def __init__(self, num_worlds: int, max_steps: int) -> None:
        self.num_worlds = check_int_arg("num_envs", num_worlds, 1)
        self.max_steps = check_int_arg("max_steps", max_steps, 1, 100_000)
        self.rand = WorldRandom(self.num_worlds)
        self.step_count = np.zeros(self.num_worlds, dtype=np.int64)
        self.success = np.zeros(self.num_worlds, dtype=bool)
        self.instruction = np.full(self.num_worlds, "", dtype=object)
        self.observation_space: spaces.Dict
        self.action_space: spaces.Discrete = spaces.Discrete(len(self.action_names))
        self.vocabulary: Vocabulary | None = None
        self.audio_cfg = AudioConfig()

    # -- lifecycle --------------------------------------------------------------
    def reset_worlds(self, idx: NDArray[np.intp], keys: NDArray[np.uint64]) -> None:
        """Start new episodes in worlds ``idx`` from per-world random keys."""
        self.rand.rekey(idx, keys)
        self.step_count[idx] = 0
        self.success[idx] = False
        self._generate(idx)

    def step(
        self, actions: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.bool_]]:
        """Advance every world by one action; returns reward, terminated, truncated."""
        self.step_count += 1
        reward, terminated = self._transition(actions)
        truncated = (self.step_count >= self.max_steps) & ~terminated
        return reward.astype(np.float32), terminated, truncated

    def success_reward(self, success: NDArray[np.bool_]) -> NDArray[np.float32]:
        """MiniGrid-style reward ``1 - 0.9 t / T`` where ``success`` is set, else 0."""
        return np.where(success, 1.0 - 0.9 * (self.step_count / self.max_steps), 0.0).astype(
            np.float32
        )

    # -- game-specific ---------------------------------------------------------
    @abstractmethod
    def _generate(self, idx: NDArray[np.intp]) -> None:
        """Lay out new worlds ``idx`` (state, instruction, static frame layer)."""

    @abstractmethod
    def _transition(
        self, actions: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Apply actions to all worlds; return reward and terminated, set ``self.success``."""

    @abstractmethod
    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Observations of worlds ``idx`` (all when None), freshly allocated."""

    @abstractmethod
    def expert_actions(self) -> NDArray[np.int64]:
        """One oracle action per world."""

    def frames(self, idx: NDArray[np.intp] | None = None) -> NDArray[np.uint8]:
        """RGB frames of worlds ``idx`` (what a person sees)."""
        return self.observe(idx)["image"]

    def check_options(self, options: dict[str, Any] | None) -> None:
        """Reject options this game does not know."""
        if options is None:
            return
        if not isinstance(options, dict):
            raise TypeError(f"reset options must be a dict or None, got {type(options).__name__}.")
        unknown = set(options) - self.reset_options
        if unknown:
            allowed = ", ".join(sorted(self.reset_options)) or "none"
            raise ValueError(
                f"Unknown reset option(s) {sorted(unknown)} for {type(self).__name__}; "
                f"allowed options: {allowed}."
            )

    def check_actions(self, actions: object) -> NDArray[np.int64]:
        """Validate a batch of actions: shape ``(n,)`` of ints in the action space."""
        n = self.num_worlds
        n_act = len(self.action_names)
        try:
            arr = np.asarray(actions)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"actions must be {self._allowed_actions()}, got {actions!r}."
            ) from exc
        if arr.shape == (n, 1):
            arr = arr[:, 0]
        if arr.shape != (n,):
            raise ValueError(
                f"actions must have shape ({n},) (one per env) of {self._allowed_actions()}, "
                f"got shape {arr.shape}."
            )
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
                arr = arr.astype(np.int64)
            else:
                raise ValueError(
                    f"actions must be {self._allowed_actions()}, got {arr.tolist()!r} "
                    f"(dtype {arr.dtype})."
                )
        if n and (arr.min() < 0 or arr.max() >= n_act):
            bad = arr[(arr < 0) | (arr >= n_act)][0]
            raise ValueError(
                f"Invalid action {bad.item()!r}: actions must be {self._allowed_actions()}."
            )
        return arr.astype(np.int64, copy=False)

    def _allowed_actions(self) -> str:
        """The valid actions, for error messages (built only when one is raised)."""
        names = ", ".join(f"{i}={a}" for i, a in enumerate(self.action_names))
        return f"integers in [0, {len(self.action_names) - 1}] ({names})"
