"""Our encoder as an RLlib RLModule: unit tests, RLlib's own data path, and PPO learning.

The unit tests and the data-path test run in this process without a Ray cluster
(a local ``SingleAgentEnvRunner`` and ``Learner``). The learning test starts its
own local Ray cluster (``address="local"``, so parallel test processes never
share one), trains ModalityProbe with 2 env runners and evaluates the greedy
policy on held-out seeds with our env directly.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# RLlib imports TensorFlow in every process when it is installed (~7 s each on 2
# cores) although this torch module needs none of it; set before Ray starts so the
# env runners inherit it.
os.environ.setdefault("RLLIB_TEST_NO_TF_IMPORT", "1")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.rllib")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gymnasium import spaces  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModule  # noqa: E402
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner  # noqa: E402

import envs  # noqa: E402
from mbm_agent.encoding.multimodal import to_tensor_obs  # noqa: E402
from mbm_agent.evaluation import EVAL_SEED_BASE  # noqa: E402
from mbm_agent.rllib import (  # noqa: E402
    EnvCreator,
    ModuleSettings,
    MultimodalPPOModule,
    ppo_config,
    register_rllib_envs,
)
from mbm_agent.training.config import resolve_config  # noqa: E402

logging.getLogger("ray.rllib.utils.framework").setLevel(logging.ERROR)

PROBE = "mbm/ModalityProbe-v0"
# Each in-process env runner re-registers RLlib's wrapper id with Gymnasium.
RUNNER_REREGISTERS = pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0"
)


def probe_batch(n: int = 8, seed: int = 0) -> tuple[gym.vector.VectorEnv, dict[str, Any]]:
    venv = envs.make_vec(PROBE, n)
    obs, _ = venv.reset(seed=seed)
    return venv, {Columns.OBS: to_tensor_obs(obs)}


def make_module(venv: gym.vector.VectorEnv, **model_config: Any) -> MultimodalPPOModule:
    return MultimodalPPOModule(
        observation_space=venv.single_observation_space,
        action_space=venv.single_action_space,
        model_config=model_config,
    )


# ---------------------------------------------------------------------- module
@pytest.mark.parametrize("fusion", ["concat", "film", "attention"])
def test_forward_shapes_and_values_on_probe_observations(fusion: str) -> None:
    venv, batch = probe_batch(8)
    module = make_module(venv, fusion=fusion, hidden_sizes=[32])
    assert isinstance(module, RLModule)
    assert batch[Columns.OBS]["image"].dtype == torch.uint8  # raw frames, as the env emits
    n_actions = int(venv.single_action_space.n)

    for out in (module.forward_inference(batch), module.forward_exploration(batch)):
        assert out[Columns.ACTION_DIST_INPUTS].shape == (8, n_actions)
    train = module.forward_train(batch)
    assert train[Columns.ACTION_DIST_INPUTS].shape == (8, n_actions)
    assert train[Columns.EMBEDDINGS].shape == (8, module.encoder.features_dim)

    values = module.compute_values(batch)
    assert values.shape == (8,)
    assert torch.isfinite(values).all()
    # The loss passes the train pass's embeddings: same values without a second encoder pass.
    with torch.no_grad():
        torch.testing.assert_close(
            module.compute_values(batch, embeddings=train[Columns.EMBEDDINGS]), values
        )
    # RLlib's categorical distribution reads the logits.
    dist = module.get_inference_action_dist_cls().from_logits(train[Columns.ACTION_DIST_INPUTS])
    assert dist.to_deterministic().sample().shape == (8,)


def test_separate_value_encoder_and_inference_only_copies() -> None:
    venv, batch = probe_batch(4)
    full = make_module(venv, vf_share_layers=False)
    assert full.value_encoder is not None and full.value_head is not None
    assert full.get_non_inference_attributes() == ["value_encoder", "value_head"]
    assert full.compute_values(batch).shape == (4,)

    light = MultimodalPPOModule(
        observation_space=venv.single_observation_space,
        action_space=venv.single_action_space,
        model_config={"vf_share_layers": False},
        inference_only=True,
    )
    assert light.value_encoder is None and light.value_head is None
    # What RLlib sends to env runners loads into the inference-only copy, key for key.
    state = full.get_state(inference_only=True)
    assert set(state) == set(light.state_dict())
    light.set_state(state)
    torch.testing.assert_close(
        light.forward_inference(batch)[Columns.ACTION_DIST_INPUTS],
        full.forward_inference(batch)[Columns.ACTION_DIST_INPUTS],
    )
    with pytest.raises(ValueError, match="inference-only"):
        light.compute_values(batch)


def test_non_discrete_action_space_is_refused() -> None:
    venv, _ = probe_batch(2)
    with pytest.raises(ValueError, match="Discrete action spaces only"):
        MultimodalPPOModule(
            observation_space=venv.single_observation_space,
            action_space=spaces.Box(-1.0, 1.0, (2,), np.float32),
            model_config={},
        )


def test_flat_observation_space_is_refused_with_the_connector_named() -> None:
    with pytest.raises(ValueError, match="FlattenObservations"):
        MultimodalPPOModule(
            observation_space=spaces.Box(0.0, 1.0, (10,), np.float32),
            action_space=spaces.Discrete(2),
            model_config={},
        )


def test_model_config_keys() -> None:
    with pytest.raises(ValueError, match="did you mean 'fusion'"):
        ModuleSettings.from_model_config({"fusoin": "film"})
    with pytest.raises(ValueError, match="hidden_sizes"):
        ModuleSettings.from_model_config({"hidden_sizes": 64})
    with pytest.raises(ValueError, match=r"EncoderConfig\.fusion"):
        ModuleSettings.from_model_config({"fusion": "sum"})
    # RLlib's own model-config keys (merged in by RLlib) are not typos.
    settings = ModuleSettings.from_model_config(
        {"fcnet_hiddens": [256], "max_seq_len": 20, "vf_share_layers": False, "fusion": "film"}
    )
    assert settings.encoder.fusion == "film"
    assert settings.vf_share_layers is False
    assert settings.hidden_sizes == (64,)
    assert (
        ModuleSettings.from_model_config(DefaultModelConfig(vf_share_layers=False)).vf_share_layers
        is False
    )


def test_memory_is_refused_with_the_fix_not_trained_without() -> None:
    fix = r"no recurrent core.*memory=0.*mbm-agent train"
    for config in ({"memory": 8}, {"use_lstm": True}):
        with pytest.raises(ValueError, match=fix):
            ModuleSettings.from_model_config(config)
    with pytest.raises(ValueError, match="must be 0"):
        ModuleSettings.from_model_config({"memory": "8"})
    with pytest.raises(ValueError, match=fix):
        ppo_config(PROBE, memory=16)
    assert ModuleSettings.from_model_config({"memory": 0}).hidden_sizes == (64,)


# ---------------------------------------------------------------------- envs and config
def test_env_creator_makes_single_and_native_vector_envs() -> None:
    creator = pickle.loads(pickle.dumps(EnvCreator(PROBE)))  # env runners unpickle it
    env = creator({"cue": "text"})
    assert isinstance(env.observation_space, spaces.Dict)
    assert env.unwrapped.game.cue == "text"
    venv = creator({"num_envs": 3})
    assert isinstance(venv, envs.GameVectorEnv) and venv.num_envs == 3
    other = EnvCreator("CartPole-v1")({"num_envs": 2})
    assert isinstance(other, gym.vector.SyncVectorEnv) and other.num_envs == 2
    assert set(register_rllib_envs()) == set(envs.ENV_IDS)


@RUNNER_REREGISTERS
def test_env_creator_tokenises_minigrid_missions() -> None:
    pytest.importorskip("minigrid")
    env = EnvCreator("BabyAI-GoToObj-v0")({})
    assert set(env.observation_space.spaces) == {"symbolic_grid", "direction", "text"}
    obs, _ = env.reset(seed=0)
    module = MultimodalPPOModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"fusion": "film"},
    )
    batch = {Columns.OBS: to_tensor_obs({k: np.asarray(v)[None] for k, v in obs.items()})}
    assert module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].shape == (1, 7)

    # And through RLlib: a third-party id is vectorised with SyncVectorEnv copies.
    # memory=0: configs/families/BabyAI.yaml asks for a memory this module lacks.
    cfg = ppo_config("BabyAI-GoToObj-v0", num_env_runners=0, num_envs_per_env_runner=2, memory=0)
    assert cfg.gym_env_vectorize_mode == "sync"
    runner = SingleAgentEnvRunner(config=cfg)
    try:
        episodes = runner.sample(num_timesteps=8, explore=True)
    finally:
        runner.stop()
    assert sum(len(e) for e in episodes) >= 8


def test_ppo_config_takes_the_env_yaml_defaults() -> None:
    cfg = ppo_config(PROBE, num_env_runners=2, seed=3)
    # configs/mbm_ModalityProbe-v0.yaml: n_envs 32, n_steps 16, batch_size 256, lr 5e-4.
    assert cfg.train_batch_size_per_learner == 16 * 32
    assert cfg.minibatch_size == 256
    assert cfg.lr == pytest.approx(5e-4)
    assert cfg.num_envs_per_env_runner == 16
    assert cfg.gym_env_vectorize_mode == "vector_entry_point"
    assert cfg.use_kl_loss is False
    assert cfg.seed == 3
    spec = cfg.get_rl_module_spec()
    assert spec.module_class is MultimodalPPOModule
    assert spec.model_config["vf_share_layers"] is True  # ours, over PPO's auto-included False

    # memory=0: the YAML may ask for a memory this module lacks (test below).
    goto = ppo_config(
        "mbm/GoToObject-v0", num_env_runners=1, lr=1e-4, memory=0
    ).get_rl_module_spec()
    assert goto.model_config["fusion"] == "film"  # from mbm_GoToObject-v0.yaml
    assert (
        goto.model_config["image_encoder"]
        == resolve_config("mbm/GoToObject-v0").encoder.image_encoder
    )
    concat = ppo_config("mbm/GoToObject-v0", fusion="concat", memory=0).get_rl_module_spec()
    assert concat.model_config["fusion"] == "concat"
    with pytest.raises(ValueError, match=r"PPOConfig\.training"):
        ppo_config(PROBE, learning_rate=1e-3)
    with pytest.raises(ValueError, match="did you mean"):
        ppo_config(PROBE, encoder={"fusoin": "film"})


@RUNNER_REREGISTERS
def test_rllib_data_path_keeps_raw_dtypes_and_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """RLlib's default connectors (sampling and learning) hand the module raw dtypes."""
    cfg = ppo_config(PROBE, num_env_runners=0, num_envs_per_env_runner=4, seed=0)
    runner = SingleAgentEnvRunner(config=cfg)
    try:
        seen: list[dict[str, tuple[torch.dtype, tuple[int, ...]]]] = []

        def spy(module: MultimodalPPOModule, name: str) -> None:
            original = getattr(module, name)

            def wrapped(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
                obs = batch[Columns.OBS]
                seen.append({k: (v.dtype, tuple(v.shape[1:])) for k, v in obs.items()})
                return original(batch, **kwargs)

            monkeypatch.setattr(module, name, wrapped)

        assert isinstance(runner.module, MultimodalPPOModule)
        assert runner.module.inference_only
        spy(runner.module, "_forward")
        episodes = runner.sample(num_timesteps=16, explore=True)
        assert sum(len(e) for e in episodes) >= 16

        learner = cfg.build_learner(env=runner.env.unwrapped)
        module = learner.module["default_policy"]
        assert isinstance(module, MultimodalPPOModule) and module.value_head is not None
        spy(module, "_forward_train")
        before = {k: v.clone() for k, v in module.state_dict().items()}
        learner.update(
            episodes=episodes,
            timesteps={"num_env_steps_sampled_lifetime": 16},
            num_epochs=1,
            minibatch_size=16,
        )
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("encoder.") for k in changed)
        assert any(k.startswith("value_head.") for k in changed)
    finally:
        runner.stop()

    space = envs.make(PROBE).observation_space
    expected = {
        "image": (torch.uint8, space["image"].shape),
        "text": (torch.int64, space["text"].shape),
        "audio": (torch.float32, space["audio"].shape),
    }
    assert len(seen) >= 2
    assert all(s == expected for s in seen), seen


def test_import_needs_ray_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import mbm_agent\n"
        "assert 'ray' not in sys.modules, 'import mbm_agent imported ray'\n"
        "sys.modules['ray'] = None\n"
        "try:\n"
        "    import mbm_agent.rllib\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'mbm-agent[ray]'" in out.stdout


# ---------------------------------------------------------------------- learning
TRAIN_ITERATIONS = 10
EVAL_EPISODES = 512


@pytest.fixture(scope="module")
def local_ray(ray_temp_dir: Path) -> Iterator[None]:
    """A fresh local Ray cluster for this process (never a shared or running one).

    Its files (sessions, sockets, logs) go under this session's pytest folder.
    """
    if ray.is_initialized():  # left over by an earlier test in this process
        ray.shutdown()
    ray.init(
        address="local",
        _temp_dir=str(ray_temp_dir),
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        object_store_memory=200 * 1024**2,
    )
    try:
        yield
    finally:
        ray.shutdown()


def greedy_success(module: MultimodalPPOModule, episodes: int, n_envs: int = 64) -> float:
    """Held-out success of the argmax policy, on our vector env (one-step episodes)."""
    venv = envs.make_vec(PROBE, n_envs)
    hits = []
    for i in range(episodes // n_envs):
        obs, _ = venv.reset(seed=EVAL_SEED_BASE + i * n_envs)
        out = module.forward_inference({Columns.OBS: to_tensor_obs(obs)})
        actions = out[Columns.ACTION_DIST_INPUTS].argmax(-1).numpy()
        _, _, terminated, _, info = venv.step(actions)
        assert terminated.all()
        hits.append(info["success"])
    return float(np.concatenate(hits).mean())


@pytest.mark.slow
def test_rllib_ppo_learns_modality_probe(local_ray: None) -> None:
    """RLlib PPO + our module, 2 env runners: 5120 steps to ~100% held-out success.

    Measured on 2 CPU cores (training seeds 0-2, cue "image"): 100% held-out
    success after 8 iterations of 512 steps (4096 steps); the test trains 10.
    ``num_epochs=10`` as in the SB3 probe test (the YAML's 4 needs ~8k steps).
    """
    start = time.perf_counter()
    algo = ppo_config(PROBE, num_env_runners=2, seed=0, num_epochs=10).build_algo()
    try:
        module = algo.get_module()
        assert isinstance(module, MultimodalPPOModule)
        chance = envs.make(PROBE).game.chance_level
        assert chance == 0.25
        untrained = greedy_success(module, EVAL_EPISODES)
        assert abs(untrained - chance) < 0.2, untrained

        for _ in range(TRAIN_ITERATIONS):
            result = algo.train()
        sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
        assert sampled == TRAIN_ITERATIONS * 512

        trained = algo.get_module()  # the local env runner's copy, synced after each update
        success = greedy_success(trained, EVAL_EPISODES)
    finally:
        algo.stop()
    elapsed = time.perf_counter() - start
    print(f"RLlib PPO on {PROBE}: {success:.3f} held-out success, {elapsed:.0f} s")
    assert success >= 0.9, f"{success:.3f} held-out greedy success after {sampled} steps"
