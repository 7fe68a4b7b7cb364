"""MultimodalPPO: plain PPO at coefficient 0, reward prediction that learns the rewards."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.sb3 import SB3VecEnv
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.sb3 import KeepChannelsLast, MultimodalRolloutBuffer, policy_kwargs_for
from mbm_agent.sb3.policy import MultimodalActorCriticPolicy
from mbm_agent.sb3.ppo import MultimodalPPO, reward_prediction_loss


def _probe(n_envs: int = 8, seed: int = 0) -> KeepChannelsLast:
    venv = SB3VecEnv("mbm/ModalityProbe-v0", n_envs, cue="text")
    venv.seed(seed)
    return KeepChannelsLast(venv)


def _kwargs(**extra: object) -> dict[str, object]:
    kwargs: dict[str, object] = dict(
        policy_kwargs=policy_kwargs_for(EncoderConfig(features_dim=32), {}, {"net_arch": [32]}),
        n_steps=16,
        batch_size=64,
        n_epochs=2,
        learning_rate=1e-3,
        seed=3,
        device="cpu",
        verbose=0,
    )
    return {**kwargs, **extra}


def test_reward_prediction_loss_weighs_episode_ends_as_all_other_steps() -> None:
    predicted = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0])
    ends = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    # others: errors 1, 0, 0, 0 -> mean 0.25; ends: error 4 -> mean 4
    assert reward_prediction_loss(predicted, rewards, ends).item() == pytest.approx(
        0.5 * 0.25 + 0.5 * 4.0
    )
    # one kind only: the plain mean
    assert reward_prediction_loss(predicted, rewards, torch.zeros(5)).item() == pytest.approx(1.0)


def test_buffer_records_rewards_and_the_steps_that_end_episodes(sb3_logger: Logger) -> None:
    """Every probe episode is one step long: every stored step ends its episode."""
    model = MultimodalPPO(
        MultimodalActorCriticPolicy,
        _probe(4),
        **_kwargs(n_steps=8, batch_size=32, rollout_buffer_class=MultimodalRolloutBuffer),
    )
    model.set_logger(sb3_logger)
    model.learn(32)
    buffer = model.rollout_buffer
    assert isinstance(buffer, MultimodalRolloutBuffer)
    samples = next(buffer.get(None))
    assert samples.episode_ends.shape == (32,)
    assert torch.all(samples.episode_ends == 1.0)
    assert set(samples.rewards.unique().tolist()) <= {0.0, 1.0}
    assert samples.rewards.sum() > 0


def test_buffer_marks_the_step_before_each_episode_start_and_the_last_dones() -> None:
    space = spaces.Dict({"x": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)})
    buffer = MultimodalRolloutBuffer(4, space, spaces.Discrete(3), n_envs=2)
    starts = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], dtype=bool)  # episode_start per step
    for t in range(4):
        buffer.add(
            {"x": np.zeros((2, 2), np.float32)},
            np.zeros((2, 1)),
            np.array([t, 10 + t], dtype=np.float32),
            starts[t],
            torch.zeros(2),
            torch.zeros(2),
        )
    buffer.compute_returns_and_advantage(torch.zeros(2), np.array([True, False]))
    samples = next(buffer.get(None))  # shuffled rows of the flattened arrays
    # Flattened env-major: env 0's four steps, then env 1's. Env 0 ends after step 1
    # (step 2 starts one) and at the last step (done); env 1 ends after step 2 only.
    assert buffer.episode_ends.ravel().tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert buffer.rewards.ravel().tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    # each sample keeps its own reward and end flag together
    pairs = sorted(zip(samples.rewards.tolist(), samples.episode_ends.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 1), (2, 0), (3, 1), (10, 0), (11, 0), (12, 1), (13, 0)]


def test_coefficient_zero_is_exactly_sb3_ppo(sb3_logger: Logger) -> None:
    trained = []
    for cls in (MultimodalPPO, PPO):  # built and trained one after the other: same seeds
        model = cls(
            MultimodalActorCriticPolicy,
            _probe(),
            rollout_buffer_class=MultimodalRolloutBuffer,
            **_kwargs(),
        )
        model.set_logger(sb3_logger)
        model.learn(256)
        trained.append(model.policy.state_dict())
    ours, theirs = trained
    assert "reward_net.weight" not in ours
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_reward_head_learns_which_answer_pays(sb3_logger: Logger) -> None:
    """On the text-cued probe the reward of each answer depends only on the text:
    after a short training the head predicts ~1 for the paying answer, ~0 for the others."""
    model = MultimodalPPO(
        MultimodalActorCriticPolicy, _probe(16), aux_reward_coef=1.0, **_kwargs(n_steps=8)
    )
    model.set_logger(sb3_logger)
    model.learn(6_000)
    policy = model.policy
    assert isinstance(policy, MultimodalActorCriticPolicy)
    env = SB3VecEnv("mbm/ModalityProbe-v0", 256, cue="text")
    env.seed(12345)
    obs = env.reset()
    paying = env.venv.expert_actions()
    with torch.no_grad():
        predicted = policy.reward_predictions(
            {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()}
        ).numpy()
    rows = np.arange(len(paying))
    right = predicted[rows, paying]
    wrong = np.delete(predicted, paying + rows * predicted.shape[1]).reshape(len(rows), -1)
    assert right.mean() > 0.7, right.mean()
    assert wrong.mean() < 0.2, wrong.mean()
    assert (right[:, None] > wrong).mean() > 0.9


def test_aux_needs_our_policy() -> None:
    with pytest.raises(ValueError, match="MultimodalActorCriticPolicy"):
        MultimodalPPO("MultiInputPolicy", _probe(), aux_reward_coef=1.0)
    with pytest.raises(ValueError, match="aux_reward_coef must be a number"):
        MultimodalPPO(MultimodalActorCriticPolicy, _probe(), aux_reward_coef=-1.0)


# ------------------------------------------------------------------------- memory
class RecallEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """A cue (one of two) shown at the first step only; at the third step the action
    must name it. A memoryless policy is right half the time; one with memory always."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"cue": spaces.Box(0.0, 1.0, (3,), np.float32)})
        self.action_space = spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        obs = np.zeros(3, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        else:
            obs[2] = self._t / 2.0  # the clock: when to answer
        return {"cue": obs}

    def reset(
        self, *, seed: int | None = None, options: dict[str, object] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._obs(), {}

    def step(
        self, action: np.int64
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, object]]:
        self._t += 1
        if self._t < 3:
            return self._obs(), 0.0, False, False, {}
        success = int(action) == self._cue
        return self._obs(), float(success), True, False, {"is_success": success}


def _recall_model(memory: int, seed: int = 0) -> MultimodalPPO:
    venv = DummyVecEnv([RecallEnv for _ in range(16)])
    venv.seed(seed)
    return MultimodalPPO(
        MultimodalActorCriticPolicy,
        venv,
        policy_kwargs=policy_kwargs_for(
            EncoderConfig(features_dim=32, vector_dim=16),
            {},
            {"net_arch": [32], "memory": memory} if memory else {"net_arch": [32]},
        ),
        n_steps=16,
        batch_size=64,
        n_epochs=4,
        learning_rate=1e-3,
        sequence_length=8,
        seed=seed,
        device="cpu",
    )


def _recall_success(model: MultimodalPPO, episodes: int = 200) -> float:
    env = RecallEnv()
    wins = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=10_000 + ep)
        state, start, done = None, np.ones(1), False
        while not done:
            batch = {k: v[None] for k, v in obs.items()}
            action, state = model.policy.predict(batch, state, start, deterministic=True)
            start = np.zeros(1)
            obs, reward, done, _, _ = env.step(np.int64(action[0]))
        wins += int(reward > 0)
    return wins / episodes


def test_sequences_replay_the_rollout_exactly(sb3_logger: Logger) -> None:
    """Before any update, the sequence pass over the stored rollout gives back the
    rollout's own log-probabilities and values: the states and resets line up."""
    model = _recall_model(memory=8)
    model.set_logger(sb3_logger)
    model.n_epochs = 0  # collect without updating
    model.learn(256)
    policy = model.policy
    assert isinstance(policy, MultimodalActorCriticPolicy)
    batches = list(model.rollout_buffer.get(64))
    assert len(batches) == 4
    for data in batches:
        assert data.states is not None and data.episode_starts is not None
        assert data.states.shape == (8, 8)
        with torch.no_grad():
            values, log_prob, _, _ = policy.evaluate_sequences(
                data.observations, data.actions.long().flatten(), data.states, data.episode_starts
            )
        torch.testing.assert_close(log_prob, data.old_log_prob, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values.flatten(), data.old_values, atol=1e-5, rtol=1e-5)
        # the recall episodes are 3 steps long: starts every 3rd step of each env
        assert data.episode_starts.sum() > 0


def test_memory_solves_recall_where_no_memory_cannot(sb3_logger: Logger) -> None:
    with_memory = _recall_model(memory=16)
    with_memory.set_logger(sb3_logger)
    with_memory.learn(12_000)
    assert _recall_success(with_memory) > 0.95
    without = _recall_model(memory=0)  # the control: the game does need memory
    without.set_logger(sb3_logger)
    without.learn(4_000)
    assert _recall_success(without) < 0.7


def test_memory_policy_refuses_stateless_calls() -> None:
    model = _recall_model(memory=8)
    obs = {"cue": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="has no recurrent state"):
        model.policy(obs)
    with pytest.raises(ValueError, match="memory must be the size"):
        _recall_model(memory=-1)
