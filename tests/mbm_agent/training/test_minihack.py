"""NetHack through MiniHack: seeds, success, actions by name, and the message read as text.

Needs the ``minihack`` extra (``nle`` and ``minihack``; ``make install`` adds them
with ``--no-deps``); skipped, saying so, where they are not installed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nle", reason="needs nle (the minihack extra: make install adds it)")
with warnings.catch_warnings():  # minihack imports pkg_resources, which warns
    warnings.simplefilter("ignore")
    pytest.importorskip("minihack", reason="needs minihack (the minihack extra)")

from mbm_agent.training.adapter import HashedWords
from mbm_agent.training.config import resolve_config
from mbm_agent.training.envs import make_single_env, observation_adapter
from mbm_agent.training.minihack import action_codes, make_minihack_env
from mbm_agent.training.trainer import train

EAT = "MiniHack-Eat-v0"
KEYS = ["glyphs_crop", "message"]
ACTIONS = ["N", "E", "S", "W", "NE", "SE", "SW", "NW", "EAT"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _message(obs: dict[str, np.ndarray]) -> str:
    return bytes(obs["message"]).split(b"\0")[0].decode()


def test_actions_by_name_or_code() -> None:
    from nle import nethack

    codes = action_codes(["N", "EAT", "CompassDirectionLonger.N", 121])
    assert codes == (
        int(nethack.CompassDirection.N),
        int(nethack.Command.EAT),
        int(nethack.CompassDirectionLonger.N),
        121,
    )
    assert codes[0] == ord("k") and codes[1] == ord("e")  # NetHack's keys
    with pytest.raises(ValueError, match="Unknown NetHack action 'JUMPP'"):
        action_codes(["JUMPP"])
    with pytest.raises(ValueError, match="twice"):
        action_codes(["N", int(nethack.CompassDirection.N)])
    with pytest.raises(ValueError, match="not the key code"):
        action_codes([1])
    with pytest.raises(ValueError, match="draws NetHack's screen as text"):
        make_minihack_env(EAT, render_mode="rgb_array")


def test_seeds_fix_the_level_as_gymnasium_seeds_do() -> None:
    """NLE's own reset ignores ``seed``; the wrapper seeds NetHack's generators with it."""
    env = make_minihack_env(EAT, observation_keys=KEYS, actions=ACTIONS)
    try:
        first = [env.reset(seed=s)[0]["glyphs_crop"].copy() for s in range(6)]
        again = [env.reset(seed=s)[0]["glyphs_crop"].copy() for s in range(6)]
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
        assert len({a.tobytes() for a in first}) > 1
        # After a seeded reset, unseeded resets follow a sequence fixed by that seed.
        env.reset(seed=11)
        follow = [env.reset()[0]["glyphs_crop"].copy() for _ in range(3)]
        env.reset(seed=11)
        for a in follow:
            np.testing.assert_array_equal(env.reset()[0]["glyphs_crop"], a)
    finally:
        env.close()


def test_is_success_is_eating_the_apple() -> None:
    """A random policy sometimes eats the apple (reward 1) and sometimes times out or dies."""
    env = make_minihack_env(EAT, observation_keys=KEYS, actions=ACTIONS, max_episode_steps=60)
    rng = np.random.default_rng(0)
    outcomes = []
    asked = False
    try:
        env.reset(seed=0)
        for _ in range(30):
            obs, info = env.reset()
            assert "is_success" not in info
            done = False
            while not done:
                obs, reward, terminated, truncated, info = env.step(int(rng.integers(9)))
                asked |= "eat it?" in _message(obs) or "eat one?" in _message(obs)
                done = terminated or truncated
                assert ("is_success" in info) == done
            outcomes.append((info["is_success"], float(reward) > 0))
    finally:
        env.close()
    assert all(success == paid for success, paid in outcomes)
    assert {s for s, _ in outcomes} == {True, False}
    assert asked  # the question only the message carries


def test_the_games_config_reads_the_message_as_text_and_the_glyphs_as_a_grid() -> None:
    cfg = resolve_config(EAT)
    adapter = observation_adapter(cfg)
    assert adapter.modalities == {"glyphs_crop": "symbolic_grid", "message": "text"}
    env, _ = make_single_env(EAT, cfg.env_kwargs, adapter=adapter)
    try:
        assert env.action_space.n == len(ACTIONS)
        assert env.observation_space["glyphs_crop"].shape == (9, 9, 1)
        assert env.observation_space["message"].shape == (16,)
        obs, _ = env.reset(seed=3)
        assert env.observation_space.contains(obs)
    finally:
        env.close()
    raw_env = make_minihack_env(EAT, **cfg.env_kwargs)
    try:
        raw, _ = raw_env.reset(seed=3)  # the same level, unconverted
        assert raw["glyphs_crop"].shape == (9, 9)
        np.testing.assert_array_equal(obs["glyphs_crop"][..., 0], raw["glyphs_crop"])
        assert len(np.unique(raw["glyphs_crop"])) > 2  # floor, walls, the agent, ...
    finally:
        env.close()


def test_the_message_becomes_hashed_word_ids() -> None:
    cfg = resolve_config(EAT)
    adapter = observation_adapter(cfg)
    raw = np.zeros(256, np.uint8)
    text = b"There is an apple here; eat it? [ynq] (n)"
    raw[: len(text)] = np.frombuffer(text, np.uint8)
    ids = adapter.adapt({"message": raw, "glyphs_crop": np.zeros((9, 9), np.int16)})["message"]
    words = ["there", "is", "an", "apple", "here", "eat", "it", "ynq", "n"]
    codec = HashedWords()
    assert ids[: len(words)].tolist() == [codec.word_id(w) for w in words]
    assert not ids[len(words) :].any()


@pytest.mark.slow
def test_trains_and_saves_its_conversion(tmp_path: Path) -> None:
    """A tiny run through the game's own config: the pipeline, not the score."""
    cfg = resolve_config(
        EAT,
        overrides={
            "steps": 256,
            "n_envs": 2,
            "runs_dir": str(tmp_path),
            "algo_kwargs": {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
            "eval_every": 0,
            "final_eval_episodes": 2,
            "checkpoint_every": 0,
            "env_kwargs": {"max_episode_steps": 50},
        },
    )
    result = train(cfg, progress=False)
    spec = json.loads((Path(result.run_dir) / "best" / "model.json").read_text())
    assert spec["modalities"] == {"glyphs_crop": "symbolic_grid", "message": "text"}
    transforms = spec["observation_adapter"]["transforms"]
    assert transforms["glyphs_crop"]["kind"] == "grid"
    assert transforms["message"]["codec"]["codec"] == "hash"
    report = json.loads((Path(result.run_dir) / "eval.json").read_text())
    assert report["success"]["n"] == 2
