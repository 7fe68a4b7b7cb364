"""Bring your own env: a third-party multimodal env trains, evaluates and exports as it is.

``examples/third_party_env.py`` has an RGB frame under its own key, a
``spaces.Text`` instruction and a raw int16 waveform; it is trained by the real
``mbm-agent train module:EnvId --vec-env async`` in a subprocess, then evaluated
and exported, and the exports must act on the raw observations the env emits.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from runs_helpers import only_run, run_cli, shared_path
from stable_baselines3.common.vec_env import SubprocVecEnv

from mbm_agent.cli import main
from mbm_agent.deploy.export import export_policy
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.deploy.runtime import load_exported
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.training.agent import load_agent
from mbm_agent.training.config import (
    ConfigError,
    TrainConfig,
    resolve_config,
    resume_config,
    save_config,
)
from mbm_agent.training.envs import make_single_env, make_train_env
from mbm_agent.training.trainer import train

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # the example module, as `mbm-agent` finds it from the repo root
    sys.path.append(str(REPO))

from examples.third_party_env import ThirdPartyEnv  # noqa: E402

ENV_ID = "examples.third_party_env:ThirdPartyEnv-v0"
MIC = ["--set", "modalities.mic.kind=waveform", "--set", "modalities.mic.sample_rate=8000"]
TINY = {"n_envs": 2, "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1}}


def _train(runs: Path) -> None:
    result = run_cli(
        "train",
        ENV_ID,
        *MIC,
        "--steps",
        "128",
        "--n-envs",
        "2",
        "--set",
        "algo_kwargs.n_steps=32",
        "--set",
        "algo_kwargs.batch_size=64",
        "--set",
        "algo_kwargs.n_epochs=1",
        "--eval-every",
        "64",
        "--eval-episodes",
        "2",
        "--set",
        "final_eval_episodes=4",
        "--set",
        "gif_episodes=1",
        "--checkpoint-every",
        "0",
        "--vec-env",
        "async",
        "--vec-env-workers",
        "1",
        "--runs-dir",
        runs,
        "--no-progress",
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of the third-party env, trained by the ``mbm-agent`` command."""
    return only_run(shared_path(tmp_path_factory, "third-party-run", _train))


def test_trains_from_the_command_line_with_its_raw_senses(run: Path) -> None:
    assert run.name.startswith("ThirdPartyEnv-ppo-")  # no ':' or '/' in the folder name
    # Its envs stepped in a worker process (both in one: WorkerGroupVecEnv), converting
    # their own obs; test_worker_errors trains through SubprocVecEnv (one per env).
    saved = json.loads((run / "config.json").read_text())
    assert saved["vec_env"] == "async" and saved["vec_env_workers"] == 1
    for name in ("eval.json", "episodes.gif", "best/model.json", "final/model.safetensors"):
        assert (run / name).is_file(), name
    spec = json.loads((run / "best" / "model.json").read_text())
    assert spec["modalities"] == {"instruction": "text", "mic": "audio"}
    transforms = spec["observation_adapter"]["transforms"]
    assert transforms["instruction"]["codec"]["codec"] == "hash"
    assert transforms["mic"]["dtype"] == "int16" and transforms["mic"]["sample_rate"] == 8000
    obs_space = spec["observation_space"]["spaces"]
    assert obs_space["mic"]["shape"] == [1, 32, 8] and obs_space["mic"]["dtype"] == "float32"
    assert obs_space["instruction"]["dtype"] == "int64"
    assert obs_space["frame"]["shape"] == [24, 24, 3]


def test_tensorboard_has_sb3s_evaluation_tags(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    assert {"eval/mean_reward", "eval/mean_ep_length", "eval/success_rate"} <= tags
    assert "eval/mean_return" not in tags


def test_eval_reapplies_the_saved_conversion(run: Path, tmp_path: Path) -> None:
    assert main(["eval", str(run), "--episodes", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["meta"]["env_id"] == ENV_ID and len(report["episodes"]["returns"]) == 3


def _play(act: Any, reset: Any, steps: int = 10, seed: int = 5) -> list[Any]:
    env = ThirdPartyEnv()
    obs, _ = env.reset(seed=seed)
    reset()
    out = []
    for _ in range(steps):
        out.append(act(obs))
        obs, _, _, truncated, _ = env.step(int(np.asarray(out[-1]).reshape(-1)[0]) % 3)
        if truncated:
            obs, _ = env.reset()
            reset()
    return out


def test_agent_acts_on_raw_observations_as_on_the_wrapped_envs(run: Path) -> None:
    agent = load_agent(run)
    wrapped, _ = make_single_env(ENV_ID, {}, adapter=agent.adapter)
    raw = ThirdPartyEnv()
    obs_w, _ = wrapped.reset(seed=11)
    obs_r, _ = raw.reset(seed=11)
    agent.reset()
    for _ in range(12):
        a_w = agent.act({k: np.asarray(v)[None] for k, v in obs_w.items()})  # converted
        a_r = agent.act(obs_r)  # raw, converted by the agent
        assert int(a_w[0]) == int(a_r)
        obs_w, *_ = wrapped.step(int(a_r))
        obs_r, *_ = raw.step(int(a_r))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_act_on_raw_observations(run: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    options = {"onnx_exporter": "legacy"} if fmt == "onnx" else {}
    out = export_policy(run, fmt, tmp_path / fmt, **options)
    meta = json.loads((out / "export.json").read_text())
    assert meta["observation_adapter"]["transforms"]["mic"]["kind"] == "waveform"
    assert {i["name"]: i["dtype"] for i in meta["inputs"]} == {
        "frame": "uint8",
        "instruction": "int64",
        "mic": "float32",
    }
    policy = load_exported(out)
    agent = load_agent(run)
    net = PolicyNetwork.from_agent(agent).eval()
    state = agent.adapter.new_state()

    def reference(obs: dict[str, Any]) -> np.ndarray:
        converted = agent.adapter.adapt(obs, state)
        batch = to_tensor_obs({k: np.asarray(v)[None] for k, v in converted.items()})
        with torch.no_grad():
            return net(batch)[1][0].numpy()

    ours = _play(lambda obs: policy(obs)["logits"], policy.reset)
    theirs = _play(reference, lambda: state.reset())
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), atol=1e-4, rtol=1e-4)
    # A batch of raw observations (two envs) acts too.
    envs_ = [ThirdPartyEnv(), ThirdPartyEnv()]
    batch = [e.reset(seed=i)[0] for i, e in enumerate(envs_)]
    policy.reset()
    stacked = {
        "frame": np.stack([b["frame"] for b in batch]),
        "instruction": [b["instruction"] for b in batch],
        "mic": np.stack([b["mic"] for b in batch]),
    }
    assert policy.act(stacked).shape == (2,)
    with pytest.raises(ValueError, match=r"obs\['mic'\] has shape \(100,\)"):
        policy.act({**batch[0], "mic": np.zeros(100, np.int16)})


def test_vec_env_async_is_ignored_with_a_message_for_our_games() -> None:
    cfg = resolve_config("mbm/GoToObject-v0", overrides={"n_envs": 2, "vec_env": "async"})
    with pytest.warns(UserWarning, match="one batched numpy env"):
        venv, _ = make_train_env(cfg, seed=0)
    assert not isinstance(venv.unwrapped, SubprocVecEnv)
    venv.close()


def test_inspect_prints_each_key_and_its_encoding(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", ENV_ID, "--set", "modalities.mic=waveform"]) == 0
    out = capsys.readouterr().out
    assert "frame" in out and "image: ImageEncoder (small CNN; " in out
    assert "3 channel(s), read as (H, W, C)), width 128" in out
    assert "at the env's edge (text): hashed words -> ids (table 4096" in out
    assert "at the env's edge (waveform): int16 PCM, 1 ch x 256 samples/step" in out
    assert "audio: AudioEncoder" in out and "fusion concat" in out


def test_inspect_shows_how_a_frame_is_laid_out(capsys: pytest.CaptureFixture[str]) -> None:
    """A channel-first frame is read as (C, H, W): inspect says so before any training."""
    assert main(["inspect", "MbmTestDepth-v0", "--set", "modalities.depth=image"]) == 0
    assert "40x40 frames, 3 channel(s), read as (C, H, W)" in capsys.readouterr().out


class _FrameEnv(gym.Env[np.ndarray, int]):
    """A plain Box env: a uint8 frame whose mean colour says the right action."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, (12, 12, 3), np.uint8)
        self.action_space = spaces.Discrete(2)
        self._cue = 0

    def _obs(self) -> np.ndarray:
        return np.full((12, 12, 3), 200 * self._cue, np.uint8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward = float(action == self._cue)
        self._cue = int(self.np_random.integers(2))
        return self._obs(), reward, False, False, {}


# MbmTestDepth-v0 (a depth map and a vector) is registered by tests/mbm_agent/conftest.py.
if "MbmTestFrame-v0" not in gym.registry:
    gym.register("MbmTestFrame-v0", entry_point=_FrameEnv, max_episode_steps=4)


def test_inspect_of_a_key_that_cannot_be_encoded_fails_naming_key_space_and_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", "MbmTestDepth-v0"]) == 2
    err = capsys.readouterr().err
    assert "'depth'" in err and "Box(0.0, 1.0, (3, 40, 40), float32)" in err
    assert "modalities: {depth: image}" in err and "--set modalities.depth=image" in err
    assert main(["inspect", "MbmTestDepth-v0", "--set", "modalities.depth=image"]) == 0


def test_plain_box_env_trains_and_acts_on_raw_arrays(tmp_path: Path) -> None:
    cfg = resolve_config(
        "MbmTestFrame-v0",
        overrides={
            **TINY,
            "steps": 64,
            "runs_dir": str(tmp_path),
            "eval_every": 0,
            "checkpoint_every": 0,
            "final_eval_episodes": 2,
            "gif_episodes": 0,
        },
    )
    result = train(cfg, progress=False)
    agent = load_agent(result.run_dir)
    assert agent.spec["observation_adapter"]["box_key"] == "image"
    raw = np.zeros((12, 12, 3), np.uint8)
    assert agent.act(raw).shape == ()
    assert agent.act(np.stack([raw, raw])).shape == (2,)
    out = export_policy(result.run_dir, "torchscript", tmp_path / "ts")
    assert load_exported(out).act(raw).shape == ()


def test_resume_moves_an_async_run_to_dummy_or_to_other_workers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(env_id="x", vec_env="async", vec_env_workers=2, n_envs=4), run)
    moved = resume_config(run, {"vec_env": "dummy"})  # the saved workers belong to async
    assert (moved.vec_env, moved.vec_env_workers) == ("dummy", 0)
    assert resume_config(run, {"vec_env_workers": 4}).vec_env_workers == 4
    with pytest.raises(ConfigError, match="vec_env_workers=5 is more than the 4 envs"):
        resume_config(run, {"vec_env_workers": 5})


def test_module_ids_give_plain_run_names_and_bad_settings_are_config_errors() -> None:
    cfg = TrainConfig(env_id="pkg.mod:ns/My Env-v1")
    assert cfg.default_run_name().startswith("My_Env-ppo-")
    with pytest.raises(ConfigError, match=r"vec_env='threads'.*\['dummy', 'async'\]"):
        TrainConfig(env_id="x", vec_env="threads")
    with pytest.raises(
        ConfigError, match=r"vec_env_workers=2 .* vec_env is 'dummy': add --vec-env"
    ):
        TrainConfig(env_id="x", vec_env_workers=2)
    with pytest.raises(ConfigError, match=r"vec_env_workers=5 is more than the 4 envs"):
        TrainConfig(env_id="x", vec_env="async", vec_env_workers=5, n_envs=4)
    with pytest.raises(ConfigError, match=r"vec_env_workers must be an integer >= 0"):
        TrainConfig(env_id="x", vec_env="async", vec_env_workers=-1)
    with pytest.raises(ConfigError, match=r"modalities.mic: unknown modality 'wave'"):
        TrainConfig(env_id="x", modalities={"mic": "wave"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(env_id="x", modalities={"mic": {"kind": "waveform", "sample_rate": 8000}})
