"""A vector-env wrapper that keeps SB3 from transposing frames: :class:`KeepChannelsLast`."""

from __future__ import annotations

from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecTransposeImage
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


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
