"""Expert demonstrations of our games: record them, save them as plain arrays, load them.

Every game has a shortest-path expert. :func:`record_demos` plays it over many
worlds at once and keeps whole episodes; :func:`save_demos` writes them as one
``.npz`` of plain arrays (observations per key, expert actions, episode ids,
and the metadata as a JSON string) that :func:`load_demos` reads with
``allow_pickle=False``.

With ``noise > 0`` the expert's executed action is replaced by a random one
with that probability while the label stays the expert's action (DART, Laskey
et al. 2017): the demonstrations then show how to recover from the small
mistakes a cloned policy makes, which plain expert data never does.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

import envs
from mbm_agent.evaluation import episode_success
from mbm_agent.training.storage import ModelFileError, atomic_write_bytes

DEMOS_FORMAT = "mbm-agent-demos"
DEMOS_VERSION = 1

#: Most bytes the arrays of one demonstrations file may hold once loaded, checked
#: from the array headers before any array is read (a file claiming more is refused).
MAX_DEMOS_BYTES = 2**34
#: Most arrays (observation keys plus the five fixed ones) in a demonstrations file.
MAX_DEMOS_ARRAYS = 256


class DemoFileError(ModelFileError):
    """A demonstrations file is missing, corrupt or from another game."""


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of every array in an ``.npz``, read from the headers alone."""
    headers = {}
    with zipfile.ZipFile(path) as zf:
        members = zf.infolist()
        if len(members) > MAX_DEMOS_ARRAYS:
            raise DemoFileError(
                f"{path} holds {len(members)} arrays, more than a demonstrations file "
                f"({MAX_DEMOS_ARRAYS}); record it again."
            )
        for info in members:
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            headers[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    return headers


def _check_sizes(path: Path, headers: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
    total = 0
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise DemoFileError(
                f"{path}: array {name!r} holds Python objects (pickles); refusing to load it."
            )
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if total > MAX_DEMOS_BYTES:
        raise DemoFileError(
            f"{path}: its arrays would take {total} bytes, more than the {MAX_DEMOS_BYTES} "
            "a demonstrations file may hold; record fewer episodes per file."
        )


@dataclass
class Demos:
    """Expert demonstrations: whole episodes, step by step.

    Attributes:
        obs: Per observation key, ``(N, ...)`` raw observations.
        actions: ``(N,)`` expert actions (the labels).
        executed: ``(N,)`` actions actually taken (differ from ``actions`` with noise).
        rewards: ``(N,)`` rewards received.
        episode: ``(N,)`` episode index of each step.
        meta: ``env_id``, ``env_kwargs``, ``seed``, ``noise``, ``episodes``,
            ``success_rate`` (of the recorded episodes) and the game's ``vocabulary``.
    """

    obs: dict[str, NDArray[Any]]
    actions: NDArray[np.int64]
    executed: NDArray[np.int64]
    rewards: NDArray[np.float32]
    episode: NDArray[np.int64]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def n_episodes(self) -> int:
        """Number of whole episodes."""
        return int(self.episode.max()) + 1 if len(self.episode) else 0

    def subset(self, mask: NDArray[np.bool_]) -> Demos:
        """The steps where ``mask`` is True."""
        return Demos(
            {k: v[mask] for k, v in self.obs.items()},
            self.actions[mask],
            self.executed[mask],
            self.rewards[mask],
            self.episode[mask],
            dict(self.meta),
        )


def record_demos(
    env_id: str,
    episodes: int,
    *,
    n_envs: int = 32,
    seed: int = 0,
    noise: float = 0.0,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Demos:
    """Play the game's expert and keep ``episodes`` whole episodes.

    Args:
        env_id: One of our games (``envs.ENV_IDS``).
        episodes: Number of episodes to keep.
        n_envs: Worlds played at once.
        seed: Seed of the first world (world ``i`` starts from ``seed + i``) and
            of the noise.
        noise: Probability of executing a random action instead of the expert's
            (the label stays the expert's action).
        env_kwargs: Game arguments.

    Raises:
        ValueError: Unknown game, no expert, or bad arguments.
    """
    if env_id not in envs.ENV_IDS:
        raise ValueError(
            f"{env_id!r} has no expert to record; demonstrations come from our games: "
            f"{', '.join(envs.ENV_IDS)}."
        )
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}.")
    kwargs = dict(env_kwargs or {})
    n = max(1, min(n_envs, episodes))
    venv = envs.make_vec(env_id, n, autoreset_mode="same_step", **kwargs)
    rng = np.random.default_rng(seed)
    n_actions = int(cast(spaces.Discrete, venv.single_action_space).n)
    obs, _ = venv.reset(seed=seed)
    slot_episode = np.arange(n)
    next_episode = n
    steps: list[
        tuple[dict[str, NDArray[Any]], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]
    ] = []
    finished: set[int] = set()
    successes: dict[int, bool] = {}
    # Episode ids are handed out in start order; waiting for ids 0..E-1 (not for the
    # first E to finish) keeps long episodes as likely as short ones.
    while not all(e in finished for e in range(episodes)):
        expert = venv.expert_actions()
        executed = expert.copy()
        flip = rng.random(n) < noise
        executed[flip] = rng.integers(0, n_actions, size=int(flip.sum()))
        before = {k: np.array(v) for k, v in obs.items()}
        obs, reward, terminated, truncated, info = venv.step(executed)
        steps.append(
            (before, expert, executed, slot_episode.copy(), np.asarray(reward, dtype=np.float32))
        )
        done = np.asarray(terminated) | np.asarray(truncated)
        for i in np.flatnonzero(done):
            ep = int(slot_episode[i])
            finished.add(ep)
            success = episode_success(info, int(i))
            successes[ep] = bool(reward[i] > 0) if success is None else success
            slot_episode[i] = next_episode
            next_episode += 1
    vocabulary = venv.vocabulary
    venv.close()
    obs_cat = {k: np.concatenate([s[0][k] for s in steps]) for k in steps[0][0]}
    ep_cat = np.concatenate([s[3] for s in steps])
    # Whole episodes 0..E-1, each one's steps contiguous and in time order.
    order = np.argsort(ep_cat, kind="stable")
    order = order[ep_cat[order] < episodes]
    meta = {
        "format": DEMOS_FORMAT,
        "version": DEMOS_VERSION,
        "env_id": env_id,
        "env_kwargs": kwargs,
        "seed": seed,
        "noise": noise,
        "episodes": episodes,
        "success_rate": float(np.mean([successes[e] for e in range(episodes)])),
        "vocabulary": vocabulary.to_dict() if vocabulary is not None else None,
    }
    return Demos(
        {k: v[order] for k, v in obs_cat.items()},
        np.concatenate([s[1] for s in steps])[order].astype(np.int64),
        np.concatenate([s[2] for s in steps])[order].astype(np.int64),
        np.concatenate([s[4] for s in steps])[order].astype(np.float32),
        ep_cat[order].astype(np.int64),
        meta,
    )


def save_demos(demos: Demos, path: str | Path) -> Path:
    """Write demonstrations to ``path`` (``.npz``, compressed, no pickled objects), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    arrays: dict[str, NDArray[Any]] = {f"obs/{k}": v for k, v in demos.obs.items()}
    arrays.update(
        actions=demos.actions,
        executed=demos.executed,
        rewards=demos.rewards,
        episode=demos.episode,
        meta=np.array(json.dumps(demos.meta)),
    )
    buffer = io.BytesIO()
    # numpy's stub types savez_compressed's allow_pickle keyword, which **arrays might fill.
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_demos(path: str | Path) -> Demos:
    """Read a demonstrations file written by :func:`save_demos` (never unpickles).

    Raises:
        DemoFileError: Missing, truncated, corrupt or foreign files (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise DemoFileError(
            f"{path} does not exist; record demonstrations with: mbm-agent demos ENV_ID --out {path}"
        )
    try:
        _check_sizes(path, _array_headers(path))
        with np.load(path, allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    except DemoFileError:
        raise
    except ValueError as exc:
        raise DemoFileError(
            f"{path} holds pickled objects or is not an array file; refusing to load it ({exc})."
        ) from exc
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, ...
        raise DemoFileError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); record it again."
        ) from exc
    try:
        meta = json.loads(str(files.pop("meta")))
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise DemoFileError(
            f"{path} has no readable metadata; is it an mbm-agent demos file?"
        ) from exc
    if not isinstance(meta, dict):
        raise DemoFileError(f"{path}: its metadata must be a JSON object; record it again.")
    if meta.get("format") != DEMOS_FORMAT or meta.get("version") != DEMOS_VERSION:
        raise DemoFileError(
            f"{path} is not an mbm-agent demonstrations file of version {DEMOS_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})."
        )
    needed = ("actions", "executed", "rewards", "episode")
    missing = [k for k in needed if k not in files]
    obs = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("obs/")}
    if missing or not obs:
        raise DemoFileError(f"{path} lacks {missing or ['observations']}; record it again.")
    arrays = {**{f"obs/{k}": v for k, v in obs.items()}, **{k: files[k] for k in needed}}
    scalar = [k for k, v in arrays.items() if v.ndim == 0]
    if scalar:
        raise DemoFileError(f"{path}: arrays {scalar} hold no steps; record it again.")
    n = len(files["actions"])
    bad = [k for k, v in arrays.items() if len(v) != n]
    if bad:
        raise DemoFileError(
            f"{path}: arrays {bad} do not have {n} steps like 'actions'; record it again."
        )
    for name, value in arrays.items():
        kinds = "iu" if name in ("actions", "executed", "episode") else "biuf"
        if value.dtype.kind not in kinds:
            raise DemoFileError(
                f"{path}: array {name!r} has dtype {value.dtype}, expected "
                f"{'integers' if kinds == 'iu' else 'numbers'}; record it again."
            )
    if not isinstance(meta.get("env_id"), str):
        raise DemoFileError(f"{path}: metadata field 'env_id' must be a string; record it again.")
    for name in ("env_kwargs",):
        if not isinstance(meta.get(name, {}), dict):
            raise DemoFileError(f"{path}: metadata field {name!r} must be an object.")
    return Demos(
        obs,
        files["actions"].astype(np.int64),
        files["executed"].astype(np.int64),
        files["rewards"].astype(np.float32),
        files["episode"].astype(np.int64),
        meta,
    )
