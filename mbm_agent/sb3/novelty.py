"""An exploration bonus for games whose reward is rarely seen: :class:`EpisodicNoveltyBonus`.

Why. Some games pay only at a goal that a random policy almost never reaches:
BabyAI's GoToObjMaze hides the object in a 3x3 maze of rooms behind closed doors, and
its ~540-step episodes mostly time out, so PPO (with the whole from-scratch recipe)
scored 0 at every evaluation up to 150k steps: there was nothing to learn from. An
episodic novelty bonus pays the agent for what it has not seen yet in the current
episode: each step's reward becomes

    r + coef * [the new observation is the episode's first sight of it]

Only first sights pay (BeBold's episodic restriction, Zhang et al. 2021). Measured on
corridors with the goal at the far end (the test of this module): on 48 cells with 96
steps an episode, PPO with the bonus walked to the goal in all of the last 50 training
episodes after 12k steps in each of 4 seeds, against 1 seed of 4 without it; on 24
cells, a bonus of ``coef / sqrt(n)`` for the n-th sight (the episodic-count form) left
PPO at 0-8% after 60k steps (seed 0), where the first-sight bonus got 100% by 10k:
revisits that still pay leave too little between walking on and walking back.
Restricting it to the episode keeps the bonus meaningful for the whole of training:
each episode pays again for covering the level, and a policy that walks in circles
earns nothing more. It needs nothing but the observations: no game internals (the agent's
position is not read), no expert, no labels.

What is counted: the exact observation of the keys with integer dtypes (frames,
symbolic grids, token ids), hashed. Keys with float dtypes (audio features, continuous
vectors) are left out: their exact values seldom repeat, which would pay a constant
bonus for every step and none for exploring.

The wrapper sits above ``VecMonitor``, so the episode returns and success rates that
training logs are the game's own; only the algorithm sees the bonus (reward
prediction, where it is on, predicts the sum). Each step's bonus is also in
``info["novelty_bonus"]``, and training logs its mean per step as
``rollout/novelty_bonus``. What was seen is kept per episode only, so a
resumed run starts its episodes afresh and loses nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from mbm_agent.encoding.values import is_finite_number


def counted_keys(space: spaces.Space[Any]) -> list[str | None]:
    """The observation keys the bonus counts: those with integer dtypes.

    Args:
        space: The env's observation space (a ``Dict``, or one space).

    Returns:
        Key names of a ``Dict`` space, or ``[None]`` for a plain integer ``Box``.

    Raises:
        ValueError: When no key has an integer dtype (naming each key's dtype).
    """
    items: list[tuple[str | None, spaces.Space[Any]]]
    items = list(space.spaces.items()) if isinstance(space, spaces.Dict) else [(None, space)]
    keys = [
        key
        for key, sub in items
        if isinstance(sub, spaces.Box | spaces.MultiDiscrete | spaces.MultiBinary | spaces.Discrete)
        and sub.dtype is not None
        and np.issubdtype(sub.dtype, np.integer)
    ]
    if not keys:
        kinds = ", ".join(f"{k or 'observation'}: {getattr(s, 'dtype', None)}" for k, s in items)
        raise ValueError(
            f"novelty_bonus counts observations of integer dtype (frames, grids, tokens), and "
            f"this env has none ({kinds}); set novelty_bonus to 0."
        )
    return keys


class EpisodicNoveltyBonus(VecEnvWrapper):
    """Adds ``coef`` to the reward of each step whose observation is new in its episode.

    Args:
        venv: The training vector env (wrap it above ``VecMonitor``, so that logged
            episode returns stay the game's own).
        coef: Bonus for an observation seen for the first time in the episode (> 0).

    Raises:
        ValueError: For a ``coef`` that is not a finite number > 0, or an env with
            no integer-typed observation key (see :func:`counted_keys`).
    """

    def __init__(self, venv: VecEnv, coef: float) -> None:
        if not is_finite_number(coef) or coef <= 0:
            raise ValueError(f"novelty_bonus must be a finite number > 0, got {coef!r}.")
        super().__init__(venv)
        self.coef = float(coef)
        self.keys = counted_keys(venv.observation_space)
        self._seen: list[set[int]] = [set() for _ in range(self.num_envs)]
        self._paid = 0.0
        self._steps = 0

    def _key(self, obs: Any, index: int | None = None) -> int:
        """Hash of one env's observation (``index`` into a batch, or a single one)."""
        parts = []
        for key in self.keys:
            value = obs if key is None else obs[key]
            row = value if index is None else value[index]
            parts.append(np.ascontiguousarray(row).tobytes())
        return hash(b"\x00".join(parts))

    def _visit(self, env: int, key: int) -> float:
        """Bonus for env ``env`` seeing ``key``: ``coef`` the first time in its episode, else 0."""
        seen = self._seen[env]
        if key in seen:
            return 0.0
        seen.add(key)
        return self.coef

    def reset(self) -> VecEnvObs:
        """The wrapped env's first observations, each counted as its episode's first."""
        obs = self.venv.reset()
        self._seen = [set() for _ in range(self.num_envs)]
        for i in range(self.num_envs):
            self._visit(i, self._key(obs, i))
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        """The wrapped env's step, its rewards plus each env's novelty bonus.

        A step that ends an episode is paid for its last observation (the
        ``terminal_observation``, judged in the episode that ends); the next
        episode then starts with only its first observation seen.
        """
        obs, rewards, dones, infos = self.venv.step_wait()
        bonus: NDArray[np.float32] = np.zeros(self.num_envs, dtype=np.float32)
        for i in range(self.num_envs):
            if dones[i]:
                last = infos[i].get("terminal_observation")
                if last is not None:
                    bonus[i] = self._visit(i, self._key(last))
                self._seen[i] = set()
                self._visit(i, self._key(obs, i))
            else:
                bonus[i] = self._visit(i, self._key(obs, i))
            infos[i]["novelty_bonus"] = float(bonus[i])
        self._paid += float(bonus.sum())
        self._steps += self.num_envs
        return obs, rewards + bonus, dones, infos

    def pop_mean_bonus(self) -> float | None:
        """Mean bonus per env step since the last call (``None`` before any step)."""
        if not self._steps:
            return None
        mean = self._paid / self._steps
        self._paid, self._steps = 0.0, 0
        return mean
