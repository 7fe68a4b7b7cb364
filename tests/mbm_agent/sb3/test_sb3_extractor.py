from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecTransposeImage

from envs.sb3 import SB3VecEnv
from mbm_agent import (
    FUSION_MODES,
    EncoderConfig,
    MultimodalEncoder,
    MultimodalExtractor,
    make_minigrid_env,
)
from mbm_agent.sb3.extractor import raw_observations

PROBE = "mbm/ModalityProbe-v0"


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
def test_raw_observations_undo_preprocess_obs(normalize_images: bool) -> None:
    """Every space SB3 preprocesses comes back exactly, in its own dtype."""
    space = spaces.Dict(
        {
            "frame": spaces.Box(0, 255, (3, 6, 6), dtype=np.uint8),  # divided by 255
            "grid": spaces.Box(0, 9, (4, 4, 2), dtype=np.uint8),  # not an SB3 image
            "ids": spaces.Box(0, 30, (5,), dtype=np.int64),
            "wide": spaces.Box(-1.0, 1.0, (3,), dtype=np.float64),
            "discrete": spaces.Discrete(5),
            "multi": spaces.MultiDiscrete([3, 7, 2]),
            "binary": spaces.MultiBinary(4),
        }
    )
    space.seed(0)
    samples = [space.sample() for _ in range(6)]
    obs = {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in space}
    obs["discrete"] = obs["discrete"].reshape(-1, 1)  # as SB3's buffers store it
    back = raw_observations(
        preprocess_obs(obs, space, normalize_images=normalize_images), space, normalize_images
    )
    for key, value in obs.items():
        expected = value.float() if space[key].dtype.kind in "fb" or key == "binary" else value
        assert torch.equal(back[key].reshape(value.shape).to(expected.dtype), expected), key
        if key in ("frame", "grid", "ids", "discrete", "multi"):
            assert back[key].dtype == value.dtype, key


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


def _probe_success(policy: Any, algo: str, vocabulary: Any, cue: str) -> float:
    """Held-out greedy success of an SB3 policy on ModalityProbe (one-step episodes)."""
    from mbm_agent.evaluation import evaluate_agent
    from mbm_agent.training.agent import Agent

    agent = Agent(policy, {"algo": algo}, vocabulary)
    report = evaluate_agent(agent, PROBE, {"cue": cue}, episodes=256, n_envs=64, baselines=False)
    return float(report["success"]["rate"])


@pytest.mark.slow
@pytest.mark.parametrize("fusion", sorted(FUSION_MODES))
def test_ppo_learns_the_probe_with_every_fusion(fusion: str, sb3_logger: Any) -> None:
    """Our trainer's policy (raw observations into the encoder) learns the text cue with each mode.

    Measured on 2 CPU cores (seed 0, cue text): every mode at 100% held-out success
    after 2048 steps (concat at 75% after 1024); chance is 25%.
    """
    from mbm_agent.sb3 import policy_class, policy_kwargs_for

    venv = SB3VecEnv(PROBE, 32, cue="text")
    config = EncoderConfig(fusion=fusion)
    model = PPO(
        policy_class("ppo"),
        venv,
        n_steps=16,
        batch_size=256,
        learning_rate=5e-4,
        seed=0,
        policy_kwargs=policy_kwargs_for(config, {}, {"net_arch": [64]}),
        device="cpu",
    )
    model.set_logger(sb3_logger)
    model.learn(2048)
    success = _probe_success(model.policy, "ppo", venv.game.vocabulary, "text")
    assert success >= 0.9, f"{fusion}: {success:.3f} held-out success (chance 0.25)"


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "steps"), [("a2c", 3072), ("dqn", 2048), ("recurrent_ppo", 2048)])
def test_sb3s_own_policies_learn_the_probe_through_the_extractor(
    algo: str, steps: int, sb3_logger: Any
) -> None:
    """SB3's policies preprocess (frames divided by 255, ids as floats); the extractor undoes it.

    ``MultiInputPolicy`` with SB3's default ``normalize_images=True``. Measured on
    2 CPU cores (seed 0, cue image): A2C 98% after 2048 steps and 100% after 3072,
    DQN 100% after 1024, RecurrentPPO 100% after 2048; chance is 25%.
    """
    venv = SB3VecEnv(PROBE, 16, cue="image")
    policy_kwargs: dict[str, Any] = dict(
        features_extractor_class=MultimodalExtractor,
        features_extractor_kwargs=dict(features_dim=64),
        net_arch=[64],
    )
    common: dict[str, Any] = dict(seed=0, device="cpu", policy_kwargs=policy_kwargs)
    if algo == "a2c":
        model: Any = A2C("MultiInputPolicy", venv, n_steps=4, learning_rate=1e-3, **common)
    elif algo == "dqn":
        model = DQN(
            "MultiInputPolicy",
            venv,
            buffer_size=4096,
            learning_starts=256,
            batch_size=64,
            train_freq=1,
            target_update_interval=256,
            exploration_fraction=0.5,
            learning_rate=1e-3,
            gamma=0.0,
            **common,
        )
    else:
        sb3_contrib = pytest.importorskip("sb3_contrib")
        policy_kwargs["lstm_hidden_size"] = 32
        model = sb3_contrib.RecurrentPPO(
            "MultiInputLstmPolicy", venv, n_steps=16, batch_size=256, learning_rate=5e-4, **common
        )
    extractors = [m for m in model.policy.modules() if isinstance(m, MultimodalExtractor)]
    assert extractors and all(e.normalize_images for e in extractors)
    model.set_logger(sb3_logger)
    model.learn(steps)
    success = _probe_success(model.policy, algo, venv.game.vocabulary, "image")
    assert success >= 0.9, f"{algo}: {success:.3f} held-out success (chance 0.25)"


def test_ppo_without_image_normalisation_multidiscrete_text_and_save_load(
    env_factory, tmp_path, sb3_logger
):
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
    model.set_logger(sb3_logger)
    model.learn(64)
    obs = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)


def test_babyai_grid_and_mission_survive_sb3s_preprocessing(sb3_logger: Any) -> None:
    """MiniGrid's grid is a Box(0, 255) frame to SB3, so SB3 divides it by 255 (and floats the ids).

    The extractor turns both back into the env's integers, so SB3's own policy and
    the raw encoder compute the same features, before and after PPO updates.
    """
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
    extractor = model.policy.features_extractor
    space = model.policy.observation_space
    assert extractor.encoder.modalities == {
        "direction": "vector",
        "symbolic_grid": "symbolic_grid",
        "text": "text",
    }
    assert is_image_space(space["symbolic_grid"])  # what SB3 divides by 255
    model.set_logger(sb3_logger)
    model.learn(256)

    obs = {k: torch.as_tensor(v) for k, v in model.get_env().reset().items()}  # transposed
    obs["direction"] = obs["direction"].reshape(-1, 1)  # as SB3 stores Discrete keys
    preprocessed = preprocess_obs(obs, space, normalize_images=True)
    assert float(preprocessed["symbolic_grid"].max()) <= 1.0  # SB3 did divide
    back = raw_observations(preprocessed, space, normalize_images=True)
    for key, value in obs.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key].reshape(value.shape), value), key
    with torch.no_grad():
        torch.testing.assert_close(
            model.policy.extract_features(obs), extractor.encoder(obs), atol=1e-5, rtol=1e-5
        )


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


def test_trainer_uses_the_rollout_buffer(tmp_path, sb3_logger):
    from mbm_agent.sb3 import MultimodalRolloutBuffer
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.envs import make_train_env
    from mbm_agent.training.trainer import build_algorithm

    cfg = resolve_config("mbm/ModalityProbe-v0", overrides={"n_envs": 2, "runs_dir": str(tmp_path)})
    venv, _ = make_train_env(cfg, seed=0)
    try:
        model = build_algorithm(cfg, venv, None)
        assert type(model.rollout_buffer) is MultimodalRolloutBuffer
        model.set_logger(sb3_logger)
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
