"""A third-party env's edge: broken observations fail early and clearly, nested keys flatten.

- NaN / inf in a float key, or an observation that breaks the env's own space,
  fail where they leave the env, naming the env, the key and the step (not deep in
  SB3's ``DummyVecEnv`` or the policy's sampler);
- a waveform chunk of the wrong dtype kind is refused, not scaled into silence;
- nested ``Dict`` and ``Tuple`` keys become flat keys (``robot_pos``, ``pair_0``),
  ``ignore`` drops them, and a plain ``Tuple`` env (Blackjack) trains; saved
  policies and exports read the raw nested observations as training did;
- a 2-D uint8 greyscale frame gets its channel axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from mbm_agent.cli import main
from mbm_agent.deploy.export import export_policy
from mbm_agent.deploy.runtime import load_exported
from mbm_agent.encoding.encoders import ImageEncoder
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.training.adapter import ObservationAdapter, ObservationError
from mbm_agent.training.agent import load_agent
from mbm_agent.training.config import ConfigError, resolve_config
from mbm_agent.training.envs import (
    CheckObservations,
    make_single_env,
    make_train_env,
    observation_adapter,
)
from mbm_agent.training.trainer import train

TINY = {
    "n_envs": 2,
    "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "steps": 64,
    "eval_every": 0,
    "checkpoint_every": 0,
    "final_eval_episodes": 2,
    "gif_episodes": 0,
}


class _Env(gym.Env[Any, int]):
    """A configurable env: its space, and what it emits at each step."""

    metadata: dict[str, Any] = {"render_modes": []}
    space: spaces.Space[Any] = spaces.Box(-1.0, 1.0, (4,), np.float32)

    def __init__(self) -> None:
        self.observation_space = self.space
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def emit(self, t: int) -> Any:
        return self.observation_space.sample()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.emit(0), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self.emit(self.t), float(action), False, False, {}


class _NanEnv(_Env):
    space = spaces.Dict(
        {
            "pos": spaces.Box(-1.0, 1.0, (4,), np.float32),
            "cue": spaces.Discrete(3),
        }
    )

    def emit(self, t: int) -> Any:
        pos = np.zeros(4, np.float32)
        if t == 3:
            pos[2] = np.nan
        return {"pos": pos, "cue": 1}


class _ShapeEnv(_Env):
    space = spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (4,), np.float32)})

    def emit(self, t: int) -> Any:
        return {"pos": np.zeros(5 if t == 2 else 4, np.float32)}


class _FloatGridEnv(_Env):
    """Declares an int grid; emits whole floats (fine), then fractions at step 2 (truncated)."""

    space = spaces.Dict({"grid": spaces.Box(0, 9, (3, 3), np.int64)})

    def emit(self, t: int) -> Any:
        return {"grid": np.full((3, 3), 0.5 if t == 2 else 2.0)}


class _FloatMicEnv(_Env):
    """Declares int16 PCM, emits float32 in [-1, 1]."""

    metadata: dict[str, Any] = {"render_modes": [], "audio_sample_rate": 8000}
    space = spaces.Dict({"mic": spaces.Box(-32768, 32767, (256,), np.int16)})

    def emit(self, t: int) -> Any:
        return {"mic": np.sin(np.arange(256, dtype=np.float32) / 5.0) * 0.5}


class _ShortMicEnv(_FloatMicEnv):
    """Declares 256 int16 samples a step, emits 200."""

    def emit(self, t: int) -> Any:
        return {"mic": np.zeros(200 if t >= 1 else 256, np.int16)}


class _NestedEnv(_Env):
    """A nested Dict and a Tuple key beside a flat one; the cue is in the nested parts."""

    space = spaces.Dict(
        {
            "robot": spaces.Dict(
                {
                    "pos": spaces.Box(-1.0, 1.0, (3,), np.float32),
                    "grip": spaces.Discrete(2),
                }
            ),
            "pair": spaces.Tuple((spaces.Discrete(3), spaces.Box(0.0, 1.0, (2,), np.float32))),
            "x": spaces.Box(-1.0, 1.0, (2,), np.float32),
        }
    )

    def emit(self, t: int) -> Any:
        cue = (t + int(self.np_random.integers(2))) % 2
        return {
            "robot": {"pos": np.full(3, cue - 0.5, np.float32), "grip": cue},
            "pair": (t % 3, np.full(2, 0.25 * cue, np.float32)),
            "x": np.zeros(2, np.float32),
        }


class _GreyEnv(_Env):
    """2-D uint8 greyscale frames (no channel axis): too large for a vector, mid-sized, tiny."""

    space = spaces.Dict(
        {
            "cam": spaces.Box(0, 255, (96, 96), np.uint8),
            "mid": spaces.Box(0, 255, (48, 48), np.uint8),
            "tiny": spaces.Box(0, 255, (4, 4), np.uint8),
        }
    )


ENVS = {
    "MbmEdgeNan-v0": _NanEnv,
    "MbmEdgeShape-v0": _ShapeEnv,
    "MbmEdgeFloatGrid-v0": _FloatGridEnv,
    "MbmEdgeFloatMic-v0": _FloatMicEnv,
    "MbmEdgeShortMic-v0": _ShortMicEnv,
    "MbmEdgeNested-v0": _NestedEnv,
    "MbmEdgeGrey-v0": _GreyEnv,
}
for _id, _cls in ENVS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=8)

MIC = {"mic": {"kind": "waveform", "sample_rate": 8000}}


def _cfg(env_id: str, tmp_path: Path, **overrides: Any) -> Any:
    return resolve_config(env_id, overrides={**TINY, "runs_dir": str(tmp_path), **overrides})


def _step_until_error(env_id: str, tmp_path: Path, steps: int = 6, **overrides: Any) -> str:
    venv, _ = make_train_env(_cfg(env_id, tmp_path, **overrides), seed=0)
    try:
        with pytest.raises(ObservationError) as info:
            venv.reset()
            for _ in range(steps):
                venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    finally:
        venv.close()
    return str(info.value)


# -- (a) NaN / inf ---------------------------------------------------------------------
def test_nan_in_a_float_key_fails_at_the_edge_naming_env_key_step_and_fix(tmp_path: Path) -> None:
    message = _step_until_error("MbmEdgeNan-v0", tmp_path)
    assert "MbmEdgeNan-v0" in message and "key 'pos'" in message
    assert "1 NaN" in message and "at step 3 of an episode" in message
    assert "np.nan_to_num" in message and "TransformObservation" in message


def test_nan_in_an_ignored_key_is_left_alone(tmp_path: Path) -> None:
    env, _ = make_single_env("MbmEdgeNan-v0", {}, modalities={"pos": "ignore"})
    env.reset(seed=0)
    for _ in range(4):
        env.step(0)


def test_our_games_are_not_checked_per_step() -> None:
    env, _ = make_single_env("mbm/GoToObject-v0", {})
    layer: Any = env
    while layer is not None:
        assert not isinstance(layer, CheckObservations)
        layer = getattr(layer, "env", None)


# -- (b) shapes and dtype kinds --------------------------------------------------------
def test_a_shape_that_breaks_the_envs_own_space_is_named(tmp_path: Path) -> None:
    message = _step_until_error("MbmEdgeShape-v0", tmp_path)
    assert "MbmEdgeShape-v0 breaks its own observation_space" in message
    assert "at step 2 of an episode" in message and "key 'pos'" in message
    assert "shape (5,)" in message and "Box(-1.0, 1.0, (4,), float32)" in message
    assert "could not broadcast" not in message


def test_fractional_floats_in_an_integer_space_fail_whole_ones_pass() -> None:
    env, _ = make_single_env("MbmEdgeFloatGrid-v0", {})
    env.reset(seed=0)
    env.step(0)  # whole floats in an int space: stored exactly, accepted
    with pytest.raises(ObservationError, match=r"would be truncated to integers"):
        env.step(0)


# -- (c) waveforms ---------------------------------------------------------------------
def test_float_pcm_in_an_int16_waveform_space_is_refused_naming_both_dtypes(
    tmp_path: Path,
) -> None:
    message = _step_until_error("MbmEdgeFloatMic-v0", tmp_path, modalities=MIC)
    assert "MbmEdgeFloatMic-v0 breaks its own observation_space" in message
    assert "'mic'" in message and "float32" in message and "int16" in message
    assert "(x * 32767).astype(np.int16)" in message
    # A saved policy's adapter (Agent.act, exports) refuses it too, instead of silence.
    adapter = ObservationAdapter.for_space(_FloatMicEnv.space, MIC)
    with pytest.raises(ValueError, match=r"obs\['mic'\] holds float32 samples.*int16 PCM"):
        adapter.adapt({"mic": np.zeros(256, np.float32)}, adapter.new_state())


def test_a_short_chunk_in_training_says_the_env_breaks_its_space(tmp_path: Path) -> None:
    message = _step_until_error("MbmEdgeShortMic-v0", tmp_path, modalities=MIC)
    assert "MbmEdgeShortMic-v0 breaks its own observation_space" in message
    assert "shape (200,)" in message and "256 samples per step" in message
    assert "sample_rate" not in message and "retrain" not in message
    # A saved policy fed a short chunk keeps its advice about rate and length.
    adapter = ObservationAdapter.for_space(_ShortMicEnv.space, MIC)
    with pytest.raises(ValueError, match=r"Resample or re-chunk.*sample_rate"):
        adapter.adapt({"mic": np.zeros(200, np.int16)}, adapter.new_state())


# -- (d) nested keys -------------------------------------------------------------------
def test_nested_keys_flatten_and_the_policy_reads_raw_nested_obs(tmp_path: Path) -> None:
    cfg = _cfg("MbmEdgeNested-v0", tmp_path)
    adapter = observation_adapter(cfg)
    space = adapter.observation_space(_NestedEnv.space)
    assert list(space.spaces) == ["pair_0", "pair_1", "robot_grip", "robot_pos", "x"]
    result = train(cfg, progress=False)
    agent = load_agent(result.run_dir)
    assert agent.spec["observation_adapter"]["paths"]["robot_pos"] == ["robot", "pos"]
    wrapped, _ = make_single_env("MbmEdgeNested-v0", {}, adapter=agent.adapter)
    raw = _NestedEnv()
    obs_w, _ = wrapped.reset(seed=3)
    obs_r, _ = raw.reset(seed=3)
    policy = load_exported(export_policy(result.run_dir, "torchscript", tmp_path / "ts"))
    for _ in range(6):
        a_w = agent.act({k: np.asarray(v)[None] for k, v in obs_w.items()})  # flattened
        a_r = agent.act(obs_r)  # raw nested, flattened by the agent
        assert int(a_w[0]) == int(a_r) == int(policy.act(obs_r))
        obs_w, *_ = wrapped.step(int(a_r))
        obs_r, *_ = raw.step(int(a_r))


def test_ignore_drops_a_nested_key_before_sb3_sees_it(tmp_path: Path) -> None:
    cfg = _cfg("MbmEdgeNested-v0", tmp_path, modalities={"robot": "ignore"})
    venv, _ = make_train_env(cfg, seed=0)
    try:
        assert sorted(venv.observation_space.spaces) == ["pair_0", "pair_1", "x"]  # type: ignore[attr-defined]
        obs = venv.reset()
        assert "robot" not in obs and "robot_pos" not in obs
    finally:
        venv.close()
    with pytest.raises(ConfigError, match=r"'robot' is a nested space.*'robot_grip', 'robot_pos'"):
        observation_adapter(_cfg("MbmEdgeNested-v0", tmp_path, modalities={"robot": "vector"}))
    flat = observation_adapter(_cfg("MbmEdgeNested-v0", tmp_path, modalities={"pair_1": "ignore"}))
    assert flat.modalities == {"pair_1": "ignore"}


def test_inspect_shows_the_flattened_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "MbmEdgeNested-v0"]) == 0
    out = capsys.readouterr().out
    assert "robot_pos" in out and "from obs['robot']['pos']" in out
    assert "pair_0" in out and "from obs['pair'][0]" in out
    assert main(["inspect", "MbmEdgeNested-v0", "--set", "modalities.robot=ignore"]) == 0
    out = capsys.readouterr().out
    assert "robot_pos" not in out and "dropped (declared ignore)" in out


def test_a_plain_tuple_env_trains_and_acts_on_raw_tuples(tmp_path: Path) -> None:
    result = train(_cfg("Blackjack-v1", tmp_path), progress=False)
    agent = load_agent(result.run_dir)
    assert sorted(agent.spec["observation_adapter"]["paths"]) == ["obs_0", "obs_1", "obs_2"]
    obs, _ = gym.make("Blackjack-v1").reset(seed=0)
    assert agent.act(obs).shape == ()


def test_a_rejected_modality_is_never_the_suggested_one() -> None:
    space = spaces.Dict(
        {
            "robot": spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (3,), np.float32)}),
            "x": spaces.Box(-1.0, 1.0, (2,), np.float32),
        }
    )
    with pytest.raises(ValueError, match="cannot be encoded as 'vector'") as info:
        MultimodalEncoder(space, modalities={"robot": "vector"})
    assert "'robot': 'vector'" not in str(info.value)
    assert "modalities={'robot': 'ignore'}" in str(info.value)


# -- (e) 2-D greyscale frames ----------------------------------------------------------
def test_a_2d_uint8_frame_gets_a_channel_axis_declared_or_large() -> None:
    with pytest.warns(UserWarning, match=r"'mid'.*greyscale frame.*flat vector of 2304"):
        adapter = ObservationAdapter.for_space(_GreyEnv.space)
    space = adapter.observation_space(_GreyEnv.space)
    assert space["cam"] == spaces.Box(0, 255, (96, 96, 1), np.uint8)  # too large for a vector
    assert space["mid"] == _GreyEnv.space["mid"] and space["tiny"] == _GreyEnv.space["tiny"]
    declared = ObservationAdapter.for_space(_GreyEnv.space, {"mid": "image", "tiny": "image"})
    out = declared.observation_space(_GreyEnv.space)
    assert out["mid"].shape == (48, 48, 1) and out["tiny"].shape == (4, 4, 1)
    assert ObservationAdapter.from_dict(declared.to_dict()) == declared
    encoder = MultimodalEncoder(out, modalities=declared.modalities)
    assert all(isinstance(encoder.encoder(k), ImageEncoder) for k in ("cam", "mid", "tiny"))
    raw = {k: np.zeros((2, *sub.shape), np.uint8) for k, sub in _GreyEnv.space.spaces.items()}
    assert declared.adapt(raw)["cam"].shape == (2, 96, 96, 1)
