"""PolicyNetwork: the SB3 policy as one raw-input torch module, and back."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3 import DQN, PPO

from envs.sb3 import SB3VecEnv
from mbm_agent.deploy.network import PolicyNetwork, UnsupportedPolicyError
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.sb3 import KeepChannelsLast, policy_kwargs_for
from mbm_agent.training.agent import policy_spec

ENV = "mbm/SoundMaze-v0"


def _model(algo, fusion, **policy_kwargs):
    venv = KeepChannelsLast(SB3VecEnv(ENV, 2))
    cfg = EncoderConfig(fusion=fusion, features_dim=64)
    model = algo(
        "MultiInputPolicy",
        venv,
        policy_kwargs=policy_kwargs_for(cfg, {}, policy_kwargs),
        device="cpu",
    )
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    spec = policy_spec(
        model.policy,
        algo=algo.__name__.lower(),
        env_id=ENV,
        env_kwargs={},
        encoder=cfg,
        modalities={},
        policy_kwargs=policy_kwargs,
        vocabulary=None,
    )
    model.policy.set_training_mode(False)
    return model, spec


@pytest.mark.parametrize("fusion", ["concat", "film", "attention", "gated"])
def test_actor_critic_matches_sb3(fusion):
    model, spec = _model(PPO, fusion)
    net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    obs = net.random_observations(200, seed=1)
    action, logits, value = net(to_tensor_obs(obs))
    with torch.no_grad():
        ot, _ = model.policy.obs_to_tensor(obs)
        ref = model.policy.get_distribution(ot).distribution.logits
        torch.testing.assert_close(torch.log_softmax(logits, 1), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            value, model.policy.predict_values(ot).squeeze(1), atol=1e-5, rtol=0
        )
    sb3_actions, _ = model.policy.predict(obs, deterministic=True)
    assert (sb3_actions == action.numpy()).all()
    assert action.dtype == torch.int64 and logits.shape == (200, net.n_actions)


def test_separate_extractors_and_dqn():
    model, spec = _model(PPO, "concat", share_features_extractor=False)
    net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    assert net.critic_encoder is not None
    obs = net.random_observations(50)
    with torch.no_grad():
        ot, _ = model.policy.obs_to_tensor(obs)
        torch.testing.assert_close(
            net(to_tensor_obs(obs))[2],
            model.policy.predict_values(ot).squeeze(1),
            atol=1e-5,
            rtol=0,
        )
    model, spec = _model(DQN, "film")
    net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    obs = net.random_observations(50)
    action, q, value = net(to_tensor_obs(obs))
    assert torch.equal(action, q.argmax(1))
    with torch.no_grad():
        ot, _ = model.policy.obs_to_tensor(obs)
        torch.testing.assert_close(q, model.policy.q_net(ot), atol=1e-5, rtol=0)
    torch.testing.assert_close(value, q.max(1).values)


def test_network_is_a_copy_and_copies_back():
    model, spec = _model(PPO, "film")
    net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    obs = to_tensor_obs(net.random_observations(20))
    before = [p.clone() for p in model.policy.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    net.copy_into_sb3_policy(model.policy)
    again = PolicyNetwork.from_sb3_policy(model.policy, spec)
    for a, b in zip(net(obs), again(obs), strict=True):
        torch.testing.assert_close(a, b)


def test_unsupported_policies_name_the_reason():
    model, spec = _model(PPO, "concat")
    with pytest.raises(UnsupportedPolicyError, match="recurrent"):
        PolicyNetwork.from_sb3_policy(model.policy, {**spec, "algo": "recurrent_ppo"})
    model, spec = _model(DQN, "concat")
    net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    with pytest.raises(UnsupportedPolicyError, match="actor-critic"):
        net.copy_into_sb3_policy(model.policy)
