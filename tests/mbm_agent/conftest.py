"""Tiny synthetic Dict spaces and env for the mbm_agent tests (fast on 2 CPU cores)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.logger import Logger, configure

# The Ray tests start local clusters; CI has no network beyond the package registries,
# so Ray's usage-stats upload stays off (inherited by the CLI subprocesses too).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class _DepthEnv(gym.Env[dict[str, Any], int]):
    """A key no rule can encode, a float (3, 40, 40) depth map, and with ``pos`` a vector."""

    def __init__(self, pos: bool = False) -> None:
        keys = {"depth": spaces.Box(0.0, 1.0, (3, 40, 40), np.float32)}
        if pos:
            keys["pos"] = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict(keys)
        self.action_space = spaces.Discrete(2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, True, {}


#: Registered for the tests of a start that fails on an observation key (the error
#: names the key, its space and the `modalities` line that fixes it), and of `inspect`
#: on a key that is not encoded until `modalities` says how (MbmTestDepth-v0).
UNENCODABLE_ENV = "MbmTestUnencodable-v0"
for _id, _kwargs in ((UNENCODABLE_ENV, {}), ("MbmTestDepth-v0", {"pos": True})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_DepthEnv, max_episode_steps=4, kwargs=_kwargs)

IMAGE_HW = 16
TEXT_LEN = 6
VOCAB = 10
AUDIO_SHAPE = (2, 8, 4)
ALL_KEYS = ("image", "text", "audio", "vec", "direction", "symbolic_grid")


def make_space(
    keys: Sequence[str] = ("image", "text", "audio"),
    *,
    channels_first: bool = False,
    text_multidiscrete: bool = False,
) -> spaces.Dict:
    """A Dict space holding the requested keys, in our observation contract."""
    image = (3, IMAGE_HW, IMAGE_HW) if channels_first else (IMAGE_HW, IMAGE_HW, 3)
    grid = (3, 5, 5) if channels_first else (5, 5, 3)
    text: spaces.Space = (
        spaces.MultiDiscrete([VOCAB] * TEXT_LEN)
        if text_multidiscrete
        else spaces.Box(0, VOCAB - 1, (TEXT_LEN,), dtype=np.int64)
    )
    catalogue: dict[str, spaces.Space] = {
        "image": spaces.Box(0, 255, image, dtype=np.uint8),
        "text": text,
        "audio": spaces.Box(-80.0, 0.0, AUDIO_SHAPE, dtype=np.float32),
        "vec": spaces.Box(-1.0, 1.0, (4,), dtype=np.float32),
        "direction": spaces.Discrete(4),
        "symbolic_grid": spaces.Box(0, 10, grid, dtype=np.uint8),
    }
    return spaces.Dict({k: catalogue[k] for k in keys})


def random_obs(space: spaces.Dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of raw observations (as an env emits them) as tensors.

    Text rows get a random number of real tokens followed by padding.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, torch.Tensor] = {}
    for key, sub in space.spaces.items():
        if key == "text":
            ids = rng.integers(2, VOCAB, size=(batch, TEXT_LEN))
            lengths = rng.integers(1, TEXT_LEN + 1, size=batch)
            ids[np.arange(TEXT_LEN)[None, :] >= lengths[:, None]] = 0
            out[key] = torch.as_tensor(ids, dtype=torch.int64)
        elif isinstance(sub, spaces.Discrete):
            out[key] = torch.as_tensor(rng.integers(0, sub.n, size=batch), dtype=torch.int64)
        elif isinstance(sub, spaces.Box) and np.issubdtype(sub.dtype, np.integer):
            high = int(sub.high.max())
            out[key] = torch.as_tensor(rng.integers(0, high + 1, size=(batch, *sub.shape))).to(
                torch.uint8 if sub.dtype == np.uint8 else torch.int64
            )
        else:
            assert isinstance(sub, spaces.Box)
            vals = rng.uniform(sub.low, sub.high, size=(batch, *sub.shape))
            out[key] = torch.as_tensor(vals, dtype=torch.float32)
    return out


class TinyDictEnv(gym.Env[dict[str, Any], int]):
    """Short episodes of a Dict observation; reward 1 when the action equals a cue.

    The cue (0..2) is the first text token minus 2 when text is present, else
    the ``direction`` value mod 3.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        keys: Sequence[str] = ("image", "text", "audio", "direction"),
        *,
        text_multidiscrete: bool = False,
        episode_len: int = 8,
    ) -> None:
        self.observation_space = make_space(keys, text_multidiscrete=text_multidiscrete)
        self.action_space = spaces.Discrete(3)
        self.episode_len = episode_len
        self._t = 0
        self._cue = 0

    def _obs(self) -> dict[str, Any]:
        obs = {}
        for key, sub in self.observation_space.spaces.items():
            value = sub.sample()
            if key == "text":
                value = np.zeros(TEXT_LEN, dtype=np.int64)
                value[0] = 2 + self._cue
                value[1] = self.np_random.integers(2, VOCAB)
            if key == "direction":
                value = np.int64(self._cue)
            obs[key] = value
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._t = 0
        self._cue = int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        reward = float(int(action) == self._cue)
        self._t += 1
        self._cue = int(self.np_random.integers(3))
        return self._obs(), reward, False, self._t >= self.episode_len, {}


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Any:
    # The tests run small batches on a shared 2-core machine, where a second
    # intra-op thread mostly spins against other processes (10x slower).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def sb3_logger(tmp_path: Path) -> Logger:
    """An SB3 logger that writes nothing, its folder under the test's ``tmp_path``.

    ``learn`` of a model without a logger of its own makes SB3 create a
    ``SB3-<date-time>`` folder in the system temp dir; ``model.set_logger(sb3_logger)``
    before ``learn`` keeps the test's files under its ``tmp_path``.
    """
    return configure(str(tmp_path / "sb3-log"), [])


# Helpers are handed out as fixtures rather than imported, so that this conftest
# never clashes with another test folder's ``conftest`` module on sys.path.
@pytest.fixture
def space_factory() -> Any:
    """``make_space`` (see above)."""
    return make_space


@pytest.fixture
def obs_factory() -> Any:
    """``random_obs`` (see above)."""
    return random_obs


@pytest.fixture
def env_factory() -> Any:
    """``TinyDictEnv`` (see above)."""
    return TinyDictEnv
