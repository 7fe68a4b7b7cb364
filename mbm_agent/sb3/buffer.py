"""SB3's rollout buffer with cheaper minibatches: :class:`MultimodalRolloutBuffer`."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.vec_env.vec_normalize import VecNormalize
from torch import Tensor


class MultimodalRolloutSamples(NamedTuple):
    """SB3's ``DictRolloutBufferSamples`` fields (same names, same order), plus ours.

    Attributes:
        rewards: ``(B,)`` reward of each step, as the buffer received it (SB3 adds
            the discounted value of the last observation to the reward of a
            truncated step).
        episode_ends: ``(B,)`` 1.0 where the step ended its episode (terminated or
            truncated), else 0.0.
        episode_starts: ``(B,)`` 1.0 where the step started an episode (policies
            with memory only, else None).
        states: ``(B / L, memory)`` recurrent state each sequence of ``L`` steps
            started from in the rollout (policies with memory only, else None).
    """

    observations: dict[str, Tensor]
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    rewards: Tensor
    episode_ends: Tensor
    episode_starts: Tensor | None = None
    states: Tensor | None = None


class MultimodalRolloutBuffer(DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` with minibatches gathered by torch, copied once.

    SB3 gathers each minibatch with numpy fancy indexing (a copy) and then
    copies it again into a tensor (``th.tensor``). Here each stored array is
    viewed as a tensor and the minibatch rows are gathered with ``index_select``
    straight into the minibatch tensor: one copy, by torch's parallel kernels.
    For a PPO minibatch of 256 64x64 frames that is a 3 MB copy fewer. The
    samples are the same tensors SB3's buffer yields (same dtypes; actions as
    float32), plus each step's reward and whether it ended its episode
    (:class:`MultimodalRolloutSamples`), which
    :class:`~mbm_agent.sb3.ppo.MultimodalPPO`'s reward prediction learns from.
    :func:`mbm_agent.sb3.algorithms.algorithm_kwargs` makes our trainer use it.

    For a policy with memory (``memory > 0``) the buffer also stores the
    recurrent state each step started from, and minibatches are whole sequences:
    ``sequence_length`` consecutive steps of one env (the rollout's ``n_steps``
    cut into equal pieces), in random order, each with the state it started from.

    Args:
        *args: SB3's ``DictRolloutBuffer`` arguments.
        memory: Size of the policy's recurrent state (0: none).
        sequence_length: Steps per training sequence (memory only; must divide
            the rollout's ``n_steps``).
        **kwargs: SB3's ``DictRolloutBuffer`` keyword arguments.
    """

    episode_ends: np.ndarray
    states: np.ndarray

    def __init__(
        self, *args: Any, memory: int = 0, sequence_length: int = 16, **kwargs: Any
    ) -> None:
        self.memory = int(memory)
        self.sequence_length = int(sequence_length)
        super().__init__(*args, **kwargs)
        if self.memory and (self.sequence_length < 1 or self.buffer_size % self.sequence_length):
            raise ValueError(
                f"sequence_length={self.sequence_length} must divide n_steps={self.buffer_size} "
                "(training sequences are equal pieces of each env's rollout)."
            )

    def reset(self) -> None:
        """Empty the buffer (SB3's arrays plus the episode-end flags and states)."""
        super().reset()
        self.episode_ends = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        if self.memory:
            self.states = np.zeros((self.buffer_size, self.n_envs, self.memory), np.float32)

    def add(self, *args: Any, state: Tensor | None = None, **kwargs: Any) -> None:
        """Store one step; its ``episode_start`` flags end the previous step's episodes.

        Args:
            *args: SB3's ``add`` arguments (obs, action, reward, episode_start, value, log_prob).
            state: With memory, the ``(n_envs, memory)`` state the step started from
                (before its episode starts reset it).
            **kwargs: SB3's ``add`` keyword arguments.
        """
        if self.pos > 0:
            start = kwargs["episode_start"] if "episode_start" in kwargs else args[3]
            self.episode_ends[self.pos - 1] = np.asarray(start, dtype=np.float32)
        if self.memory:
            if state is None:
                raise ValueError("A buffer with memory needs each step's recurrent state.")
            self.states[self.pos] = state.detach().cpu().numpy()
        super().add(*args, **kwargs)

    def compute_returns_and_advantage(self, last_values: Tensor, dones: np.ndarray) -> None:
        """SB3's GAE; ``dones`` of the last step also end its episodes."""
        self.episode_ends[self.buffer_size - 1] = np.asarray(dones, dtype=np.float32)
        super().compute_returns_and_advantage(last_values, dones)

    # MultimodalRolloutSamples has SB3's DictRolloutBufferSamples fields plus ours; a
    # NamedTuple cannot subclass another, so the two are unrelated types to mypy.
    def get(  # type: ignore[override]
        self, batch_size: int | None = None
    ) -> Generator[MultimodalRolloutSamples, None, None]:
        """Minibatches (SB3's ``get``, which flattens SB3's arrays once; ours too).

        With memory: minibatches of whole sequences (see the class docstring).
        """
        if not self.generator_ready:
            self.rewards = self.swap_and_flatten(self.rewards)
            self.episode_ends = self.swap_and_flatten(self.episode_ends)
            if self.memory:
                self.episode_starts = self.swap_and_flatten(self.episode_starts)
                self.states = self.swap_and_flatten(self.states)
        if not self.memory:
            # SB3's get yields what our _get_samples returns.
            yield from super().get(batch_size)  # type: ignore[misc]
            return
        if not self.generator_ready:
            for key, obs in self.observations.items():
                self.observations[key] = self.swap_and_flatten(obs)
            for name in ("actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        total = self.buffer_size * self.n_envs
        length = self.sequence_length
        # Flattened env by env, so sequence k is rows k*L .. k*L + L - 1 of one env.
        # numpy's global generator, as SB3's own buffers: set_random_seed seeds it.
        order = np.random.permutation(total // length)  # noqa: NPY002
        per_batch = max(1, (total if batch_size is None else batch_size) // length)
        steps = np.arange(length)
        for i in range(0, len(order), per_batch):
            first = order[i : i + per_batch] * length
            yield self._get_samples((first[:, None] + steps).ravel(), sequence_starts=first)

    # As get (and an extra keyword, sequence_starts).
    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: np.ndarray,
        env: VecNormalize | None = None,
        sequence_starts: np.ndarray | None = None,
    ) -> MultimodalRolloutSamples:
        rows = torch.from_numpy(np.asarray(batch_inds, dtype=np.int64))

        def take(array: np.ndarray, index: Tensor = rows) -> Tensor:
            return torch.from_numpy(array).index_select(0, index).to(self.device)

        starts = states = None
        if sequence_starts is not None:
            starts = take(self.episode_starts).flatten()
            states = take(self.states, torch.from_numpy(sequence_starts.astype(np.int64)))
        return MultimodalRolloutSamples(
            observations={key: take(obs) for key, obs in self.observations.items()},
            actions=take(self.actions).float(),
            old_values=take(self.values).flatten(),
            old_log_prob=take(self.log_probs).flatten(),
            advantages=take(self.advantages).flatten(),
            returns=take(self.returns).flatten(),
            rewards=take(self.rewards).flatten(),
            episode_ends=take(self.episode_ends).flatten(),
            episode_starts=starts,
            states=states,
        )
