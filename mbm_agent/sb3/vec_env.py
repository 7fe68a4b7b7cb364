"""Vector envs: no frame transpose, envs in worker processes, their errors brought back.

:class:`KeepChannelsLast` spares SB3's frame transpose; :class:`WorkerGroupVecEnv` steps
envs in a few worker processes, several envs each; :class:`ReportErrors` (in the
worker) and :class:`RaiseWorkerErrors` (above SB3's ``SubprocVecEnv`` or a
:class:`WorkerGroupVecEnv`) bring an env's error out of its worker process.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import pickle
import traceback
import warnings
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NoReturn, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, create_empty_array, iterate
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecTransposeImage,
)
from stable_baselines3.common.vec_env.base_vec_env import (
    CloudpickleWrapper,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

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


def _answer(venv: DummyVecEnv, cmd: str, data: Any) -> Any:
    """What a :class:`WorkerGroupVecEnv` worker answers to one command."""
    if cmd == "step":
        obs, rewards, dones, infos = venv.step(data)
        return obs, rewards, dones, infos, list(venv.reset_infos)
    if cmd == "reset":
        venv._seeds, venv._options = list(data[0]), list(data[1])
        obs = venv.reset()
        return obs, list(venv.reset_infos)
    if cmd == "get_spaces":
        return venv.observation_space, venv.action_space
    if cmd == "get_attr":
        return venv.get_attr(data[0], data[1])
    if cmd == "set_attr":
        venv.set_attr(data[0], data[1], data[2])
        return [None] * len(data[2])  # one answer per env, as the other per-env commands
    if cmd == "env_method":
        name, args, kwargs, indices = data
        return venv.env_method(name, *args, indices=indices, **kwargs)
    if cmd == "is_wrapped":
        return venv.env_is_wrapped(data[0], data[1])
    if cmd == "get_images":
        return list(venv.get_images())
    raise NotImplementedError(f"WorkerGroupVecEnv workers do not know the command {cmd!r}.")


def _failure(exc: Exception) -> tuple[str, tuple[BaseException, str]]:
    """An exception to send back: itself if it pickles, else its text as a RuntimeError."""
    text = traceback.format_exc()
    try:
        pickle.dumps(exc)
    except Exception:
        return "error", (RuntimeError(f"{type(exc).__name__}: {exc}"), text)
    return "error", (exc, text)


def _group_worker(remote: Connection, parent: Connection, fns: CloudpickleWrapper) -> None:
    """A worker process of :class:`WorkerGroupVecEnv`: its envs as one ``DummyVecEnv``.

    Every answer is ``("ok", result)`` or ``("error", (exception, traceback))``: an
    exception in a command (a missing attribute, a method that raises, envs that cannot
    be made) goes back to the main process, and the worker stays up.
    """
    parent.close()
    try:
        venv = DummyVecEnv(fns.var)
    except Exception as exc:  # every error goes back to the main process
        remote.send(_failure(exc))
        remote.close()
        return
    while True:
        try:
            cmd, data = remote.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if cmd == "close":
            venv.close()
            remote.close()
            break
        try:
            remote.send(("ok", _answer(venv, cmd, data)))
        except Exception as exc:
            remote.send(_failure(exc))


def _concatenate(parts: Sequence[Any]) -> Any:
    """Worker batches of observations (arrays, or dicts / tuples of them) as one batch."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in first}
    if isinstance(first, tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)


class WorkerGroupVecEnv(VecEnv):
    """Envs stepped in ``n_workers`` worker processes, a contiguous group of envs in each.

    SB3's ``SubprocVecEnv`` starts one process per env: with many cheap envs (64
    BabyAI levels) the pipes and the processes' turns cost more than the steps, and
    each process imports torch. Here each worker holds its group as a
    ``DummyVecEnv`` (auto-reset, ``terminal_observation``, ``reset_infos`` as SB3
    does them) and answers one message per step for all of them; env ``i`` gets the
    same seed and options, so the same episodes, as in a ``DummyVecEnv`` of all the
    envs (tests compare them step by step).

    Args:
        env_fns: One factory per env (picklable; sent to the workers with cloudpickle).
        n_workers: Worker processes (at most one per env).
        start_method: ``multiprocessing`` start method (``forkserver`` or ``spawn``:
            forking a process that runs torch's threads can deadlock).
    """

    def __init__(
        self, env_fns: Sequence[Callable[[], gym.Env]], n_workers: int, start_method: str
    ) -> None:
        n_envs = len(env_fns)
        if not 1 <= n_workers <= n_envs:
            raise ValueError(f"n_workers must be between 1 and the {n_envs} envs, got {n_workers}.")
        bounds = np.linspace(0, n_envs, n_workers + 1).round().astype(int)
        self.groups = [range(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self.waiting = False
        self.closed = False
        ctx = mp.get_context(start_method)
        self.remotes: list[Connection] = []
        self.processes = []
        for group in self.groups:
            remote, work_remote = ctx.Pipe()
            fns = CloudpickleWrapper([env_fns[i] for i in group])
            process = ctx.Process(  # type: ignore[attr-defined]
                target=_group_worker, args=(work_remote, remote, fns), daemon=True
            )
            process.start()
            work_remote.close()
            self.remotes.append(remote)
            self.processes.append(process)
        try:  # every worker answers once, so an env that cannot be made fails here
            for remote in self.remotes:
                self._send(remote, ("get_spaces", None))
            spaces_of = self._gather(self.remotes)
            observation_space, action_space = spaces_of[0]
        except Exception:
            self._stop()
            raise
        super().__init__(n_envs, observation_space, action_space)

    def _send(self, remote: Connection, message: tuple[str, Any]) -> None:
        try:
            remote.send(message)
        except (BrokenPipeError, ConnectionResetError):
            self._worker_died(remote)

    def _gather(self, remotes: Sequence[Connection]) -> list[Any]:
        """Every asked worker's answer, in order; then the first error among them, raised.

        All answers are read before raising, so no answer is left in a pipe to be taken
        for the next command's.
        """
        answers = []
        for remote in remotes:
            try:
                answers.append((remote, *remote.recv()))
            except (EOFError, ConnectionResetError):
                self._worker_died(remote)
        for remote, tag, payload in answers:
            if tag == "error":
                exc, text = payload
                if hasattr(exc, "add_note"):  # Python >= 3.11
                    exc.add_note(
                        f"Raised in worker process {self.remotes.index(remote)} "
                        f"(vec_env=async); its traceback there:\n{text.rstrip()}"
                    )
                raise exc
        return [payload for _, _, payload in answers]

    def _worker_died(self, remote: Connection) -> NoReturn:
        """End every worker and name the one that died, with its envs and exit code."""
        k = self.remotes.index(remote)
        process, group = self.processes[k], self.groups[k]
        process.join(timeout=5)
        code = process.exitcode
        self._stop()
        raise EnvWorkerError(
            f"Worker process {k} (envs {group.start}-{group.stop - 1}) ended with exit code "
            f"{code} without answering: an env crashed the process (e.g. a segfault in native "
            "code) or it was killed; the other workers are stopped. --vec-env dummy runs the "
            "envs in this process, where the crash shows."
        )

    def _stop(self) -> None:
        """End every worker still up and close the pipes (``close``, a dead worker, bad envs)."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        for pipe in self.remotes:
            pipe.close()
        self.waiting = False
        self.closed = True

    def step_async(self, actions: np.ndarray) -> None:
        """Send each worker its envs' actions."""
        for remote, group in zip(self.remotes, self.groups, strict=True):
            self._send(remote, ("step", actions[group.start : group.stop]))
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Every env's step results, in env order."""
        self.waiting = False  # every answer is read, even when one of them is an error
        results = self._gather(self.remotes)
        obs, rewards, dones, infos, resets = zip(*results, strict=True)
        self.reset_infos = [info for part in resets for info in part]
        return (
            _concatenate(obs),
            np.concatenate(rewards),
            np.concatenate(dones),
            [info for part in infos for info in part],
        )

    def reset(self) -> VecEnvObs:
        """Reset every env with its pending seed and options."""
        for remote, group in zip(self.remotes, self.groups, strict=True):
            self._send(
                remote,
                ("reset", ([self._seeds[i] for i in group], [self._options[i] for i in group])),
            )
        results = self._gather(self.remotes)
        obs, resets = zip(*results, strict=True)
        self.reset_infos = [info for part in resets for info in part]
        self._reset_seeds()
        self._reset_options()
        return _concatenate(obs)

    def close(self) -> None:
        """Close the envs and end the workers."""
        if self.closed:
            return
        for remote in self.remotes:
            try:
                if self.waiting:
                    remote.recv()
                remote.send(("close", None))
            except (EOFError, BrokenPipeError, ConnectionResetError):
                pass  # a worker already gone: nothing to close there
        for process in self.processes:
            process.join(timeout=30)
        self._stop()  # any worker still up after that is ended

    def _wanted(self, indices: VecEnvIndices) -> list[int]:
        """Env indices as SB3's vector envs read them (negative from the end)."""
        envs = range(self.num_envs)
        try:
            return [envs[i] for i in self._get_indices(indices)]
        except IndexError:
            raise IndexError(
                f"env indices {indices!r} out of range for {self.num_envs} envs"
            ) from None

    def _ask(self, cmd: str, indices: VecEnvIndices, *data: Any) -> list[Any]:
        """Send ``cmd`` to the workers holding ``indices``, each with its local indices."""
        wanted = self._wanted(indices)
        asked = []
        for remote, group in zip(self.remotes, self.groups, strict=True):
            local = [i - group.start for i in wanted if i in group]
            if local:
                self._send(remote, (cmd, (*data, local)))
                asked.append((remote, group.start, local))
        by_env: dict[int, Any] = {}
        answers = self._gather([remote for remote, _, _ in asked])
        for (_, start, local), answer in zip(asked, answers, strict=True):
            by_env.update({start + i: value for i, value in zip(local, answer, strict=True)})
        return [by_env[i] for i in wanted]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of each env (see SB3's ``VecEnv``)."""
        return self._ask("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of each env (see SB3's ``VecEnv``)."""
        self._ask("set_attr", indices, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of each env (see SB3's ``VecEnv``)."""
        return self._ask("env_method", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Whether each env is wrapped in ``wrapper_class``."""
        return self._ask("is_wrapped", indices, wrapper_class)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's ``render()`` frame (None each unless the envs render ``rgb_array``)."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but get_images needs 'rgb_array'.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        for remote in self.remotes:
            self._send(remote, ("get_images", None))
        return [image for part in self._gather(self.remotes) for image in part]
