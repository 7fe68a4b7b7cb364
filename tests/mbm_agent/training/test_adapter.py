"""The observation adapter: declarations, hashed text, waveforms (against librosa), saving."""

from __future__ import annotations

import json
import string
import warnings
from typing import Any

import gymnasium as gym
import librosa
import numpy as np
import pytest
from gymnasium import spaces

from envs.core.audio import LOG_EPS
from mbm_agent.training.adapter import (
    HASH_TABLE_SIZE,
    TEXT_MAX_LEN,
    HashedWords,
    ObservationAdapter,
    parse_declaration,
)
from mbm_agent.training.wrappers import AdaptObservation

LOW, HIGH = float(np.log(LOG_EPS)), 12.0
#: blake2b-64 buckets of "touch the red lamp" in the default table: fixed for good.
HASHED_IDS = [3184, 348, 1447, 798]


def _space(**keys: spaces.Space[Any]) -> spaces.Dict:
    return spaces.Dict(keys)


# -- declarations ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "kind", "layout", "options"),
    [
        ("image", "image", None, {}),
        ("symbolic_grid:chw", "symbolic_grid", "chw", {}),
        ({"kind": "image", "layout": "hwc"}, "image", "hwc", {}),
        ({"kind": "waveform", "sample_rate": 8000}, "waveform", None, {"sample_rate": 8000}),
        ({"kind": "text", "max_len": 64}, "text", None, {"max_len": 64}),
    ],
)
def test_declarations_take_a_string_or_a_mapping(
    value: Any, kind: str, layout: str | None, options: dict[str, Any]
) -> None:
    decl = parse_declaration("k", value)
    assert (decl.kind, decl.layout, dict(decl.options)) == (kind, layout, options)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("wavefrom", r"modalities.k: unknown modality 'wavefrom' \(did you mean 'waveform'\?\)"),
        ("text:chw", "layout"),
        ({"sample_rate": 8000}, "needs a string kind"),
        (
            {"kind": "waveform", "samplerate": 8000},
            r"'samplerate' \(did you mean 'sample_rate'\?\)",
        ),
        ({"kind": "image", "max_len": 3}, "image takes no option"),
        ({"kind": "text", "max_len": 0}, r"modalities.k.max_len must be an integer >= 1"),
        ({"kind": "text", "words": "red blue"}, "words must be a list"),
        (3, "must be a modality name"),
    ],
)
def test_bad_declarations_name_the_key_and_the_fix(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_declaration("k", value)


def test_declared_key_missing_from_the_space_is_named_with_a_hint() -> None:
    space = _space(microphone=spaces.Box(-1, 1, (64,), np.float32))
    with pytest.raises(ValueError, match=r"'micropone' \(did you mean 'microphone'\?\)"):
        ObservationAdapter.for_space(space, {"micropone": "waveform"})


def test_plain_box_env_becomes_one_key_named_by_its_kind() -> None:
    frame = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    adapter = ObservationAdapter.for_space(frame)
    assert adapter.box_key == "image" and not adapter.is_identity
    assert list(adapter.observation_space(frame).spaces) == ["image"]
    vector = spaces.Box(-1.0, 1.0, (5,), np.float32)
    adapter = ObservationAdapter.for_space(vector)
    assert adapter.box_key == "obs"
    x = np.zeros((2, 5), np.float32)
    assert adapter.adapt(x)["obs"] is x


def test_contract_env_is_the_identity() -> None:
    space = _space(image=spaces.Box(0, 255, (8, 8, 3), np.uint8), direction=spaces.Discrete(4))
    adapter = ObservationAdapter.for_space(space, {"image": "image:hwc"})
    assert adapter.is_identity and adapter.modalities == {"image": "image:hwc"}


# -- text --------------------------------------------------------------------------
def test_hashed_word_ids_are_stable_and_in_range() -> None:
    codec = HashedWords()
    ids = [codec.word_id(w) for w in ("touch", "the", "red", "lamp")]
    # The ids a saved model depends on: the same in every process and on every machine.
    assert ids == HASHED_IDS
    small = HashedWords(table_size=5)
    assert {small.word_id(f"w{i}") for i in range(200)} == {2, 3, 4}


def test_unknown_env_text_is_hashed_without_a_word_list() -> None:
    space = _space(note=spaces.Text(80, charset=string.ascii_letters + " "))
    adapter = ObservationAdapter.for_space(space)
    assert adapter.modalities == {"note": "text"}
    out_space = adapter.observation_space(space)["note"]
    assert out_space == spaces.Box(0, HASH_TABLE_SIZE - 1, (TEXT_MAX_LEN,), np.int64)
    ids = adapter.adapt({"note": "Zorblax the Unseen"})["note"]
    assert ids.dtype == np.int64 and ids.shape == (TEXT_MAX_LEN,)
    codec = HashedWords()
    assert ids[:3].tolist() == [codec.word_id(w) for w in ("zorblax", "the", "unseen")]
    assert not ids[3:].any()
    assert out_space.contains(ids)
    # A batch of strings gives a batch of ids; converted ids pass unchanged.
    batch = adapter.adapt({"note": ["a b", "c"]})["note"]
    assert batch.shape == (2, TEXT_MAX_LEN)
    assert adapter.adapt({"note": ids})["note"] is ids


def test_word_list_when_given() -> None:
    space = _space(note=spaces.Text(40))
    adapter = ObservationAdapter.for_space(
        space, {"note": {"kind": "text", "words": ["go", "left"], "max_len": 3}}
    )
    assert adapter.adapt({"note": "go left now"})["note"].tolist() == [2, 3, 1]


def test_byte_array_text_declared_text_is_decoded() -> None:
    message = spaces.Box(0, 255, (16,), np.uint8)  # MiniHack's message, shortened
    space = _space(message=message)
    raw = np.zeros(16, np.uint8)
    raw[:11] = np.frombuffer(b"It's a wall", np.uint8)
    assert ObservationAdapter.for_space(space).is_identity  # a vector unless declared
    adapter = ObservationAdapter.for_space(space, {"message": "text"})
    ids = adapter.adapt({"message": raw})["message"]
    codec = HashedWords()
    assert ids[:4].tolist() == [codec.word_id(w) for w in ("it", "s", "a", "wall")]
    batch = adapter.adapt({"message": np.stack([raw, raw])})["message"]
    np.testing.assert_array_equal(batch[1], ids)


def test_text_longer_than_the_limit_is_cut_with_one_warning_naming_the_fix() -> None:
    space = _space(note=spaces.Text(200))
    adapter = ObservationAdapter.for_space(space, {"note": {"kind": "text", "max_len": 4}})
    with pytest.warns(UserWarning, match=r"'note'.*6 words.*max_len=4.*max_len: 6"):
        ids = adapter.adapt({"note": "one two three four five six"})["note"]
    assert (ids != 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter.adapt({"note": "one two three four five six seven"})


def test_text_options_on_token_ids_are_refused() -> None:
    space = _space(text=spaces.Box(0, 9, (6,), np.int64))
    assert ObservationAdapter.for_space(space, {"text": "text"}).is_identity
    with pytest.raises(ValueError, match="raw strings or bytes"):
        ObservationAdapter.for_space(space, {"text": {"kind": "text", "max_len": 8}})


# -- waveform ----------------------------------------------------------------------
RATE, N_FFT, HOP, N_MELS, N_FRAMES, CHUNK = 16000, 512, 160, 40, 5, 160
WINDOW = N_FFT + (N_FRAMES - 1) * HOP
WAVEFORM = {
    "kind": "waveform",
    "sample_rate": RATE,
    "n_fft": N_FFT,
    "hop_length": HOP,
    "n_mels": N_MELS,
    "n_frames": N_FRAMES,
}


def _signal(n: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / RATE
    tones = np.stack([0.3 * np.sin(2 * np.pi * (440.0 + 700 * c) * t) for c in range(channels)])
    return np.clip(tones + 0.05 * rng.standard_normal((channels, n)), -0.99, 0.99)


def _encode(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """PCM of ``x`` in ``dtype`` and the float signal it stands for."""
    if dtype == "int16":
        pcm = np.round(x * 32768).astype(np.int16)
        return pcm, pcm / 32768.0
    if dtype == "uint8":
        pcm = np.round(x * 128 + 128).clip(0, 255).astype(np.uint8)
        return pcm, (pcm.astype(np.float64) - 128) / 128
    pcm = x.astype(np.float32)
    return pcm, pcm.astype(np.float64)


def _librosa_features(y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        center=False,
        window="hann",
        power=2.0,
        n_mels=N_MELS,
    )
    return np.clip(np.log(mel + LOG_EPS), LOW, HIGH)


@pytest.mark.parametrize(
    ("dtype", "layout"),
    [
        ("int16", "mono"),
        ("uint8", "mono"),
        ("float32", "channels_first"),
        ("int16", "channels_last"),
    ],
)
def test_waveform_features_are_librosa_log_mel_of_the_rolling_window(
    dtype: str, layout: str
) -> None:
    channels = 1 if layout == "mono" else 2
    shape = {"mono": (CHUNK,), "channels_first": (2, CHUNK), "channels_last": (CHUNK, 2)}[layout]
    low, high = (-1.0, 1.0) if dtype == "float32" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    space = _space(mic=spaces.Box(low, high, shape, np.dtype(dtype)))
    adapter = ObservationAdapter.for_space(space, {"mic": WAVEFORM})
    assert adapter.observation_space(space)["mic"].shape == (channels, N_MELS, N_FRAMES)
    steps = 10  # the window (1152 samples) fills after 7.2 steps of 160
    pcm, heard = _encode(_signal(steps * CHUNK, channels), dtype)
    state = adapter.new_state()
    for step in range(steps):
        chunk = pcm[:, step * CHUNK : (step + 1) * CHUNK]
        raw = chunk[0] if layout == "mono" else chunk if layout == "channels_first" else chunk.T
        feats = adapter.adapt({"mic": raw}, state)["mic"]
        assert feats.dtype == np.float32 and feats.shape == (channels, N_MELS, N_FRAMES)
        end = (step + 1) * CHUNK
        window = np.zeros((channels, WINDOW))  # silence before the episode's first sample
        seen = heard[:, max(0, end - WINDOW) : end]
        window[:, WINDOW - seen.shape[1] :] = seen
        for c in range(channels):
            np.testing.assert_allclose(feats[c], _librosa_features(window[c]), atol=1e-4)


def test_waveform_batches_match_one_env_at_a_time_and_reset_per_slot() -> None:
    space = _space(mic=spaces.Box(-32768, 32767, (CHUNK,), np.int16))
    adapter = ObservationAdapter.for_space(space, {"mic": WAVEFORM})
    pcm, _ = _encode(_signal(6 * CHUNK, 3), "int16")  # three envs' streams
    batch_state = adapter.new_state(3)
    singles = [adapter.new_state() for _ in range(3)]
    for step in range(6):
        chunks = pcm[:, step * CHUNK : (step + 1) * CHUNK]
        if step == 4:  # env 1 starts a new episode
            batch_state.reset([1])
            singles[1].reset()
        batched = adapter.adapt({"mic": chunks}, batch_state)["mic"]
        for i in range(3):
            np.testing.assert_array_equal(
                batched[i], adapter.adapt({"mic": chunks[i]}, singles[i])["mic"]
            )


def test_waveform_wrong_length_is_a_clear_error() -> None:
    space = _space(mic=spaces.Box(-32768, 32767, (CHUNK,), np.int16))
    adapter = ObservationAdapter.for_space(space, {"mic": WAVEFORM})
    with pytest.raises(
        ValueError, match=r"obs\['mic'\] has shape \(100,\).*16000 Hz \(160 samples per step\)"
    ):
        adapter.adapt({"mic": np.zeros(100, np.int16)}, adapter.new_state())
    other = spaces.Box(-32768, 32767, (CHUNK * 2,), np.int16)
    with pytest.raises(ValueError, match="another env or chunk length"):
        adapter.observation_space(_space(mic=other))


def test_waveform_sample_rate_from_the_env_or_declared_and_they_must_agree() -> None:
    space = _space(mic=spaces.Box(-1.0, 1.0, (CHUNK,), np.float32))
    with pytest.raises(ValueError, match=r"sample rate.*kind: waveform, sample_rate"):
        ObservationAdapter.for_space(space, {"mic": "waveform"})
    meta = {"audio_sample_rate": 8000}
    adapter = ObservationAdapter.for_space(space, {"mic": "waveform"}, metadata=meta)
    assert adapter.to_dict()["transforms"]["mic"]["sample_rate"] == 8000
    assert adapter.to_dict()["transforms"]["mic"]["n_fft"] == 256  # our games' at 8 kHz
    with pytest.raises(ValueError, match=r"sample_rate=16000 but the env.*8000 Hz"):
        ObservationAdapter.for_space(space, {"mic": WAVEFORM}, metadata=meta)


def test_waveform_settings_that_leave_mel_bands_empty_are_refused() -> None:
    space = _space(mic=spaces.Box(-1.0, 1.0, (CHUNK,), np.float32))
    bad = {**WAVEFORM, "n_fft": 64, "hop_length": 32, "n_mels": 128}
    with pytest.raises(ValueError, match=r"n_mels=128 is too many for n_fft=64.*use n_mels <= \d+"):
        ObservationAdapter.for_space(space, {"mic": bad})


def test_chunk_longer_than_the_window_warns_and_keeps_its_end() -> None:
    space = _space(mic=spaces.Box(-1.0, 1.0, (4096,), np.float32))
    with pytest.warns(UserWarning, match=r"only its last 1152 samples.*n_frames: 24"):
        adapter = ObservationAdapter.for_space(space, {"mic": WAVEFORM})
    x = _signal(4096, 1)[0].astype(np.float32)
    feats = adapter.adapt({"mic": x}, adapter.new_state())["mic"]
    np.testing.assert_allclose(
        feats[0], _librosa_features(x[-WINDOW:].astype(np.float64)), atol=1e-4
    )


# -- the wrapper and saving ----------------------------------------------------------
class _Mic(gym.Env[dict[str, Any], int]):
    metadata: dict[str, Any] = {"audio_sample_rate": RATE}

    def __init__(self) -> None:
        self.observation_space = _space(
            mic=spaces.Box(-32768, 32767, (CHUNK,), np.int16), note=spaces.Text(30)
        )
        self.action_space = spaces.Discrete(2)

    def _obs(self) -> dict[str, Any]:
        return {"mic": np.full(CHUNK, 8000, np.int16), "note": "hello"}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        return self._obs(), 0.0, False, False, {}


def test_wrapper_converts_and_silences_the_window_at_reset() -> None:
    env = AdaptObservation(_Mic(), modalities={"mic": "waveform"})
    first, _ = env.reset(seed=0)
    assert env.observation_space.contains(first)
    later = first
    for _ in range(3):
        later, *_ = env.step(0)
    assert later["mic"].mean() > first["mic"].mean()  # more of the window holds sound
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(again["mic"], first["mic"])


def test_adapter_round_trips_through_json_and_refuses_damage() -> None:
    adapter = AdaptObservation(_Mic(), modalities={"mic": "waveform"}).adapter
    data = json.loads(json.dumps(adapter.to_dict()))
    assert ObservationAdapter.from_dict(data) == adapter
    assert ObservationAdapter.from_spec({"observation_adapter": data}) == adapter
    assert ObservationAdapter.from_spec({"modalities": {"grid": "symbolic_grid"}}).is_identity
    bad_version = {**data, "version": 99}
    with pytest.raises(ValueError, match="version 99"):
        ObservationAdapter.from_dict(bad_version)
    huge = json.loads(json.dumps(data))
    huge["transforms"]["mic"]["n_fft"] = 2**40
    with pytest.raises(ValueError, match=r"n_fft must be an integer in \[1, 65536\]"):
        ObservationAdapter.from_dict(huge)
    broken = json.loads(json.dumps(data))
    del broken["transforms"]["note"]["codec"]
    with pytest.raises(ValueError, match="Malformed"):
        ObservationAdapter.from_dict(broken)


# -- 2-D symbolic grids (MiniHack's glyphs) ---------------------------------------------
def test_a_2d_grid_declared_symbolic_grid_gets_its_channel_axis_and_round_trips() -> None:
    glyphs = spaces.Box(0, 5976, (9, 9), np.int16)
    space = _space(glyphs_crop=glyphs, blstats=spaces.Box(-5, 5, (4,), np.int64))
    adapter = ObservationAdapter.for_space(space, {"glyphs_crop": "symbolic_grid"})
    assert adapter.modalities["glyphs_crop"] == "symbolic_grid"
    out_space = adapter.observation_space(space)
    assert out_space["glyphs_crop"] == spaces.Box(0, 5976, (9, 9, 1), np.int16)
    assert out_space["blstats"] == space["blstats"]
    raw = np.arange(81, dtype=np.int16).reshape(9, 9) * 70
    one = adapter.adapt({"glyphs_crop": raw, "blstats": np.zeros(4, np.int64)})["glyphs_crop"]
    assert one.shape == (9, 9, 1) and one.dtype == np.int16
    np.testing.assert_array_equal(one[..., 0], raw)
    batch = adapter.adapt({"glyphs_crop": np.stack([raw, raw + 1])})["glyphs_crop"]
    assert batch.shape == (2, 9, 9, 1)
    np.testing.assert_array_equal(batch[1, ..., 0], raw + 1)
    # already converted (as a wrapped env emits it): unchanged; anything else: named error
    np.testing.assert_array_equal(adapter.adapt({"glyphs_crop": one})["glyphs_crop"], one)
    with pytest.raises(ValueError, match=r"obs\['glyphs_crop'\] has shape \(9, 8\)"):
        adapter.adapt({"glyphs_crop": raw[:, :8]})
    data = json.loads(json.dumps(adapter.to_dict()))
    assert ObservationAdapter.from_dict(data) == adapter
    assert data["transforms"]["glyphs_crop"] == {
        "kind": "grid",
        "dtype": "int16",
        "shape": [9, 9],
        "high": 5976,
    }
    for field, value, match in (
        ("dtype", "float32", "integer type"),
        ("shape", [9, 9, 1], "list of 2 sizes"),
        ("high", 2**40, "high must be an integer"),
    ):
        damaged = json.loads(json.dumps(data))
        damaged["transforms"]["glyphs_crop"][field] = value
        with pytest.raises(ValueError, match=match):
            ObservationAdapter.from_dict(damaged)
    with pytest.raises(ValueError, match="was it trained on another env"):
        adapter.observation_space(_space(glyphs_crop=spaces.Box(0, 5976, (21, 79), np.int16)))
    # undeclared, the same grid is a small vector, as before
    assert ObservationAdapter.for_space(_space(g=spaces.Box(0, 9, (3, 3), np.int16))).is_identity
