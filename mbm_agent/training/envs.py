"""Env factories: one env ready for the encoder, the training VecEnv, the evaluation vector env.

Any Gymnasium id trains: our games (their native batched env), MiniGrid / BabyAI
(missions tokenised with the BabyAI words), MiniHack (seeded as Gymnasium seeds:
:mod:`mbm_agent.training.minihack`), Atari with sound (``mbm-atari/<Game>-v0``,
registered by :mod:`mbm_agent.training.atari`), and any other registered id or
``module:EnvId`` (the module is imported first, as ``gymnasium.make`` does),
whose observations go through the run's
:class:`~mbm_agent.training.adapter.ObservationAdapter` (:func:`observation_adapter`).
A MiniGrid env reached through that generic path gets its symbolic grid declared
``symbolic_grid`` (:func:`~mbm_agent.training.wrappers.minigrid_grid_keys`).

Every env but our games is checked where its observations leave it
(:class:`CheckObservations`): an observation that breaks the env's own space, or
holds NaN or infinity, stops training or evaluation with an error naming the env,
the key and the step. Our games are not: their observations are built by our own
code to their spaces (uint8 frames, token ids, log-mel features clipped to their
bounds), and their training env (``envs.sb3.SB3VecEnv``) never passes here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

import envs
import mbm_agent.training.atari  # noqa: F401  (registers the mbm-atari/<Game>-v0 ids)
from envs.core.env import GameEnv
from envs.core.text import Vocabulary
from envs.sb3 import SB3VecEnv
from mbm_agent.encoding.config import DEFAULT_MODALITIES
from mbm_agent.sb3.novelty import EpisodicNoveltyBonus
from mbm_agent.sb3.vec_env import (
    KeepChannelsLast,
    RaiseWorkerErrors,
    ReportErrors,
    WorkerGroupVecEnv,
)
from mbm_agent.training.adapter import ObservationAdapter, ObservationCheck
from mbm_agent.training.atari import scoring_kwargs
from mbm_agent.training.config import ConfigError, TrainConfig
from mbm_agent.training.minihack import is_minihack, make_minihack_env
from mbm_agent.training.wrappers import (
    AdaptObservation,
    TokenizeMission,
    make_minigrid_env,
    minigrid_grid_keys,
)


class SuccessInfo(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``is_success`` to the info at episode end for envs that do not report it.

    Uses ``info["success"]`` when present, else "the episode paid a positive reward"
    (the MiniGrid / BabyAI convention).
    """

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step and mark success at episode end."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = dict(info)
            info.setdefault("is_success", bool(info.get("success", float(reward) > 0)))
        return obs, reward, terminated, truncated, info


class CheckObservations(gym.Wrapper[Any, Any, Any, Any]):
    """Checks every raw observation of a third-party env against its own space (reset and step).

    The check is the adapter's :class:`~mbm_agent.training.adapter.ObservationCheck`
    (shapes, dtype kinds, finite floats; one ``np.isfinite`` per float key and
    step), so a broken env fails here, naming its id, the key and the step, not
    deep in SB3 or the policy.

    Args:
        env: The raw env (before its observations are adapted).
        env_id: Its id, named in the errors.
        adapter: The run's adapter (which keys it reads, where, and which are ignored).
    """

    def __init__(self, env: gym.Env[Any, Any], env_id: str, adapter: ObservationAdapter) -> None:
        super().__init__(env)
        self.check: ObservationCheck = adapter.observation_check(env.observation_space, env_id)
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env and check its first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._steps = 0
        self.check(obs, None)
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step the env and check its observation."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        self.check(obs, self._steps)
        return obs, reward, terminated, truncated, info


def is_our_game(env_id: str) -> bool:
    """Whether ``env_id`` is one of the games in ``envs``."""
    return env_id in envs.GAMES


def is_minigrid(env_id: str) -> bool:
    """Whether ``env_id`` (optionally ``module:id``) is a MiniGrid / BabyAI id."""
    return env_id.split(":")[-1].startswith(("MiniGrid-", "BabyAI-"))


@contextlib.contextmanager
def game_arguments(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    errors: tuple[type[Exception], ...] = (TypeError, ValueError),
) -> Iterator[None]:
    """Errors of building an env with the user's arguments, as one clear ConfigError.

    ``errors`` raised inside become a :class:`ConfigError` naming the arguments, the env
    and where to fix them. Without arguments of the user's the error is the env's own
    and passes unchanged.
    """
    try:
        yield
    except errors as exc:
        if not env_kwargs:
            raise
        raise ConfigError(
            f"env_kwargs {dict(env_kwargs)} do not fit {env_id}: {exc}. Fix or drop the "
            "argument (mbm-agent train: --set env_kwargs.KEY=VALUE or the config's "
            "env_kwargs; mbm-agent eval: --set KEY=VALUE)."
        ) from exc


def make_base_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    vocabulary: Vocabulary | None,
    render_mode: str | None,
) -> tuple[gym.Env[Any, Any], Vocabulary | None]:
    """The env as Gymnasium makes it, before its observations are adapted, and its vocabulary.

    Our games as they are; MiniGrid / BabyAI with missions tokenised and the
    grid renamed ``symbolic_grid`` (:func:`~mbm_agent.training.wrappers.make_minigrid_env`);
    any other id (``module:EnvId`` imports the module first) as ``gymnasium.make`` gives it.

    Raises:
        ConfigError: An unknown id, a module that cannot be imported, or arguments the
            env does not take (:func:`game_arguments`).
    """
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if is_our_game(env_id):
        with game_arguments(env_id, env_kwargs):
            env = gym.make(env_id, **kwargs)
        return env, cast(GameEnv, env.unwrapped).vocabulary
    try:
        # A TypeError: an argument the env's constructor does not take.
        with game_arguments(env_id, env_kwargs, (TypeError,)):
            if is_minigrid(env_id):
                env = make_minigrid_env(env_id, vocabulary, **kwargs)
            elif is_minihack(env_id):
                env = make_minihack_env(env_id, **kwargs)
            else:
                env = gym.make(env_id, **kwargs)
    except ModuleNotFoundError as exc:
        module = env_id.split(":")[0]
        raise ConfigError(
            f"Cannot make {env_id!r}: {exc} For a 'module:EnvId' id, {module!r} must be "
            "importable (installed, or under the current folder, which mbm-agent searches) "
            "and register EnvId when imported."
        ) from exc
    except gym.error.Error as exc:
        raise ConfigError(
            f"Unknown env id {env_id!r}: {exc}. Our games are: {', '.join(envs.LATEST)}; "
            "a third-party env can be given as 'module:EnvId-v0' (the module registers it)."
        ) from exc
    return env, mission_vocabulary(env)


def mission_vocabulary(env: gym.Env[Any, Any]) -> Vocabulary | None:
    """The vocabulary a :class:`TokenizeMission` layer of ``env`` tokenises with (None: no layer)."""
    layer: Any = env
    while layer is not None:
        if isinstance(layer, TokenizeMission):
            return layer.vocabulary
        layer = getattr(layer, "env", None)
    return None


def _adapter_for(
    env: gym.Env[Any, Any], env_id: str, modalities: Mapping[str, Any]
) -> ObservationAdapter:
    # MiniGrid's symbolic grid left under a frame-like key would be encoded as a picture.
    grids = {
        k: "symbolic_grid"
        for k in minigrid_grid_keys(env)
        if k not in modalities and DEFAULT_MODALITIES.get(k) != "symbolic_grid"
    }
    try:
        adapter = ObservationAdapter.for_space(
            env.observation_space, {**grids, **modalities}, metadata=env.metadata
        )
    except ValueError as exc:
        raise ConfigError(f"{env_id}: {exc}") from exc
    if is_our_game(env_id) and not adapter.is_identity:
        raise ConfigError(
            f"{env_id} already emits our observation contract (frames, token ids, log-mel "
            f"audio); declare only encoder modalities for it, not {adapter}."
        )
    return adapter


@functools.lru_cache(maxsize=32)
def _probe(key: str) -> tuple[ObservationAdapter, Vocabulary | None]:
    env_id, env_kwargs, modalities = json.loads(key)
    env, vocab = make_base_env(env_id, env_kwargs, None, None)
    try:
        return _adapter_for(env, env_id, modalities), vocab
    finally:
        env.close()


def _probe_env(
    env_id: str, env_kwargs: Mapping[str, Any], modalities: Mapping[str, Any]
) -> tuple[ObservationAdapter, Vocabulary | None]:
    """The adapter and vocabulary of an env under a config's declarations, made once per process."""
    key = json.dumps([env_id, dict(env_kwargs), dict(modalities)], sort_keys=True, default=repr)
    return _probe(key)


def observation_adapter(cfg: TrainConfig) -> ObservationAdapter:
    """The :class:`ObservationAdapter` a run trains with (its env's space and ``cfg.modalities``).

    The one place that decides how a run's raw observations are converted: the
    training and evaluation envs apply it, the policy's encoder takes its
    ``modalities`` and ``model.json`` stores it. Built once per process and config.

    Raises:
        ConfigError: An unknown env id, or declarations that do not fit its space.
    """
    return _probe_env(cfg.env_id, cfg.env_kwargs, cfg.modalities)[0]


def make_single_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    vocabulary: Vocabulary | None = None,
    render_mode: str | None = None,
    *,
    adapter: ObservationAdapter | None = None,
    modalities: Mapping[str, Any] | None = None,
) -> tuple[gym.Env[Any, Any], Vocabulary | None]:
    """One env ready for the encoder: observations checked and adapted, MiniGrid missions tokenised, success reported.

    A third-party env's raw observations are checked against its own space
    (:class:`CheckObservations`) before the adapter converts them.

    Args:
        env_id: One of our games, a registered Gymnasium id or ``module:EnvId``.
        env_kwargs: Arguments of the env.
        vocabulary: MiniGrid / BabyAI only: the mission vocabulary (a saved model's).
        render_mode: Passed to the env.
        adapter: The observation adapter to apply (a saved model's); by default
            one built from ``modalities`` for the env's space.
        modalities: Per-key declarations when no adapter is given.

    Returns:
        The env and its vocabulary (our games' and MiniGrid's; None otherwise).
    """
    env, vocab = make_base_env(env_id, env_kwargs, vocabulary, render_mode)
    if adapter is None:
        adapter = _adapter_for(env, env_id, modalities or {})
    if not is_our_game(env_id):
        env = CheckObservations(env, env_id, adapter)
    if not adapter.is_identity:
        env = AdaptObservation(env, adapter)
    return SuccessInfo(env), vocab


def _single_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    vocabulary: Vocabulary | None,
    adapter: ObservationAdapter,
) -> gym.Env[Any, Any]:
    """An env factory for vector envs (a module-level function: worker processes unpickle it)."""
    return make_single_env(env_id, env_kwargs, vocabulary, adapter=adapter)[0]


def _worker_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    vocabulary: Vocabulary | None,
    adapter: ObservationAdapter,
) -> gym.Env[Any, Any]:
    """:func:`_single_env` for a worker process: its errors go back to the main process."""
    return ReportErrors(_single_env(env_id, env_kwargs, vocabulary, adapter))


def async_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``.

    Never ``fork``: a forked copy of a process that already runs torch's thread
    pools (or other threads) can deadlock.
    """
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def make_train_env(cfg: TrainConfig, seed: int) -> tuple[VecEnv, Vocabulary | None]:
    """The training ``VecEnv``: our native batched env for our games, else one env per slot.

    Third-party envs are stepped in this process (``cfg.vec_env == "dummy"``,
    SB3's ``DummyVecEnv``) or each in its own worker process (``"async"``,
    SB3's ``SubprocVecEnv``, started with :func:`async_start_method`), which pays
    off when an env step costs more than passing its observation between
    processes (``benchmarks/vec_env_speed.py``). Every env applies the run's
    :func:`observation_adapter`.
    """
    adapter, vocab = _probe_env(cfg.env_id, cfg.env_kwargs, cfg.modalities)
    if is_our_game(cfg.env_id):
        if cfg.vec_env == "async":
            warnings.warn(
                f"vec_env=async is for third-party envs; {cfg.env_id} is one of our games, "
                "stepped as one batched numpy env in this process (faster than worker "
                "processes), so it is ignored.",
                stacklevel=2,
            )
        with game_arguments(cfg.env_id, cfg.env_kwargs):
            venv: VecEnv = SB3VecEnv(cfg.env_id, cfg.n_envs, **cfg.env_kwargs)
        vocab = cast(SB3VecEnv, venv).venv.vocabulary
    else:
        if cfg.vec_env == "async":
            factory = functools.partial(_worker_env, cfg.env_id, cfg.env_kwargs, vocab, adapter)
            fns: list[Callable[[], gym.Env]] = [factory] * cfg.n_envs
            workers: VecEnv = (
                WorkerGroupVecEnv(fns, cfg.vec_env_workers, async_start_method())
                if cfg.vec_env_workers
                else SubprocVecEnv(fns, start_method=async_start_method())
            )
            venv = RaiseWorkerErrors(workers, cfg.env_id)
        else:
            factory = functools.partial(_single_env, cfg.env_id, cfg.env_kwargs, vocab, adapter)
            venv = DummyVecEnv([factory] * cfg.n_envs)
    venv.seed(seed)
    monitored: VecEnv = VecMonitor(venv, info_keywords=("is_success",))
    if cfg.novelty_bonus > 0:  # above the monitor: logged returns stay the game's own
        try:
            monitored = EpisodicNoveltyBonus(monitored, cfg.novelty_bonus)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if cfg.extractor == "sb3":  # SB3's own pipeline: it transposes frames for NatureCNN
        return monitored, vocab
    # Our extractor reads channel-last frames: spare SB3's per-step transpose copy.
    return KeepChannelsLast(monitored), vocab


def evaluation_env_kwargs(env_id: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The env arguments a run's evaluations use: its training ones and the game's scoring.

    The one place that decides them for the trainer's periodic and final evaluations,
    its GIF, ``mbm-agent eval``, ``mbm-agent bench`` and the viewer: Atari games are scored on full
    games with raw points (:func:`~mbm_agent.training.atari.scoring_kwargs`), whatever
    the training episodes were; ``mbm-agent eval --set`` still overrides any of them.
    """
    return {**env_kwargs, **scoring_kwargs(env_id)}


def make_eval_env(
    spec_env_id: str,
    env_kwargs: Mapping[str, Any],
    n: int,
    vocabulary: Vocabulary | None,
    adapter: ObservationAdapter | None = None,
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """A Gymnasium vector env for evaluation (same-step autoreset).

    Args:
        spec_env_id: The env id.
        env_kwargs: Arguments of the env.
        n: Envs stepped together.
        vocabulary: MiniGrid / BabyAI: the saved model's mission vocabulary.
        adapter: The saved model's observation adapter (identity when None).
    """
    if is_our_game(spec_env_id):
        with game_arguments(spec_env_id, env_kwargs):
            return envs.make_vec(spec_env_id, n, autoreset_mode="same_step", **env_kwargs)
    factory = functools.partial(
        _single_env, spec_env_id, env_kwargs, vocabulary, adapter or ObservationAdapter()
    )
    return gym.vector.SyncVectorEnv(
        [factory] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
