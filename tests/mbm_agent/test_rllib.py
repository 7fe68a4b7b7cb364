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
import warnings
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
from memory_helpers import (  # noqa: E402
    GAME,
    GAME_KWARGS,
    MEMORY,
    game_spaces,
    memory_policy,
    play,
    save_memory_run,
)
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModule  # noqa: E402
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner  # noqa: E402

import envs  # noqa: E402
from mbm_agent.deploy.network import PolicyNetwork  # noqa: E402
from mbm_agent.encoding.multimodal import to_tensor_obs  # noqa: E402
from mbm_agent.evaluation import EVAL_SEED_BASE  # noqa: E402
from mbm_agent.rllib import (  # noqa: E402
    EnvCreator,
    ModuleSettings,
    MultimodalPPOModule,
    model_config_from_agent,
    ppo_config,
    register_rllib_envs,
)
from mbm_agent.training.agent import load_agent, save_policy  # noqa: E402
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


def test_memory_config_is_checked_and_rllib_wrappers_name_memory() -> None:
    assert ModuleSettings.from_model_config({"memory": 8}).memory == 8
    assert ModuleSettings.from_model_config({}).memory == 0
    with pytest.raises(ValueError, match=r"use_lstm.*model_config\['memory'\]"):
        ModuleSettings.from_model_config({"use_lstm": True})
    with pytest.raises(ValueError, match="integer in"):
        ModuleSettings.from_model_config({"memory": "8"})
    with pytest.raises(ValueError, match="needs vf_share_layers=True"):
        ModuleSettings.from_model_config({"memory": 8, "vf_share_layers": False})
    with pytest.raises(ValueError, match="max_seq_len"):
        ModuleSettings.from_model_config({"memory": 8, "max_seq_len": 0})
    with pytest.raises(ValueError, match=r"activation.*relu"):
        ModuleSettings.from_model_config({"activation": "swish"})


def test_memory_module_over_a_sequence_is_the_same_as_step_by_step() -> None:
    """With memory, RLlib hands (B, T, ...) keys and the start state: the GRU run over
    the sequence gives the logits, values and end state of T single steps whose state
    is carried by hand, and the inference-only copy (env runners) keeps the GRU."""
    venv = envs.make_vec(PROBE, 3)
    steps = [to_tensor_obs(venv.reset(seed=s)[0]) for s in range(4)]
    sequence = {k: torch.stack([o[k] for o in steps], dim=1) for k in steps[0]}
    module = make_module(venv, memory=8, hidden_sizes=[16])
    assert module.is_stateful() and set(module.get_initial_state()) == {"h"}
    h0 = torch.as_tensor(module.get_initial_state()["h"]).repeat(3, 1) + 0.1
    with torch.no_grad():
        out = module.forward_train({Columns.OBS: sequence, Columns.STATE_IN: {"h": h0}})
        values = module.compute_values({}, embeddings=out[Columns.EMBEDDINGS])
        # RLlib's advantage connector asks for values from the batch alone.
        again = module.compute_values({Columns.OBS: sequence, Columns.STATE_IN: {"h": h0}})
        torch.testing.assert_close(again, values)
        state, logits = h0, []
        for obs in steps:
            one = {k: v[:, None] for k, v in obs.items()}
            step = module.forward_inference({Columns.OBS: one, Columns.STATE_IN: {"h": state}})
            state = step[Columns.STATE_OUT]["h"]
            logits.append(step[Columns.ACTION_DIST_INPUTS][:, 0])
    assert out[Columns.ACTION_DIST_INPUTS].shape == (3, 4, int(venv.single_action_space.n))
    assert values.shape == (3, 4)
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], torch.stack(logits, dim=1))
    torch.testing.assert_close(out[Columns.STATE_OUT]["h"], state)
    # The state matters: another start state gives other logits.
    other = module.forward_inference({Columns.OBS: sequence, Columns.STATE_IN: {"h": -h0}})
    assert not torch.allclose(other[Columns.ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS])
    with pytest.raises(ValueError, match=r"needs the start state.*time axis"):
        module.forward_inference({Columns.OBS: steps[0]})
    light = MultimodalPPOModule(
        observation_space=venv.single_observation_space,
        action_space=venv.single_action_space,
        model_config={"memory": 8, "hidden_sizes": [16]},
        inference_only=True,
    )
    light.set_state(module.get_state(inference_only=True))
    assert any(k.startswith("memory_core.") for k in light.state_dict())


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

    # And through RLlib: a third-party id is vectorised with SyncVectorEnv copies (with
    # configs/families/BabyAI.yaml's memory).
    with pytest.warns(UserWarning, match="aux_reward_coef"):  # no curriculum for BabyAI
        cfg = ppo_config("BabyAI-GoToObj-v0", num_env_runners=0, num_envs_per_env_runner=2)
    assert cfg.get_rl_module_spec().model_config["memory"] > 0
    assert cfg.gym_env_vectorize_mode == "sync"
    runner = SingleAgentEnvRunner(config=cfg)
    try:
        episodes = runner.sample(num_timesteps=8, explore=True)
    finally:
        runner.stop()
    assert sum(len(e) for e in episodes) >= 8


def test_ppo_config_takes_the_env_yaml_defaults() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the probe's config drops nothing
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

    with pytest.warns(UserWarning, match=r"aux_reward_coef=1\.0 and a curriculum.*mbm-agent train"):
        goto = ppo_config("mbm/GoToObject-v0", num_env_runners=1, lr=1e-4).get_rl_module_spec()
    # The from-scratch recipe's GRU, as SB3's MultimodalPPO gets it.
    assert goto.model_config["memory"] == resolve_config("mbm/GoToObject-v0").algo_kwargs["memory"]
    recipe = resolve_config("mbm/GoToObject-v0")
    assert goto.model_config["memory"] > 0
    assert goto.model_config["max_seq_len"] == recipe.algo_kwargs["sequence_length"]
    assert goto.model_config["activation"] == recipe.policy_kwargs["activation_fn"] == "relu"
    assert goto.model_config["fusion"] == "film"  # from mbm_GoToObject-v0.yaml
    assert (
        goto.model_config["image_encoder"]
        == resolve_config("mbm/GoToObject-v0").encoder.image_encoder
    )
    with pytest.warns(UserWarning, match="aux_reward_coef"):
        concat = ppo_config("mbm/GoToObject-v0", fusion="concat", memory=0)
    concat = concat.get_rl_module_spec()
    assert concat.model_config["fusion"] == "concat" and concat.model_config["memory"] == 0
    with pytest.raises(ValueError, match=r"PPOConfig\.training"):
        ppo_config(PROBE, learning_rate=1e-3)
    with pytest.raises(ValueError, match="did you mean"):
        ppo_config(PROBE, encoder={"fusoin": "film"})


def test_ppo_config_turns_rl_zoo_schedules_into_rllibs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lin_<start>``: the learning rate as RLlib's [timestep, value] schedule to 0 at the
    run's steps; the clip range, which RLlib does not schedule, at its start with a warning."""
    scheduled = resolve_config(
        PROBE, overrides={"algo_kwargs": {"learning_rate": "lin_0.001", "clip_range": "lin_0.2"}}
    )
    monkeypatch.setattr("mbm_agent.rllib.resolve_config", lambda env_id: scheduled)
    with pytest.warns(UserWarning, match=r"clip_range \(lin_0\.2\).*stays at 0\.2"):
        cfg = ppo_config(PROBE, num_env_runners=0)
    assert cfg.lr == [[0, pytest.approx(1e-3)], [scheduled.steps, 0.0]]
    assert cfg.clip_param == pytest.approx(0.2)


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


class RecallEnv(gym.Env[dict[str, Any], int]):
    """A cue (one of 2) at the first step, then blank steps; the last step's action must
    name the cue. A memoryless policy cannot beat 50%; one with memory can reach 100%."""

    DELAY = 3

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"vec": spaces.Box(0.0, 1.0, (3,), np.float32)})
        self.action_space = spaces.Discrete(2)
        self.t, self.cue = 0, 0

    def _obs(self) -> dict[str, Any]:
        vec = np.zeros(3, np.float32)
        if self.t == 0:
            vec[self.cue] = 1.0
        if self.t == self.DELAY:
            vec[2] = 1.0  # answer now
        return {"vec": vec}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.t == self.DELAY:
            success = int(action) == self.cue
            return self._obs(), float(success), True, False, {"is_success": success}
        self.t += 1
        return self._obs(), 0.0, False, False, {}


RECALL = "MbmTestRecall-v0"
if RECALL not in gym.registry:
    gym.register(RECALL, entry_point=RecallEnv)


def recall_greedy_success(module: MultimodalPPOModule, episodes: int = 256) -> float:
    """Held-out success of the argmax policy, its GRU state carried by hand, step by step."""
    games = [RecallEnv() for _ in range(episodes)]
    obs = [g.reset(seed=EVAL_SEED_BASE + i)[0] for i, g in enumerate(games)]
    state = torch.as_tensor(module.get_initial_state()["h"]).repeat(episodes, 1)
    for _ in range(RecallEnv.DELAY + 1):
        vec = torch.as_tensor(np.stack([o["vec"] for o in obs]))[:, None]
        with torch.no_grad():
            out = module.forward_inference(
                {Columns.OBS: {"vec": vec}, Columns.STATE_IN: {"h": state}}
            )
        state = out[Columns.STATE_OUT]["h"]
        actions = out[Columns.ACTION_DIST_INPUTS][:, 0].argmax(-1).numpy()
        steps = [g.step(int(a)) for g, a in zip(games, actions, strict=True)]
        obs = [s[0] for s in steps]
    assert all(s[2] for s in steps)
    return float(np.mean([s[1] for s in steps]))


@pytest.mark.slow
@RUNNER_REREGISTERS
def test_rllib_ppo_with_memory_learns_to_recall(local_ray: None) -> None:
    """RLlib PPO + our module with memory learns a cue it must hold for 3 blank steps.

    The learner unrolls sequences of 3 steps over 4-step episodes, so most start
    mid-episode from the state the env runner had (RLlib's STATE_IN), and the cue must
    pass through that state. Measured on 2 CPU cores (seed 0): 100% greedy after 5
    iterations of 512 steps (~2 s), while memory=0 stays at 45-56%
    episode return (chance 50%) for 25 iterations. The test trains 10 and asks for 95%,
    which no memoryless policy can reach (the last step looks the same whatever the cue).
    """
    cfg = ppo_config(
        RECALL,
        memory=16,
        max_seq_len=3,
        hidden_sizes=[32],
        num_env_runners=0,
        num_envs_per_env_runner=16,
        seed=0,
        train_batch_size_per_learner=512,
        minibatch_size=128,
        num_epochs=8,
        lr=3e-3,
        entropy_coeff=0.01,
    )
    algo = cfg.build_algo()
    try:
        for _ in range(10):
            algo.train()
        module = algo.get_module()
        assert isinstance(module, MultimodalPPOModule) and module.memory_core is not None
        success = recall_greedy_success(module)
    finally:
        algo.stop()
    assert success >= 0.95, f"{success:.3f} held-out greedy success"


# ------------------------------------------------------- starting from a trained agent
def agent_outputs(
    net: PolicyNetwork, obs: dict[str, np.ndarray], starts: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The agent's logits and values over a played stream, its state reset at episode starts."""
    state = net.initial_state(1)
    logits, values = [], []
    with torch.no_grad():
        for t in range(len(starts)):
            step = to_tensor_obs({k: v[t : t + 1] for k, v in obs.items()})
            _, out, value, state = net(step, state * (1.0 - float(starts[t])))
            logits.append(out)
            values.append(value)
    return torch.cat(logits), torch.cat(values)


def module_outputs(
    module: MultimodalPPOModule, obs: dict[str, np.ndarray], starts: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's logits and values over the same stream, stepped as RLlib steps it (T=1)."""
    state = torch.as_tensor(module.get_initial_state()["h"])[None]
    logits, values = [], []
    with torch.no_grad():
        for t in range(len(starts)):
            batch = {
                Columns.OBS: to_tensor_obs({k: v[t : t + 1, None] for k, v in obs.items()}),
                Columns.STATE_IN: {"h": state * (1.0 - float(starts[t]))},
            }
            out = module.forward_train(batch)
            logits.append(out[Columns.ACTION_DIST_INPUTS][:, 0])
            values.append(module.compute_values(batch, out[Columns.EMBEDDINGS])[:, 0])
            state = out[Columns.STATE_OUT]["h"]
    return torch.cat(logits), torch.cat(values)


def test_module_from_an_agent_acts_and_values_as_the_agent(tmp_path: Path) -> None:
    """init_from copies encoder, GRU and both heads: same logits and values over 100 steps."""
    run = save_memory_run(tmp_path / "run")
    config = model_config_from_agent(run)
    assert config["memory"] == MEMORY and config["hidden_sizes"] == [32]
    assert config["init_from"] == str((run / "best").resolve())
    obs_space, act_space, _ = game_spaces()
    module = MultimodalPPOModule(
        observation_space=obs_space,
        action_space=act_space,
        model_config=config,
        inference_only=False,
    )
    net = PolicyNetwork.from_agent(load_agent(run))
    obs, starts = play(lambda o, s: 2, steps=100)
    assert starts[1:].sum() >= 1  # the stream crosses an episode's end
    want_logits, want_values = agent_outputs(net, obs, starts)
    got_logits, got_values = module_outputs(module, obs, starts)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_values, want_values, atol=1e-5, rtol=1e-5)
    # The agent's state matters here, so equal outputs mean the GRU was copied too.
    fresh = MultimodalPPOModule(
        observation_space=obs_space,
        action_space=act_space,
        model_config={**config, "init_from": None},
        inference_only=False,
    )
    assert not torch.allclose(module_outputs(fresh, obs, starts)[0], want_logits, atol=1e-3)


def test_module_built_otherwise_than_the_agent_is_refused(tmp_path: Path) -> None:
    run = save_memory_run(tmp_path / "run")
    config = model_config_from_agent(run)
    obs_space, act_space, _ = game_spaces()
    for change, named in (
        ({"memory": 0}, "memory=0 (the agent: 16)"),
        ({"hidden_sizes": [64]}, "hidden_sizes=[64] (the agent: [32])"),
        ({"fusion": "concat"}, "encoder="),
    ):
        with pytest.raises(ValueError, match="model_config_from_agent") as info:
            MultimodalPPOModule(
                observation_space=obs_space,
                action_space=act_space,
                model_config={**config, **change},
            )
        assert named in str(info.value)
    with pytest.raises(ValueError, match="must be the absolute path of a policy folder"):
        ModuleSettings.from_model_config({"init_from": 3})


@pytest.mark.filterwarnings("ignore:.*belong to mbm-agent's SB3 trainer")
def test_ppo_config_from_an_agent_refuses_architecture_arguments_and_other_games(
    tmp_path: Path,
) -> None:
    run = save_memory_run(tmp_path / "run")
    with pytest.raises(
        ValueError, match=r"drop \['memory', 'fusion'\]|drop \['fusion', 'memory'\]"
    ):
        ppo_config(GAME, init_from=run, memory=8, fusion="film", register=False)
    # FindSound's observations are not GoToObject's: named before any Ray actor starts.
    with pytest.raises(ValueError, match="trained on mbm/GoToObject-v0"):
        ppo_config("mbm/FindSound-v0", init_from=run, register=False)
    # The same game at another frame size does not fit either (the frame's shape).
    with pytest.raises(ValueError, match="'image'"):
        ppo_config(GAME, init_from=run, env_config={"grid_size": 5}, register=False)
    with pytest.raises(FileNotFoundError):
        ppo_config(GAME, init_from=tmp_path / "nothing", register=False)


@RUNNER_REREGISTERS
@pytest.mark.filterwarnings("ignore:.*belong to mbm-agent's SB3 trainer")
def test_ppo_config_from_an_agent_starts_runners_and_learner_from_its_weights(
    tmp_path: Path,
) -> None:
    """RLlib's env runner and learner both build the module from the agent, and it trains on."""
    run = save_memory_run(tmp_path / "run")
    cfg = ppo_config(
        GAME, init_from=run, env_config=GAME_KWARGS, num_env_runners=0, num_envs_per_env_runner=2
    )
    net = PolicyNetwork.from_agent(load_agent(run))
    obs, starts = play(lambda o, s: 2, steps=20)
    want_logits, want_values = agent_outputs(net, obs, starts)
    runner = SingleAgentEnvRunner(config=cfg)
    try:
        assert isinstance(runner.module, MultimodalPPOModule)
        state = torch.zeros(1, MEMORY)
        with torch.no_grad():
            for t in range(len(starts)):
                batch = {
                    Columns.OBS: to_tensor_obs({k: v[t : t + 1, None] for k, v in obs.items()}),
                    Columns.STATE_IN: {"h": state * (1.0 - float(starts[t]))},
                }
                out = runner.module.forward_inference(batch)
                torch.testing.assert_close(
                    out[Columns.ACTION_DIST_INPUTS][:, 0], want_logits[t : t + 1], atol=1e-5, rtol=0
                )
                state = out[Columns.STATE_OUT]["h"]
        episodes = runner.sample(num_timesteps=32, explore=True)
        learner = cfg.build_learner(env=runner.env.unwrapped)
        module = learner.module["default_policy"]
        assert isinstance(module, MultimodalPPOModule)
        _, values = module_outputs(module, obs, starts)
        torch.testing.assert_close(values, want_values, atol=1e-5, rtol=1e-5)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        learner.update(
            episodes=episodes,
            timesteps={"num_env_steps_sampled_lifetime": 32},
            num_epochs=1,
            minibatch_size=16,
        )
        assert any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())
    finally:
        runner.stop()


def save_small_policy(folder: Path, algo: str, policy_kwargs: dict[str, Any]) -> Path:
    """An untrained ``algo`` policy on the small GoToObject, saved as ``folder/best``."""
    policy, spec, vocab = memory_policy(3, policy_kwargs, algo=algo)
    save_policy(policy, spec, folder / "best", vocab)
    return folder


def test_module_from_an_agent_with_its_own_value_encoder_matches_sb3(tmp_path: Path) -> None:
    """No memory, separate critic encoder: the module's action probabilities and values
    are the SB3 policy's own (not only the converter's)."""
    kwargs = {"net_arch": [32, 16], "activation_fn": "relu", "share_features_extractor": False}
    run = save_small_policy(tmp_path / "run", "ppo", kwargs)
    config = model_config_from_agent(run)
    assert config["vf_share_layers"] is False and config["memory"] == 0
    assert config["hidden_sizes"] == [32, 16] and config["activation"] == "relu"
    obs_space, act_space, _ = game_spaces()
    module = MultimodalPPOModule(
        observation_space=obs_space,
        action_space=act_space,
        model_config=config,
        inference_only=False,
    )
    assert module.value_encoder is not None
    obs, _ = play(lambda o, s: 2, steps=12)
    policy = load_agent(run).policy
    with torch.no_grad():
        tensors, _ = policy.obs_to_tensor(obs)
        want_probs = policy.get_distribution(tensors).distribution.probs
        want_values = policy.predict_values(tensors)[:, 0]
        batch = {Columns.OBS: to_tensor_obs(obs)}
        out = module.forward_train(batch)
        got_probs = torch.softmax(out[Columns.ACTION_DIST_INPUTS], dim=-1)
        got_values = module.compute_values(batch, out[Columns.EMBEDDINGS])
    torch.testing.assert_close(got_probs, want_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_values, want_values, atol=1e-5, rtol=1e-5)


def test_dqn_agent_is_refused_as_a_q_network(tmp_path: Path) -> None:
    run = save_small_policy(tmp_path / "run", "dqn", {"net_arch": []})
    with pytest.raises(ValueError, match=r"Q-network.*PPO or A2C agent"):
        model_config_from_agent(run)
    obs_space, act_space, _ = game_spaces()
    with pytest.raises(ValueError, match="Q-network"):
        MultimodalPPOModule(
            observation_space=obs_space,
            action_space=act_space,
            model_config={"init_from": str((run / "best").resolve())},
        )
