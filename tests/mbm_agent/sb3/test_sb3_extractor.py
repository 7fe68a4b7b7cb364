from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecTransposeImage

from mbm_agent import EncoderConfig, MultimodalEncoder, MultimodalExtractor, make_minigrid_env


def _sb3_view(space: spaces.Dict) -> spaces.Dict:
    """The space SB3's policy sees after VecTransposeImage."""
    return spaces.Dict(
        {
            k: VecTransposeImage.transpose_space(v, k)
            if is_image_space(v) and np.argmin(v.shape) != 0
            else v
            for k, v in space.spaces.items()
        }
    )


@pytest.mark.parametrize("fusion", ["concat", "film", "attention", "gated"])
@pytest.mark.parametrize("normalize_images", [True, False])
@pytest.mark.parametrize("text_multidiscrete", [False, True])
def test_extractor_equals_raw_encoder_on_env_observations(
    space_factory, obs_factory, fusion, normalize_images, text_multidiscrete
):
    raw_space = space_factory(
        ("image", "text", "audio", "direction"), text_multidiscrete=text_multidiscrete
    )
    # MiniGrid-like grid: Box(0, 255) uint8, so SB3 transposes it and divides it by 255.
    raw_space = spaces.Dict(
        {**raw_space.spaces, "symbolic_grid": spaces.Box(0, 255, (5, 5, 3), dtype=np.uint8)}
    )
    sb3_space = _sb3_view(raw_space)
    assert sb3_space["image"].shape == (3, 16, 16)
    assert sb3_space["symbolic_grid"].shape == (3, 5, 5)

    extractor = MultimodalExtractor(
        sb3_space, normalize_images=normalize_images, fusion=fusion, features_dim=32
    )
    raw = MultimodalEncoder(raw_space, EncoderConfig(fusion=fusion, features_dim=32))
    raw.load_state_dict(extractor.encoder.state_dict())
    extractor.eval()
    raw.eval()

    obs = obs_factory(raw_space, 6)
    obs["symbolic_grid"] = obs["symbolic_grid"] % 11
    sb3_obs = {
        k: v.permute(0, 3, 1, 2) if k in ("image", "symbolic_grid") else v for k, v in obs.items()
    }
    for direction in (sb3_obs["direction"], sb3_obs["direction"][:, None]):  # rollout vs buffer
        pre = preprocess_obs(
            {**sb3_obs, "direction": direction}, sb3_space, normalize_images=normalize_images
        )
        torch.testing.assert_close(extractor(pre), raw(obs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("normalize_images", [True, False])
def test_normalize_images_mismatch_is_caught(space_factory, obs_factory, normalize_images):
    space = _sb3_view(space_factory(("image", "text")))
    extractor = MultimodalExtractor(space, normalize_images=normalize_images)
    obs = obs_factory(space, 4)
    # The policy did the opposite of what the extractor was told.
    wrong = preprocess_obs(obs, space, normalize_images=not normalize_images)
    with pytest.raises(ValueError, match="normalize_images"):
        extractor(wrong)
    right = preprocess_obs(obs, space, normalize_images=normalize_images)
    assert extractor(right).shape == (4, extractor.features_dim)


def test_extractor_kwargs_are_validated(space_factory):
    space = space_factory(("image", "text"))
    with pytest.raises(ValueError, match="did you mean 'fusion'"):
        MultimodalExtractor(space, fuson="film")
    ext = MultimodalExtractor(space, config={"features_dim": 40}, fusion="gated")
    assert ext.features_dim == 40 and ext.encoder.config.fusion == "gated"


def _vec_env(env_factory, n: int = 2, **kwargs) -> DummyVecEnv:
    return DummyVecEnv([lambda: env_factory(**kwargs) for _ in range(n)])


@pytest.mark.parametrize("fusion", ["concat", "film", "attention", "gated"])
def test_ppo_learns_with_every_fusion(env_factory, fusion):
    model = PPO(
        "MultiInputPolicy",
        _vec_env(env_factory),
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs=dict(
            features_extractor_class=MultimodalExtractor,
            features_extractor_kwargs=dict(fusion=fusion, features_dim=32),
        ),
        seed=0,
        device="cpu",
    )
    before = [p.detach().clone() for p in model.policy.features_extractor.parameters()]
    model.learn(128)
    after = list(model.policy.features_extractor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("algo", ["A2C", "DQN", "RecurrentPPO"])
def test_other_algorithms_learn(env_factory, algo):
    kwargs = dict(
        policy_kwargs=dict(
            features_extractor_class=MultimodalExtractor,
            features_extractor_kwargs=dict(features_dim=32, modality_dropout=0.2),
        ),
        seed=0,
        device="cpu",
    )
    env = _vec_env(env_factory)
    if algo == "A2C":
        model = A2C("MultiInputPolicy", env, n_steps=8, **kwargs)
    elif algo == "DQN":
        model = DQN(
            "MultiInputPolicy",
            env,
            buffer_size=500,
            learning_starts=16,
            batch_size=16,
            train_freq=4,
            **kwargs,
        )
    else:
        sb3_contrib = pytest.importorskip("sb3_contrib")
        model = sb3_contrib.RecurrentPPO(
            "MultiInputLstmPolicy",
            env,
            n_steps=32,
            batch_size=32,
            n_epochs=1,
            **kwargs,
        )
    model.learn(96)
    obs = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2,)


def test_ppo_without_image_normalisation_multidiscrete_text_and_save_load(env_factory, tmp_path):
    env = _vec_env(env_factory, text_multidiscrete=True)
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs=dict(
            normalize_images=False,
            features_extractor_class=MultimodalExtractor,
            features_extractor_kwargs=dict(normalize_images=False, fusion="film"),
        ),
        seed=0,
        device="cpu",
    )
    model.learn(64)
    obs = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)


def test_babyai_goto_obj_trains_with_ppo():
    pytest.importorskip("minigrid")
    env = DummyVecEnv([lambda: make_minigrid_env("BabyAI-GoToObj-v0") for _ in range(2)])
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        policy_kwargs=dict(
            features_extractor_class=MultimodalExtractor,
            features_extractor_kwargs=dict(fusion="film", features_dim=64),
        ),
        seed=0,
        device="cpu",
    )
    encoder = model.policy.features_extractor.encoder
    assert encoder.modalities == {
        "direction": "vector",
        "symbolic_grid": "symbolic_grid",
        "text": "text",
    }
    assert encoder.encoders["symbolic_grid"].value_scale == 255.0  # SB3 divides the grid
    model.learn(256)
    assert model.num_timesteps >= 256


def test_rollout_buffer_yields_what_sb3s_buffer_yields():
    """MultimodalRolloutBuffer: the same minibatches (values, dtypes, shapes) as SB3's."""
    from stable_baselines3.common.buffers import DictRolloutBuffer

    from mbm_agent.sb3 import MultimodalRolloutBuffer

    obs_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "text": spaces.Box(0, 50, (5,), np.int64),
            "audio": spaces.Box(-5.0, 5.0, (2, 4, 3), np.float32),
        }
    )
    action_space = spaces.Discrete(4)
    n_steps, n_envs = 6, 3
    rng = np.random.default_rng(0)
    buffers = [
        cls(n_steps, obs_space, action_space, device="cpu", n_envs=n_envs)
        for cls in (DictRolloutBuffer, MultimodalRolloutBuffer)
    ]
    for _ in range(n_steps):
        obs = {k: np.stack([s.sample() for _ in range(n_envs)]) for k, s in obs_space.items()}
        action = rng.integers(0, 4, (n_envs, 1))
        reward = rng.normal(size=n_envs).astype(np.float32)
        start = rng.random(n_envs) < 0.2
        value, log_prob = torch.randn(n_envs, 1), torch.randn(n_envs)
        for buf in buffers:
            buf.add(obs, action, reward, start, value, log_prob)
    last_values = torch.randn(n_envs, 1)
    for buf in buffers:
        buf.compute_returns_and_advantage(last_values, np.zeros(n_envs, bool))
    for seed in range(3):
        batches = []
        for buf in buffers:
            np.random.seed(seed)  # noqa: NPY002 (SB3 permutes with the global generator)
            batches.append(list(buf.get(batch_size=4)))
        assert len(batches[0]) == len(batches[1]) == 5  # 18 samples: 4 x 4 + 2
        for theirs, ours in zip(*batches, strict=True):
            for key in obs_space:
                a, b = theirs.observations[key], ours.observations[key]
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
            for field in ("actions", "old_values", "old_log_prob", "advantages", "returns"):
                a, b = getattr(theirs, field), getattr(ours, field)
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), field


def test_trainer_uses_the_rollout_buffer(tmp_path):
    from mbm_agent.sb3 import MultimodalRolloutBuffer
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.envs import make_train_env
    from mbm_agent.training.trainer import build_algorithm

    cfg = resolve_config("mbm/ModalityProbe-v0", overrides={"n_envs": 2, "runs_dir": str(tmp_path)})
    venv, _ = make_train_env(cfg, seed=0)
    try:
        model = build_algorithm(cfg, venv, None)
        assert type(model.rollout_buffer) is MultimodalRolloutBuffer
        model.learn(2 * model.n_steps * cfg.n_envs)  # collects and trains from it
    finally:
        venv.close()


def _twin_policies(
    action_space: spaces.Space,
) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """SB3's MultiInputActorCriticPolicy and ours, with the same weights."""
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from mbm_agent.sb3 import MultimodalActorCriticPolicy, policy_kwargs_for

    obs_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "text": spaces.Box(0, 9, (4,), np.int64),
            "audio": spaces.Box(-5.0, 5.0, (2, 8, 4), np.float32),
        }
    )
    kwargs = policy_kwargs_for(EncoderConfig(), {}, {"net_arch": [32]})
    torch.manual_seed(0)
    theirs = MultiInputActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, **kwargs)
    ours = MultimodalActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    obs_space.seed(0)
    batch = [obs_space.sample() for _ in range(64)]
    obs = {k: torch.as_tensor(np.stack([o[k] for o in batch])) for k in obs_space}
    return theirs, ours, obs


def test_policy_acts_and_evaluates_as_sb3s_policy():
    """MultimodalActorCriticPolicy: SB3's actions, values, log-probs, entropies and gradients."""
    theirs, ours, obs = _twin_policies(spaces.Discrete(5))
    with torch.no_grad():
        for deterministic in (True, False):
            for seed in range(5):
                results = []
                for policy in (theirs, ours):
                    torch.manual_seed(seed)
                    results.append(policy(obs, deterministic=deterministic))
                (a1, v1, lp1), (a2, v2, lp2) = results
                assert a1.shape == a2.shape == (64,) and torch.equal(a1, a2)
                torch.testing.assert_close(v1, v2)
                torch.testing.assert_close(lp1, lp2)
        assert len(torch.unique(a2)) > 1  # sampled, not argmax
    actions = torch.arange(64) % 5
    grads = []
    for policy in (theirs, ours):
        policy.zero_grad()
        values, log_prob, entropy = policy.evaluate_actions(obs, actions.float())
        (values.sum() + log_prob.sum() + 0.1 * entropy.sum()).backward()
        grads.append(
            {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        )
        assert values.shape == (64, 1) and log_prob.shape == entropy.shape == (64,)
    theirs_out = theirs.evaluate_actions(obs, actions.float())
    ours_out = ours.evaluate_actions(obs, actions.float())
    for a, b in zip(theirs_out, ours_out, strict=True):
        torch.testing.assert_close(a, b)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_policy_leaves_other_action_spaces_to_sb3():
    theirs, ours, obs = _twin_policies(spaces.Box(-1.0, 1.0, (2,), np.float32))
    with torch.no_grad():
        torch.manual_seed(3)
        a1, v1, lp1 = theirs(obs)
        torch.manual_seed(3)
        a2, v2, lp2 = ours(obs)
    assert a2.shape == (64, 2)
    for a, b in ((a1, a2), (v1, v2), (lp1, lp2)):
        torch.testing.assert_close(a, b)
    for a, b in zip(theirs.evaluate_actions(obs, a1), ours.evaluate_actions(obs, a1), strict=True):
        torch.testing.assert_close(a, b)


def test_trainer_uses_our_policy_and_fused_adam_sb3_baseline_stays_sb3s(tmp_path):
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from mbm_agent.sb3 import MultimodalActorCriticPolicy
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.envs import make_train_env
    from mbm_agent.training.trainer import build_algorithm

    for extractor, policy_type in (
        ("mbm", MultimodalActorCriticPolicy),
        ("sb3", MultiInputActorCriticPolicy),
    ):
        cfg = resolve_config(
            "mbm/ModalityProbe-v0",
            overrides={"n_envs": 2, "runs_dir": str(tmp_path), "extractor": extractor},
        )
        venv, _ = make_train_env(cfg, seed=0)
        try:
            model = build_algorithm(cfg, venv, None)
        finally:
            venv.close()
        assert type(model.policy) is policy_type
        if extractor == "mbm":
            assert model.policy.optimizer.param_groups[0]["fused"] is True


def test_optimizer_choice_in_the_config_is_kept():
    """A config naming foreach (as runs made before fused Adam do) keeps it; fused is not added."""
    from mbm_agent.sb3 import fast_adam, policy_kwargs_for

    assert fast_adam() == {"fused": True}  # torch >= 2.4 here
    assert policy_kwargs_for(EncoderConfig(), {}, {})["optimizer_kwargs"] == {"fused": True}
    kept = policy_kwargs_for(EncoderConfig(), {}, {"optimizer_kwargs": {"foreach": True}})
    assert kept["optimizer_kwargs"] == {"foreach": True}
    import envs

    env = DummyVecEnv([lambda: envs.make("mbm/ModalityProbe-v0")])
    model = PPO("MultiInputPolicy", env, policy_kwargs=kept, n_steps=8, batch_size=8, device="cpu")
    group = model.policy.optimizer.param_groups[0]
    assert group["foreach"] is True and not group["fused"]


def test_readme_sb3_snippets_build_what_they_say():
    """The README's SB3 code blocks run and give our policy, buffer, wrapper and fused Adam."""
    import re
    from pathlib import Path

    from mbm_agent.sb3 import KeepChannelsLast, MultimodalActorCriticPolicy, MultimodalRolloutBuffer

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("## The encoder in your own code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    model = namespace["model"]
    try:
        assert type(model.policy) is MultimodalActorCriticPolicy
        assert type(model.rollout_buffer) is MultimodalRolloutBuffer
        assert isinstance(model.get_env(), KeepChannelsLast)
        assert model.policy.optimizer.param_groups[0]["fused"] is True
        actions, _ = model.predict(model.get_env().reset())
        assert actions.shape == (32,)
    finally:
        namespace["venv"].close()
