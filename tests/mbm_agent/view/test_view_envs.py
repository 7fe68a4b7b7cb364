"""The viewer beyond our games: BabyAI and a third-party env, with panels for the senses each has.

The policies are untrained (saved as `mbm-agent train` saves them, then loaded as a
run): what is checked is what the page is given, not how well they play.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT

from mbm_agent.sb3.algorithms import policy_class
from mbm_agent.sb3.policy import policy_kwargs_for
from mbm_agent.training.agent import policy_spec, save_policy
from mbm_agent.training.config import resolve_config
from mbm_agent.training.envs import make_single_env, observation_adapter
from mbm_agent.view.session import LoadedRun, Session


def untrained_policy_folder(tmp_path: Path, env_id: str, overrides: dict[str, Any]) -> Path:
    cfg = resolve_config(env_id, overrides=overrides)
    adapter = observation_adapter(cfg)
    env, vocab = make_single_env(cfg.env_id, cfg.env_kwargs, adapter=adapter)
    encoder = cfg.encoder_config()
    kwargs = policy_kwargs_for(encoder, adapter.modalities, cfg.policy_kwargs, cfg.extractor)
    policy = policy_class("ppo", "mbm")(
        env.observation_space, env.action_space, lambda _: 0.0, **kwargs
    )
    env.close()
    spec = policy_spec(
        policy,
        algo="ppo",
        env_id=cfg.env_id,
        env_kwargs=cfg.env_kwargs,
        encoder=encoder,
        modalities=adapter.modalities,
        policy_kwargs=cfg.policy_kwargs,
        vocabulary=vocab,
        adapter=adapter,
    )
    return save_policy(policy, spec, tmp_path / "policy", vocab)


def test_babyai_shows_its_room_mission_words_and_minigrid_action_names(tmp_path: Path) -> None:
    pytest.importorskip("minigrid")
    folder = untrained_policy_folder(tmp_path, "BabyAI-GoToObj-v0", {})
    session = Session([LoadedRun.load(folder)], seed=1)
    panel = session.state()["panels"][0]
    assert panel["actions"][:3] == ["left", "right", "forward"] and "toggle" in panel["actions"]
    assert panel["topdown"].startswith("data:image/png;base64,")
    assert panel["frames"] == {}  # the symbolic grid is not a picture; render() is
    assert panel["audio"] == {}
    words = " ".join(w["word"] for w in panel["text"]["text"])
    assert words == panel["instruction"]  # the mission, decoded with the run's vocabulary
    assert {s["key"] for s in panel["senses"]} >= {"symbolic_grid", "text"}
    panel = session.handle({"op": "step", "action": 2})["panels"][0]
    assert panel["t"] == 1 and panel["last_action"] == {"index": 2, "by": "person"}
    session.close()


def test_a_third_party_env_shows_its_frame_words_and_resynthesised_microphone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "examples.third_party_env", raising=False)
    folder = untrained_policy_folder(
        tmp_path,
        "examples.third_party_env:ThirdPartyEnv-v0",
        {"modalities": {"mic": "waveform"}},
    )
    session = Session([LoadedRun.load(folder)], seed=0)
    for _ in range(3):  # the microphone's rolling window fills up
        panel = session.handle({"op": "step"})["panels"][0]
    assert panel["actions"] == ["0", "1", "2"]
    assert set(panel["frames"]) == {"frame"}
    # Hashed token ids do not decode: the words come from the raw instruction.
    words = [w["word"] for w in panel["text"]["instruction"]]
    assert words == str(panel["instruction"]).split() and words[0] == "touch"
    mic = panel["audio"]["mic"]
    assert np.asarray(mic["mel"]).ndim == 3
    # The sound is the microphone's own window of samples the features were made from.
    assert mic["sound"]["exact"] is True and mic["sound"]["peak"] > 0.0
    assert mic["sound"]["sample_rate"] == 8000
    masked = session.handle({"op": "mask", "key": "mic", "masked": True})["panels"][0]
    assert masked["masked"] == ["mic"]
    session.close()
