from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from envs.core.text import UNK_ID, Vocabulary
from mbm_agent import (
    BABYAI_WORDS,
    MultimodalEncoder,
    RenameObservationKeys,
    TokenizeMission,
    make_minigrid_env,
    to_tensor_obs,
)

minigrid = pytest.importorskip("minigrid")


class TextEnv(gym.Env[dict[str, Any], int]):
    """Dict obs with a gymnasium Text mission and a vector."""

    def __init__(self, mission: str = "go to the red ball") -> None:
        self.observation_space = spaces.Dict(
            {"mission": spaces.Text(200), "pos": spaces.Box(0.0, 1.0, (2,), dtype=np.float32)}
        )
        self.action_space = spaces.Discrete(2)
        self.mission = mission

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        return {"mission": self.mission, "pos": np.array([0.25, 0.5], dtype=np.float32)}, {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, _ = self.reset()
        return obs, 0.0, True, False, {}


def test_babyai_missions_tokenise_without_unknown_words():
    with pytest.warns(UserWarning, match="symbolic grid"):
        env = TokenizeMission(gym.make("BabyAI-GoToObj-v0"))
    raw = env.unwrapped
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        assert UNK_ID not in obs["text"]
        assert env.vocabulary.decode(obs["text"]) == raw.mission
        np.testing.assert_array_equal(obs["image"], raw.gen_obs()["image"])
        assert obs["direction"] == raw.agent_dir
    assert "mission" not in env.observation_space.spaces
    assert env.observation_space["text"] == spaces.Box(
        0, len(BABYAI_WORDS) + 1, (32,), dtype=np.int64
    )


def test_unknown_words_become_unk_and_other_keys_are_untouched():
    env = TokenizeMission(TextEnv("go to the zebra"), words=["go", "to", "the"], max_len=6)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["text"], [2, 3, 4, UNK_ID, 0, 0])
    np.testing.assert_array_equal(obs["pos"], [0.25, 0.5])
    assert env.observation_space["pos"] == TextEnv().observation_space["pos"]


def test_a_changed_mission_is_encoded_again_and_each_step_gets_its_own_ids():
    source = TextEnv("go to the red ball")
    env = TokenizeMission(source, max_len=8)
    first, _ = env.reset()
    again, *_ = env.step(0)
    assert again["text"] is not first["text"]
    first["text"][:] = 0  # a caller writing into one observation changes no later one
    np.testing.assert_array_equal(env.step(0)[0]["text"], again["text"])
    assert env.vocabulary.decode(again["text"]) == "go to the red ball"
    source.mission = "go to the blue key"
    assert env.vocabulary.decode(env.reset()[0]["text"]) == "go to the blue key"


def test_vocabulary_travels_as_json(tmp_path):
    env = TokenizeMission(TextEnv(), max_len=8)
    env.vocabulary.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    again = TokenizeMission(TextEnv(), loaded)
    np.testing.assert_array_equal(env.reset()[0]["text"], again.reset()[0]["text"])


def test_long_missions_warn_once():
    env = TokenizeMission(TextEnv("go to the red ball then go to the blue key"), max_len=4)
    with pytest.warns(UserWarning, match="longer than max_len=4"):
        obs, _ = env.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(0)
    assert env.vocabulary.decode(obs["text"]) == "go to the red"


def test_tokenize_mission_errors():
    with pytest.raises(ValueError, match=r"'goal'.*pass mission_key"):
        TokenizeMission(TextEnv(), mission_key="goal")
    with pytest.raises(ValueError, match="not a string space"):
        TokenizeMission(TextEnv(), mission_key="pos")
    with pytest.raises(ValueError, match="already has a 'pos' key"):
        TokenizeMission(TextEnv(), text_key="pos")
    with pytest.raises(ValueError, match="either a vocabulary or words"):
        TokenizeMission(TextEnv(), Vocabulary(["a"], 2), words=["b"])


def test_rename_keys():
    env = RenameObservationKeys(TextEnv(), {"pos": "position"})
    obs, _ = env.reset()
    assert set(obs) == {"mission", "position"} == set(env.observation_space.spaces)
    with pytest.raises(ValueError, match="Cannot rename"):
        RenameObservationKeys(TextEnv(), {"nope": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        RenameObservationKeys(TextEnv(), {"pos": "mission"})


@pytest.mark.parametrize("keep_direction", [True, False])
def test_make_minigrid_env_feeds_the_encoder_without_declarations(keep_direction):
    env = make_minigrid_env("BabyAI-GoToObj-v0", keep_direction=keep_direction)
    expected = {"symbolic_grid", "text"} | ({"direction"} if keep_direction else set())
    assert set(env.observation_space.spaces) == expected
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    encoder = MultimodalEncoder(env.observation_space)
    assert encoder.modalities["symbolic_grid"] == "symbolic_grid"
    batch = to_tensor_obs({k: np.asarray(v)[None] for k, v in obs.items()})
    assert torch.isfinite(encoder(batch)).all()


def test_make_minigrid_env_keeping_image_key_needs_a_declaration():
    env = make_minigrid_env("BabyAI-GoToObj-v0", grid_key="image")
    encoder = MultimodalEncoder(env.observation_space, modalities={"image": "symbolic_grid"})
    assert type(encoder.encoders["image"]).__name__ == "SymbolicGridEncoder"


# -- MiniGrid's symbolic grid is not a picture ---------------------------------------------
GRID_WARNING = "is MiniGrid's symbolic grid"


@pytest.mark.parametrize("env_id", ["BabyAI-GoToObj-v0", "MiniGrid-Empty-5x5-v0"])
def test_tokenize_mission_warns_when_the_grid_would_be_taken_for_a_picture(env_id):
    """The README's old recipe: TokenizeMission alone leaves the (7, 7, 3) ids under 'image'."""
    with pytest.warns(UserWarning, match=GRID_WARNING) as record:
        env = TokenizeMission(gym.make(env_id))
    message = str(record[0].message)
    assert "(7, 7, 3)" in message and "modalities={'image': 'symbolic_grid'}" in message
    # ... which is what MultimodalEncoder would otherwise do with it:
    assert MultimodalEncoder(env.observation_space).modalities["image"] == "image"


def test_no_grid_warning_where_the_grid_is_declared_renamed_or_a_real_frame():
    from minigrid.wrappers import FullyObsWrapper, RGBImgPartialObsWrapper

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        make_minigrid_env("BabyAI-GoToObj-v0")  # renamed symbolic_grid
        make_minigrid_env("BabyAI-GoToObj-v0", grid_key="image")  # the caller declares it
        frames = TokenizeMission(RGBImgPartialObsWrapper(gym.make("BabyAI-GoToObj-v0")))
        TokenizeMission(TextEnv())  # not MiniGrid
    assert frames.observation_space["image"].shape == (56, 56, 3)
    with pytest.warns(UserWarning, match=GRID_WARNING):  # the full grid is a grid too
        TokenizeMission(FullyObsWrapper(gym.make("MiniGrid-Empty-5x5-v0")))


def test_mbm_agent_train_declares_the_grid_of_a_minigrid_env_under_any_id():
    """A MiniGrid env registered under an id of its own takes the generic path: its grid
    is declared ``symbolic_grid`` there (unless the config says otherwise)."""
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.envs import make_single_env, observation_adapter
    from mbm_agent.training.wrappers import minigrid_grid_keys

    env_id = "mbm-tests/MyGoToObj-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="minigrid.envs.babyai:GoToObj")
    assert minigrid_grid_keys(gym.make(env_id)) == ["image"]
    assert minigrid_grid_keys(gym.make("mbm/GoToObject-v0")) == []
    adapter = observation_adapter(resolve_config(env_id))
    assert adapter.modalities["image"] == "symbolic_grid"
    assert adapter.modalities["mission"] == "text"
    env, _ = make_single_env(env_id, {}, adapter=adapter)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (7, 7, 3) and obs["image"].max() < 11  # ids, not pixels
    # A declaration in the config wins (the user's choice).
    declared = observation_adapter(
        resolve_config(env_id, overrides={"modalities": {"image": "image"}})
    )
    assert declared.modalities["image"] == "image"


def test_the_readmes_minigrid_declaration_names_a_key_minigrid_has():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    (key,) = re.findall(r'modalities=\{"(\w+)": "symbolic_grid"\}` for MiniGrid', readme)
    space = gym.make("BabyAI-GoToObj-v0").observation_space
    assert key in space.spaces and space[key].shape == (7, 7, 3)


def test_babyai_level_generation_messages_are_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    raw = gym.make("BabyAI-GoToRedBall-v0")
    for seed in range(100):
        raw.reset(seed=seed)
    assert "Sampling rejected" in capsys.readouterr().out  # what BabyAI prints by itself

    env = make_minigrid_env("BabyAI-GoToRedBall-v0")
    for seed in range(100):
        obs, _ = env.reset(seed=seed)
    assert capsys.readouterr().out == ""
    assert set(obs) == {"symbolic_grid", "direction", "text"}
    # The same levels as without the wrapper (seeded the same).
    ref, _ = raw.reset(seed=99)
    np.testing.assert_array_equal(obs["symbolic_grid"], ref["image"])
