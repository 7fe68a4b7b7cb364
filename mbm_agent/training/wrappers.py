"""Gymnasium wrappers that put third-party observations into our contract.

- :class:`AdaptObservation` applies an
  :class:`~mbm_agent.training.adapter.ObservationAdapter` to one env: a plain Box
  becomes a Dict, raw strings become token ids, raw waveforms become log-mel
  features over a rolling window (reset with the env). ``mbm-agent train`` wraps
  every third-party env with it.
- :class:`TokenizeMission` turns a raw-string mission (MiniGrid / BabyAI
  ``mission``, any ``spaces.Text``) into a ``text`` Box of token ids.
- :class:`RenameObservationKeys` renames Dict keys (e.g. MiniGrid's ``image``
  to ``symbolic_grid``, so the encoder's key-name defaults apply).
- :func:`make_minigrid_env` chains them for a MiniGrid / BabyAI env id (and makes
  MiniGrid compute the agent's view faster: :mod:`mbm_agent.training.minigrid_obs`).
- :func:`minigrid_grid_keys` finds MiniGrid's symbolic grid among an env's keys:
  a ``(7, 7, 3)`` uint8 ``image`` that holds (object, colour, state) ids, not
  pixels, and must be encoded as a ``symbolic_grid`` (as an RGB picture an agent
  learns far less: 55% vs 99% success on BabyAI-GoToObj). :class:`TokenizeMission`
  warns when it is left under ``image``, and ``mbm-agent train`` declares it.

The vocabulary is exposed as ``wrapper.vocabulary``; save it next to the model
(``wrapper.vocabulary.save("vocab.json")``) so the same ids are used at
evaluation and export.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.text import Vocabulary, tokenize
from mbm_agent.encoding.config import is_string_space
from mbm_agent.training.adapter import AdapterState, ObservationAdapter
from mbm_agent.training.minigrid_obs import use_fast_observations

BABYAI_WORDS: tuple[str, ...] = (
    # BabyAI grammar (minigrid.envs.babyai.core.verifier): actions, connectors, locations.
    "go", "to", "pick", "up", "open", "put", "next", "then", "after", "you", "and",
    "the", "a", "in", "front", "of", "behind", "on", "your", "left", "right",
    "red", "green", "blue", "purple", "yellow", "grey",
    "door", "key", "ball", "box", "object",
    # Missions of the other MiniGrid environments.
    "get", "goal", "square", "avoid", "lava", "find", "opening", "use", "reach",
    "traverse", "rooms", "matching", "at", "end", "hallway", "near", "fetch", "must",
)  # fmt: skip
"""Every word of BabyAI's instruction grammar plus the other MiniGrid missions."""

DEFAULT_MAX_LEN = 32
"""Instruction length of the built-in vocabulary (BabyAI's longest composite missions,
BossLevel, can exceed it and are cut with a warning; pass ``max_len`` to keep them)."""


class AdaptObservation(gym.ObservationWrapper[dict[str, Any], Any, Any]):
    """Convert an env's observations with an :class:`ObservationAdapter`.

    Args:
        env: Any env with a Dict or Box observation space.
        adapter: The adapter to apply (e.g. a saved model's); by default one is
            built for the env's space from ``modalities``.
        modalities: Per-key declarations (``TrainConfig.modalities``) when no
            adapter is given; the env's ``metadata["audio_sample_rate"]`` supplies a
            waveform's sample rate when it is not declared.

    Attributes:
        adapter: The adapter, to save with the model (``adapter.to_dict()``).
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        adapter: ObservationAdapter | None = None,
        *,
        modalities: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(env)
        if adapter is None:
            adapter = ObservationAdapter.for_space(
                env.observation_space, modalities, metadata=env.metadata
            )
        elif modalities is not None:
            raise ValueError("Pass an adapter or modalities to build one, not both.")
        self.adapter = adapter
        self.observation_space = adapter.observation_space(env.observation_space)
        self._state: AdapterState = adapter.new_state(1)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the env and silence the rolling waveform windows."""
        self._state.reset()
        return super().reset(seed=seed, options=options)

    def observation(self, observation: Any) -> dict[str, Any]:
        """The converted observation."""
        return self.adapter.adapt(observation, self._state)


def is_minigrid_env(env: gym.Env[Any, Any]) -> bool:
    """Whether ``env`` (under any wrappers) is a MiniGrid / BabyAI env."""
    return any(
        cls.__module__.split(".")[0] == "minigrid" and cls.__name__ == "MiniGridEnv"
        for cls in type(env.unwrapped).__mro__
    )


def minigrid_grid_keys(env: gym.Env[Any, Any]) -> list[str]:
    """Keys of ``env``'s observation that hold MiniGrid's symbolic grid (empty for other envs).

    MiniGrid's ``image`` is a uint8 ``(view, view, 3)`` grid of (object, colour,
    state) ids (``(width, height, 3)`` under ``FullyObsWrapper``), whatever its
    space's bounds say (0-255); its RGB wrappers give frames ``tile_size`` times
    larger. A key of a MiniGrid env whose uint8 3-channel space has the grid's size
    is the grid.
    """
    space = env.observation_space
    if not isinstance(space, spaces.Dict) or not is_minigrid_env(env):
        return []
    base = env.unwrapped
    sizes = {
        (int(getattr(base, "agent_view_size", 7)),) * 2,
        (int(getattr(base, "width", 0)), int(getattr(base, "height", 0))),
    }
    return [
        key
        for key, sub in space.spaces.items()
        if isinstance(sub, spaces.Box)
        and sub.dtype == np.uint8
        and len(sub.shape) == 3
        and sub.shape[2] == 3
        and tuple(sub.shape[:2]) in sizes
    ]


class TokenizeMission(gym.ObservationWrapper):
    """Replace a string mission key by a ``text`` Box of token ids; other keys are untouched.

    Unknown words map to ``UNK_ID`` (1); shorter missions are padded with 0.

    Args:
        env: An env with a Dict observation space holding a string space
            (``spaces.Text`` or MiniGrid's ``MissionSpace``) under ``mission_key``.
        vocabulary: The vocabulary to use (e.g. loaded with a trained model).
        words: Build a vocabulary from these words instead (default: BABYAI_WORDS).
        max_len: Token length when building the vocabulary (default: DEFAULT_MAX_LEN).
        mission_key: Key of the string observation.
        text_key: Key of the token-id observation that replaces it.
        warn_grid: Warn when the env is MiniGrid's and its symbolic grid stays under
            ``image``, where the encoder would take it for an RGB picture
            (:func:`minigrid_grid_keys`).

    Attributes:
        vocabulary: The vocabulary, to save alongside the model.
    """

    def __init__(
        self,
        env: gym.Env,
        vocabulary: Vocabulary | None = None,
        *,
        words: Iterable[str] | None = None,
        max_len: int | None = None,
        mission_key: str = "mission",
        text_key: str = "text",
        warn_grid: bool = True,
    ) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or mission_key not in space.spaces:
            keys = list(space.spaces) if isinstance(space, spaces.Dict) else None
            raise ValueError(
                f"TokenizeMission needs a Dict observation space with a {mission_key!r} key; "
                f"got {space}" + (f" (keys {keys}); pass mission_key=..." if keys else ".")
            )
        if not is_string_space(space[mission_key]):
            raise ValueError(
                f"observation_space[{mission_key!r}] is {space[mission_key]}, not a string "
                "space (spaces.Text or MiniGrid's MissionSpace); it needs no tokenising."
            )
        if text_key != mission_key and text_key in space.spaces:
            raise ValueError(
                f"The observation space already has a {text_key!r} key; pass another text_key."
            )
        if vocabulary is not None and (words is not None or max_len is not None):
            raise ValueError("Pass either a vocabulary or words/max_len to build one, not both.")
        if vocabulary is None:
            vocabulary = Vocabulary(
                BABYAI_WORDS if words is None else words,
                DEFAULT_MAX_LEN if max_len is None else max_len,
            )
        grids = [k for k in minigrid_grid_keys(env) if k == "image"] if warn_grid else []
        if grids:
            shape = space["image"].shape
            warnings.warn(
                f"{type(env.unwrapped).__name__}'s 'image' {shape} is MiniGrid's symbolic grid "
                "(object, colour, state ids), not a picture, but under the key 'image' the "
                "encoder takes it for an RGB frame (BabyAI-GoToObj: 55% success instead of 99%). "
                "Declare it: MultimodalEncoder(..., modalities={'image': 'symbolic_grid'}) "
                "(config: `modalities: {image: symbolic_grid}`), or make the env with "
                "mbm_agent.make_minigrid_env, which renames it 'symbolic_grid'.",
                stacklevel=2,
            )
        self.vocabulary = vocabulary
        self.mission_key = mission_key
        self.text_key = text_key
        self._warned_long = False
        # A mission stays the same for a whole episode: encode it once, copy after.
        self._last: tuple[str, NDArray[np.int64]] | None = None
        others = {k: v for k, v in space.spaces.items() if k != mission_key}
        others[text_key] = spaces.Box(0, len(vocabulary) - 1, (vocabulary.max_len,), dtype=np.int64)
        self.observation_space = spaces.Dict(others)

    def observation(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        """Encode the mission string into token ids."""
        out = {k: v for k, v in observation.items() if k != self.mission_key}
        mission = observation[self.mission_key]
        if self._last is not None and self._last[0] == mission:
            out[self.text_key] = self._last[1].copy()
            return out
        if not self._warned_long and len(tokenize(mission)) > self.vocabulary.max_len:
            self._warned_long = True
            warnings.warn(
                f"Mission {mission!r} is longer than max_len={self.vocabulary.max_len} words "
                "and is cut (warned once). Pass a larger max_len to TokenizeMission.",
                stacklevel=2,
            )
        ids = self.vocabulary.encode(mission, warn=False)
        self._last = (mission, ids)
        out[self.text_key] = ids.copy()
        return out


class RenameObservationKeys(gym.ObservationWrapper):
    """Rename keys of a Dict observation, leaving values and other keys unchanged.

    Args:
        env: An env with a Dict observation space.
        mapping: Old key to new key.
    """

    def __init__(self, env: gym.Env, mapping: Mapping[str, str]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict):
            raise ValueError(f"RenameObservationKeys needs a Dict observation space, got {space}.")
        missing = [k for k in mapping if k not in space.spaces]
        if missing:
            raise ValueError(
                f"Cannot rename {missing}: not in the observation space (keys {list(space.spaces)})."
            )
        self.mapping = dict(mapping)
        renamed = [self.mapping.get(k, k) for k in space.spaces]
        if len(set(renamed)) != len(renamed):
            raise ValueError(f"Renaming {self.mapping} would give duplicate keys {renamed}.")
        self.observation_space = spaces.Dict(
            {self.mapping.get(k, k): v for k, v in space.spaces.items()}
        )

    def observation(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        """Rename the keys."""
        return {self.mapping.get(k, k): v for k, v in observation.items()}


class QuietLevelGeneration(gym.Wrapper[Any, Any, Any, Any]):
    """Swallow what a BabyAI level prints while it generates a level in ``reset``.

    BabyAI's level generator prints ``Sampling rejected: ...`` each time it redraws a
    level (thousands of lines per training run, over the progress bar). Only the
    standard output of ``reset`` is captured; warnings and errors still show.
    """

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the wrapped env with its standard output captured and dropped."""
        with contextlib.redirect_stdout(io.StringIO()):
            return self.env.reset(**kwargs)


def make_minigrid_env(
    env_id: str,
    vocabulary: Vocabulary | None = None,
    *,
    max_len: int | None = None,
    grid_key: str = "symbolic_grid",
    keep_direction: bool = True,
    fast_observations: bool = True,
    **make_kwargs: Any,
) -> gym.Env:
    """Make a MiniGrid / BabyAI env whose observations the encoder takes without declarations.

    The 7x7x3 (object, colour, state) grid becomes ``grid_key`` (``symbolic_grid``
    by default), the mission becomes ``text`` token ids, and ``direction``
    (Discrete(4)) is kept as a vector key unless ``keep_direction`` is False.
    BabyAI's level-generation messages are silenced (:class:`QuietLevelGeneration`).
    The agent's view is computed by :func:`~mbm_agent.training.minigrid_obs.fast_gen_obs`
    (the same observation as MiniGrid's, cell for cell, in about half the time)
    unless the env makes its view its own way or ``fast_observations`` is False.

    Args:
        env_id: A registered MiniGrid id, e.g. ``"BabyAI-GoToObj-v0"``.
        vocabulary: Vocabulary for the mission (default: built from BABYAI_WORDS).
        max_len: Token length when the vocabulary is built here.
        grid_key: New name of the ``image`` key. With ``"image"`` the key keeps its
            name and must be declared: ``modalities={"image": "symbolic_grid"}``.
        keep_direction: Keep the ``direction`` key.
        fast_observations: Compute the view with
            :func:`~mbm_agent.training.minigrid_obs.use_fast_observations`.
        **make_kwargs: Passed to ``gymnasium.make``.

    Returns:
        The wrapped env (its ``TokenizeMission`` layer holds ``vocabulary``).

    Raises:
        ImportError: If minigrid is not installed.
    """
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid / BabyAI ids)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MiniGrid environments need the 'minigrid' package: pip install 'mbm-agent[minigrid]'."
        ) from exc
    env: gym.Env[Any, Any] = QuietLevelGeneration(gym.make(env_id, **make_kwargs))
    if fast_observations:
        use_fast_observations(env)
    # The grid is renamed just below (or, kept as "image", declared by the caller).
    env = TokenizeMission(env, vocabulary, max_len=max_len, warn_grid=False)
    if grid_key != "image":
        env = RenameObservationKeys(env, {"image": grid_key})
    if not keep_direction:
        env = gym.wrappers.FilterObservation(
            env, [k for k in cast(spaces.Dict, env.observation_space).spaces if k != "direction"]
        )
    return env
