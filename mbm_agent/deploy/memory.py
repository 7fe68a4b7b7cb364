"""The recurrent state of an exported policy with memory, carried slot by slot: :class:`SlotStates`.

An exported policy with memory takes its state as an input
(:data:`~mbm_agent.deploy.network.STATE_INPUT`) and returns the next one
(:data:`~mbm_agent.deploy.network.STATE_OUTPUT`). The runtimes
(:class:`~mbm_agent.deploy.runtime.ExportedPolicy`, the Keras twin's
:class:`~mbm_agent.deploy.keras.runtime.PolicyRunner`) hide that with one
:class:`SlotStates`, under the rules :class:`~mbm_agent.training.agent.Actor` keeps
for the torch agent: each slot of a batch is one episode; a slot starts a new one
(zeros) on the first call, after ``reset()`` or ``reset(slots)``, where a call's
``episode_start`` is set, and whenever the batch size changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


class SlotStates:
    """The recurrent state of each slot of a batch, between the calls of a runtime.

    Args:
        size: Size of one slot's state (the policy's ``memory``).

    Attributes:
        state: ``(B, size)`` float32 state after the last call (None before the first).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"A recurrent state has size >= 1, got {size}.")
        self.size = int(size)
        self.state: NDArray[np.float32] | None = None
        self._starts: NDArray[np.bool_] | None = None

    def reset(self, slots: NDArray[np.bool_] | Sequence[int] | None = None) -> None:
        """Start new episodes: in every slot (None), or in ``slots`` (indices or a mask)."""
        if slots is None:
            self.state = None
            self._starts = None
        elif self._starts is not None:
            self._starts[np.asarray(slots)] = True

    def before(
        self, batch: int, episode_start: NDArray[np.bool_] | Sequence[bool] | None = None
    ) -> NDArray[np.float32]:
        """The ``(batch, size)`` state to feed this call: zeros where an episode starts.

        Args:
            batch: The call's batch size.
            episode_start: ``(batch,)``, True where the observation starts an episode.

        Raises:
            ValueError: ``episode_start`` does not hold one flag per slot.
        """
        if self.state is None or self._starts is None or len(self.state) != batch:
            self.state = np.zeros((batch, self.size), dtype=np.float32)
            self._starts = np.ones(batch, dtype=bool)
        if episode_start is not None:
            flags = np.asarray(episode_start, dtype=bool)
            if flags.size != batch:
                raise ValueError(
                    f"episode_start has {flags.size} flags for a batch of {batch}: pass one "
                    "per observation."
                )
            self._starts |= flags.reshape(batch)
        return np.where(self._starts[:, None], np.float32(0.0), self.state).astype(np.float32)

    def after(self, state: NDArray[np.float32]) -> None:
        """Keep the state a call returned; every slot is inside its episode now."""
        self.state = np.asarray(state, dtype=np.float32).reshape(-1, self.size)
        self._starts = np.zeros(len(self.state), dtype=bool)
