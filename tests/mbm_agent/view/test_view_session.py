"""The numbers the viewer shows: probabilities, per-sense and per-word shifts, fusion weights, sound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import AGENTS

from envs.core.audio import AudioConfig, log_mel
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.training.agent import Agent, build_policy, load_agent
from mbm_agent.view.session import LoadedRun, Panel, Session, analyse
from mbm_agent.view.sound import Sound, resynthesise


def loaded(name: str) -> LoadedRun:
    return LoadedRun.load(AGENTS / name)


def untrained(fusion: str) -> LoadedRun:
    """An untrained FindSound policy with another fusion mode (its weights are random)."""
    reference = load_agent(AGENTS / "FindSound")
    spec = json.loads((AGENTS / "FindSound" / "model.json").read_text())
    spec["encoder"]["fusion"] = fusion
    torch.manual_seed(0)
    agent = Agent(build_policy(spec), spec, reference.vocabulary)
    network = PolicyNetwork.from_agent(agent)
    return LoadedRun(fusion, AGENTS / "FindSound", agent, network, spec["env_id"], {})


def test_probabilities_and_value_match_the_policy_network_and_the_agent() -> None:
    run = loaded("GoToObject")  # a memory policy: its first step starts from a zero state
    panel = Panel(run, seed=3)
    obs = {k: torch.as_tensor(np.asarray(v)[None]) for k, v in panel.obs.items()}
    with torch.no_grad():
        if run.network.memory:
            action, logits, value, _ = run.network(obs, run.network.initial_state(1))
        else:
            action, logits, value = run.network(obs)
    np.testing.assert_allclose(panel.analysis.probs, torch.softmax(logits, 1)[0].numpy(), atol=1e-5)
    assert panel.analysis.value == pytest.approx(float(value[0]), abs=1e-5)
    assert (
        panel.policy_action()
        == int(action[0])
        == int(np.asarray(run.agent.act(panel.obs)).reshape(-1)[0])
    )
    panel.close()


def test_masking_a_sense_is_what_the_policy_does_without_it_and_the_agent_acts_on_it() -> None:
    run = loaded("FindSound")
    panel = Panel(run, seed=5)
    without_audio = panel.analysis.without["audio"].copy()
    with run.agent.dropped(["audio"]):  # eval --drop-modality's path
        dropped_action = int(np.asarray(run.agent.act(panel.obs)).reshape(-1)[0])
    panel.set_mask("audio", True)
    np.testing.assert_allclose(panel.analysis.probs, without_audio, atol=1e-6)
    assert panel.policy_action() == dropped_action
    state = panel.state()
    assert state["masked"] == ["audio"]
    assert next(s for s in state["senses"] if s["key"] == "audio")["shift"] == 0.0
    with pytest.raises(ValueError, match="unknown sense"):
        panel.set_mask("smell", True)
    panel.close()


def test_word_occlusion_scores_every_word_and_only_words() -> None:
    run = loaded("GoToObject")
    panel = Panel(run, seed=0)
    ids = np.asarray(panel.obs["text"])
    words = panel.words("text")
    assert [w["pos"] for w in words] == [int(i) for i in np.flatnonzero(ids)]
    assert " ".join(w["word"] for w in words) == panel.info["instruction"]
    for w in words:
        occluded = dict(panel.obs)
        occluded["text"] = ids.copy()
        occluded["text"][w["pos"]] = 0
        alone = analyse(run.network, occluded, set(), [], None)
        tv = 0.5 * np.abs(alone.probs - panel.analysis.probs).sum()
        assert w["score"] == pytest.approx(tv, abs=1e-4)
    panel.close()


def test_gated_fusion_shows_its_gates_and_attention_its_attention() -> None:
    gated = Panel(untrained("gated"), seed=0)
    weights = gated.analysis.fusion
    assert weights is not None and set(weights) == {"image", "audio"}
    assert all(0.0 < w < 1.0 for w in weights.values())
    gated.set_mask("audio", True)
    assert gated.analysis.fusion is not None and gated.analysis.fusion["audio"] == 0.0
    gated.close()

    attention = Panel(untrained("attention"), seed=0)
    weights = attention.analysis.fusion
    assert weights is not None and set(weights) == {"image", "audio"}
    assert 0.0 < sum(weights.values()) <= 1.0 + 1e-6  # the rest goes to the summary token
    attention.set_mask("image", True)
    assert attention.analysis.fusion is not None and attention.analysis.fusion["image"] == 0.0
    assert attention.state()["fusion_weights"] == "attention"
    attention.close()

    concat = Panel(loaded("FindSound"), seed=0)
    assert concat.analysis.fusion is None
    assert all(s["weight"] is None for s in concat.state()["senses"])
    concat.close()


def test_episodes_end_and_the_next_step_starts_the_next_seed() -> None:
    session = Session([loaded("GoToObject")], seed=0)
    for _ in range(200):
        state = session.handle({"op": "step"})["panels"][0]
        if state["done"]:
            break
    assert state["done"] and state["success"] is not None
    state = session.handle({"op": "step"})["panels"][0]
    assert state == {**state, "seed": 1, "t": 0, "done": False, "episode": 1}
    state = session.handle({"op": "reset", "seed": 42})["panels"][0]
    assert state["seed"] == 42 and state["t"] == 0 and state["episode"] == 0
    session.close()


def test_the_sound_played_is_the_game_waveform_whose_features_the_agent_heard() -> None:
    panel = Panel(loaded("FindSound"), seed=2)
    sound = panel.sound("audio")
    assert sound is not None and sound.exact and sound.sample_rate == 8000
    assert sound.samples.shape == (2, 8000) and sound.peak > 0.01
    cfg = panel.game().audio_cfg
    # Every clip-long window that starts a piece is one variant of the heard mix.
    feats = np.clip(log_mel(sound.samples[:, 64 : 64 + cfg.n_samples], cfg), cfg.low, cfg.high)
    assert np.isfinite(feats).all()
    state = panel.state()
    assert state["audio"]["audio"]["sound"]["exact"] is True
    panel.close()


def test_resynthesis_keeps_the_spectrum_of_the_features() -> None:
    cfg = AudioConfig()
    t = np.arange(cfg.n_samples) / cfg.sample_rate
    clip = np.stack([0.4 * np.sin(2 * np.pi * 700 * t), 0.1 * np.sin(2 * np.pi * 2200 * t)])
    features = log_mel(clip, cfg)
    sound = resynthesise(features, cfg, seconds=0.5)
    assert not sound.exact and sound.samples.shape == (2, 4000)
    again = log_mel(sound.samples[:, : cfg.n_samples].astype(np.float64), cfg)
    # The loudest mel band of each ear and frame survives resynthesis.
    assert (again.argmax(axis=1) == features.argmax(axis=1)).mean() > 0.8


def test_wav_encoding_round_trips(tmp_path: Path) -> None:
    import wave

    samples = np.stack([np.linspace(-1, 1, 800), np.zeros(800)]).astype(np.float32)
    path = tmp_path / "x.wav"
    path.write_bytes(Sound(samples, 8000, exact=True).wav())
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 8000, 800)
        pcm = np.frombuffer(w.readframes(800), "<i2").reshape(800, 2)
    np.testing.assert_allclose(pcm[:, 0] / 32767, samples[0], atol=1e-4)
