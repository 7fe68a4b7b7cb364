"""Vector-env wrappers: no frame transpose, and an env's error out of its worker process.

:class:`KeepChannelsLast` spares SB3's frame transpose; :class:`ReportErrors` (in the
worker) and :class:`RaiseWorkerErrors` (above SB3's ``SubprocVecEnv``) bring an env's
error out of its worker process.
"""

from __future__ import annotations

import traceback
from typing import Any, SupportsFloat

import gymnasium as gym
from gymnasium.vector.utils import batch_space, create_empty_array, iterate
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecTransposeImage
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

#: The ``info`` key under which a worker's env reports the error it raised.
WORKER_ERROR = "mbm_worker_error"


class EnvWorkerError(RuntimeError):
    """An env raised in its worker process (``--vec-env async``).

    The message holds the env's exception and the worker's traceback.
    """


class ReportErrors(gym.Wrapper[Any, Any, Any, Any]):
    """In a worker process: an exception of ``reset`` or ``step`` is returned, not raised.

    SB3's ``SubprocVecEnv`` worker dies on an env's exception, and the main process
    then only sees ``EOFError`` (the real error goes to the worker's stderr). This
    wrapper hands the error back instead, as ``info[WORKER_ERROR]`` (the exception
    and its traceback, as text) with a placeholder observation and the episode ended,
    for :class:`RaiseWorkerErrors` to raise in the main process. The worker stays up,
    so the vector env still closes cleanly.
    """

    _last_obs: Any = None

    def _placeholder(self) -> Any:
        """The last good observation, else zeros of the space, else a sample of it."""
        if self._last_obs is not None:
            return self._last_obs
        try:
            space = self.observation_space
            return next(iter(iterate(batch_space(space, 1), create_empty_array(space, n=1))))
        except Exception:  # a space gymnasium cannot fill: try its own sample
            return self.observation_space.sample()

    def _report(self, exc: Exception) -> tuple[Any, dict[str, Any]]:
        text = f"{type(exc).__name__}: {exc}"
        report = {"error": text, "traceback": traceback.format_exc()}
        try:
            obs = self._placeholder()
        except Exception:  # no placeholder at all: the worker dies with the env's error
            raise exc from None
        return obs, {WORKER_ERROR: report}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """The env's reset, or a placeholder and the error in ``info``."""
        try:
            obs, info = self.env.reset(**kwargs)
        except Exception as exc:  # every error goes back to the main process
            return self._report(exc)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """The env's step, or a placeholder that ends the episode and the error in ``info``."""
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as exc:
            obs, info = self._report(exc)
            return obs, 0.0, True, False, info
        self._last_obs = obs
        return obs, reward, terminated, truncated, info


class RaiseWorkerErrors(VecEnvWrapper):
    """Raises, in the main process, the error a worker's env reported (:class:`ReportErrors`).

    Args:
        venv: The ``SubprocVecEnv`` whose envs are wrapped in :class:`ReportErrors`.
        env_id: Named in the error.
    """

    def __init__(self, venv: VecEnv, env_id: str) -> None:
        super().__init__(venv)
        self.env_id = env_id

    def _check(self, infos: Any, when: str) -> None:
        for i, info in enumerate(infos or ()):
            report = info.get(WORKER_ERROR) if isinstance(info, dict) else None
            if report is not None:
                raise EnvWorkerError(
                    f"{self.env_id} raised {report['error']} in {when} of env {i}, which runs "
                    "in a worker process (vec_env=async). Its traceback in the worker:\n"
                    f"{report['traceback'].rstrip()}\n"
                    "Fix the env; --vec-env dummy runs it in this process, where a debugger "
                    "reaches it."
                )

    def reset(self) -> VecEnvObs:
        """The envs' first observations, or the error a worker reported."""
        obs = self.venv.reset()
        self._check(self.venv.reset_infos, "reset")
        self.reset_infos = self.venv.reset_infos
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        """The envs' step results, or the error a worker reported."""
        obs, rewards, dones, infos = self.venv.step_wait()
        self._check(infos, "a step")
        # An episode's end resets the env in its worker: that reset may fail too.
        self._check(self.venv.reset_infos, "the reset after an episode")
        self.reset_infos = self.venv.reset_infos
        return obs, rewards, dones, infos


class KeepChannelsLast(VecTransposeImage):
    """Marks a vector env so that SB3 does not transpose its frames to channel-first.

    SB3 wraps any env with a channel-last uint8 image key in
    ``VecTransposeImage``, which copies every frame of every step. The
    :class:`MultimodalExtractor` reads channel-last frames directly (the
    layout is taken from the space), so that copy buys nothing. SB3 skips its
    own wrapper when the env is already wrapped in one; this subclass is such
    a wrapper that passes observations through unchanged. The policy then
    sees, stores and saves the env's own observation space, which is also
    the one exported models take.

    Use it only with policies whose image keys go through our extractor::

        model = PPO("MultiInputPolicy", KeepChannelsLast(venv), policy_kwargs=...)
    """

    def __init__(self, venv: VecEnv) -> None:
        VecEnvWrapper.__init__(self, venv)
        self.image_space_keys: list[str] = []

    # VecTransposeImage narrows VecEnvObs to an array or a dict; this passes on
    # whatever the wrapped env gives.
    def transpose_observations(self, observations: VecEnvObs) -> VecEnvObs:  # type: ignore[override]
        """Observations unchanged."""
        return observations

    def step_wait(self) -> VecEnvStepReturn:
        """The wrapped env's step results unchanged."""
        return self.venv.step_wait()

    def reset(self) -> VecEnvObs:  # type: ignore[override]  # as transpose_observations
        """The wrapped env's first observations unchanged."""
        return self.venv.reset()
