"""SB3's rollout buffer with cheaper minibatches: :class:`MultimodalRolloutBuffer`."""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples
from stable_baselines3.common.vec_env.vec_normalize import VecNormalize
from torch import Tensor


class MultimodalRolloutBuffer(DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` with minibatches gathered by torch, copied once.

    SB3 gathers each minibatch with numpy fancy indexing (a copy) and then
    copies it again into a tensor (``th.tensor``). Here each stored array is
    viewed as a tensor and the minibatch rows are gathered with ``index_select``
    straight into the minibatch tensor: one copy, by torch's parallel kernels.
    For a PPO minibatch of 256 64x64 frames that is a 3 MB copy fewer. The
    samples are the same tensors SB3's buffer yields (same dtypes; actions as
    float32). :func:`mbm_agent.sb3.algorithms.algorithm_kwargs` makes our trainer use it.
    """

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> DictRolloutBufferSamples:
        rows = torch.from_numpy(np.asarray(batch_inds, dtype=np.int64))

        def take(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).index_select(0, rows).to(self.device)

        return DictRolloutBufferSamples(
            observations={key: take(obs) for key, obs in self.observations.items()},
            actions=take(self.actions).float(),
            old_values=take(self.values).flatten(),
            old_log_prob=take(self.log_probs).flatten(),
            advantages=take(self.advantages).flatten(),
            returns=take(self.returns).flatten(),
        )
