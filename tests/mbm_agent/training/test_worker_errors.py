"""An env that raises in a worker process (``--vec-env async``) is reported with its own error.

SB3's ``SubprocVecEnv`` worker dies on an env's exception and the main process sees only
``EOFError``; ``ReportErrors`` (in the worker) and ``RaiseWorkerErrors`` (above it) bring
the env's exception and traceback back.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from runs_helpers import cli_command, cli_env
from stable_baselines3.common.vec_env import DummyVecEnv

from mbm_agent.sb3.vec_env import EnvWorkerError, RaiseWorkerErrors, ReportErrors

FLAKY_MODULE = textwrap.dedent(
    '''
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class FlakyEnv(gym.Env):
        """A frame; its camera fails on the 5th step."""

        def __init__(self):
            self.observation_space = spaces.Dict(
                {"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)}
            )
            self.action_space = spaces.Discrete(2)
            self.t = 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return {"image": np.zeros((16, 16, 3), np.uint8)}, {}

        def step(self, action):
            self.t += 1
            if self.t >= 5:
                raise OSError("camera sensor unplugged")
            return {"image": np.zeros((16, 16, 3), np.uint8)}, 0.0, False, self.t % 3 == 0, {}


    gym.register("FlakyEnv-v0", entry_point=FlakyEnv, max_episode_steps=50)
    '''
)


class Flaky(gym.Env[dict[str, Any], int]):
    """Raises in reset number ``fail_reset`` (1: the first) or on step ``fail_at``; an
    episode lasts ``episode_len`` steps. Its ``x`` is unbounded (``sample()`` cannot draw
    it), ``n`` counts the steps."""

    def __init__(self, fail_at: int = 3, fail_reset: int = 0, episode_len: int = 100) -> None:
        self.observation_space = spaces.Dict(
            {
                "x": spaces.Box(-np.inf, np.inf, (2,), np.float64),
                "n": spaces.Box(0, 1000, (1,), np.int64),
            }
        )
        self.action_space = spaces.Discrete(2)
        self.fail_at, self.fail_reset, self.episode_len = fail_at, fail_reset, episode_len
        self.t = self.resets = 0

    def _obs(self) -> dict[str, Any]:
        return {"x": np.ones(2), "n": np.array([self.t])}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.resets += 1
        if self.resets == self.fail_reset:
            raise ValueError("no level file found")
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self.t += 1
        if self.t >= self.fail_at:
            raise OSError("camera sensor unplugged")
        return self._obs(), 1.0, False, self.t % self.episode_len == 0, {}


def _venv(**kwargs: Any) -> RaiseWorkerErrors:
    return RaiseWorkerErrors(
        DummyVecEnv([lambda: ReportErrors(Flaky()), lambda: ReportErrors(Flaky(**kwargs))]),
        "my_pkg:Flaky-v0",
    )


def test_a_step_error_is_raised_with_the_envs_own_exception_and_traceback() -> None:
    venv = _venv(fail_at=2)
    venv.reset()
    venv.step(np.zeros(2, dtype=np.int64))  # healthy steps pass through unchanged
    with pytest.raises(EnvWorkerError) as info:
        venv.step(np.zeros(2, dtype=np.int64))
    message = str(info.value)
    assert "my_pkg:Flaky-v0 raised OSError: camera sensor unplugged" in message
    assert "a step of env 1" in message and "--vec-env dummy" in message
    assert 'raise OSError("camera sensor unplugged")' in message  # the worker's traceback
    venv.close()


def test_a_reset_error_is_raised_with_the_envs_own_exception() -> None:
    venv = _venv(fail_reset=1)
    with pytest.raises(EnvWorkerError, match=r"raised ValueError: no level file found in reset"):
        venv.reset()


def test_an_error_in_the_reset_after_an_episode_is_raised_too() -> None:
    # The vector env resets an env whose episode ended; that reset fails here.
    venv = _venv(fail_reset=2, episode_len=2)
    venv.reset()
    venv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(EnvWorkerError, match=r"no level file found in the reset after an episode"):
        venv.step(np.zeros(2, dtype=np.int64))


def test_the_placeholder_is_the_last_good_observation_else_zeros() -> None:
    # Unbounded Box: Space.sample() cannot draw it, zeros can stand in.
    env = ReportErrors(Flaky(fail_reset=1))
    obs, info = env.reset()
    assert "mbm_worker_error" in info and obs["x"].tolist() == [0.0, 0.0]
    env = ReportErrors(Flaky(fail_at=2))
    env.reset()
    good = env.step(0)[0]
    obs, reward, terminated, truncated, info = env.step(0)
    assert obs is good and (reward, terminated, truncated) == (0.0, True, False)
    assert info["mbm_worker_error"]["error"] == "OSError: camera sensor unplugged"


def test_report_errors_passes_a_healthy_env_through() -> None:
    env = ReportErrors(Flaky(fail_at=10))
    obs, info = env.reset(seed=0)
    assert info == {} and obs["n"].tolist() == [0]
    assert env.step(0)[1:] == (1.0, False, False, {})


def test_async_training_names_the_envs_error_not_eof(tmp_path: Path) -> None:
    """The real ``SubprocVecEnv`` of ``mbm-agent train --vec-env async``, in a subprocess."""
    (tmp_path / "flaky_env.py").write_text(FLAKY_MODULE)
    env = {**cli_env(), "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [
            *cli_command(),
            "train",
            "flaky_env:FlakyEnv-v0",
            "--steps",
            "256",
            "--n-envs",
            "2",
            "--vec-env",
            "async",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()
    error = next(line for line in last if line.startswith("mbm_agent.sb3.vec_env.EnvWorkerError"))
    assert "flaky_env:FlakyEnv-v0 raised OSError: camera sensor unplugged" in error
    assert "EOFError" not in result.stderr
    assert last[-1].startswith("Fix the env")
