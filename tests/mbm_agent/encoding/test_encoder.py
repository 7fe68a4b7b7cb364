from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from mbm_agent import FUSION_MODES, EncoderConfig, MultimodalEncoder, make_fusion
from mbm_agent.encoding.encoders import ImageEncoder, TextEncoder

SUBSETS = [
    ("image",),
    ("text", "audio"),
    ("image", "text", "audio"),
    ("image", "text", "audio", "vec", "direction"),
    ("symbolic_grid", "text", "direction"),
]
FUSIONS = sorted(FUSION_MODES)
LAYOUTS = ["channels_last", "channels_first"]
B = 5


def _ids(value: object) -> str:
    return "+".join(value) if isinstance(value, tuple) else str(value)


def _build(space_factory, keys, fusion="concat", layout="channels_last", **cfg):
    space = space_factory(keys, channels_first=layout == "channels_first")
    return space, MultimodalEncoder(space, EncoderConfig(fusion=fusion, **cfg))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("keys", SUBSETS, ids=_ids)
def test_shapes_finite_and_gradients_reach_every_parameter(
    space_factory, obs_factory, keys, fusion, layout
):
    space, enc = _build(space_factory, keys, fusion, layout, features_dim=48)
    assert enc.features_dim == 48
    out = enc(obs_factory(space, B))
    assert out.shape == (B, 48)
    assert torch.isfinite(out).all()
    (out * torch.linspace(-1, 1, 48)).sum().backward()
    for name, param in enc.named_parameters():
        if name.startswith("missing."):
            continue  # only used when a modality is missing
        assert param.grad is not None, f"no gradient reaches {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient at {name}"


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("keys", SUBSETS[1:], ids=_ids)
def test_masked_modality_has_no_effect_and_absent_equals_masked(
    space_factory, obs_factory, keys, fusion
):
    space, enc = _build(space_factory, keys, fusion)
    enc.eval()
    obs = obs_factory(space, B, seed=1)
    other = obs_factory(space, B, seed=2)
    for key in keys:
        changed = {**obs, key: other[key]}
        with torch.no_grad():
            base = enc(obs)
            # Not a tautology: unmasked, the key does change the output.
            assert not torch.allclose(base, enc(changed)), key
            masked = enc(obs, mask={key: False})
            assert torch.equal(masked, enc(changed, mask={key: False})), key
            absent = {k: v for k, v in obs.items() if k != key}
            assert torch.equal(masked, enc(absent, mask={key: False})), key
            per_sample = torch.tensor([True, False, True, False, True])
            mixed_a = enc(obs, mask={key: per_sample})
            mixed_b = enc(changed, mask={key: per_sample})
        assert torch.equal(mixed_a[~per_sample], mixed_b[~per_sample]), key
        assert torch.allclose(mixed_a[per_sample], base[per_sample], atol=1e-6), key
        assert not torch.allclose(mixed_a[per_sample], mixed_b[per_sample]), key


@pytest.mark.parametrize("fusion", FUSIONS)
def test_everything_missing_and_nan_in_masked_input_stay_finite(space_factory, obs_factory, fusion):
    keys = ("image", "text", "audio", "direction")
    space, enc = _build(space_factory, keys, fusion)
    obs = obs_factory(space, B)
    obs["audio"] = torch.full_like(obs["audio"], float("nan"))
    out = enc(obs, mask={k: False for k in keys})
    assert torch.isfinite(out).all()
    out = enc(obs, mask={"audio": torch.zeros(B, dtype=torch.bool)})
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, param in enc.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("fusion", FUSIONS)
def test_modality_dropout_is_finite_active_and_never_drops_everything(
    space_factory, obs_factory, fusion
):
    keys = ("image", "text", "audio", "direction")
    space, enc = _build(space_factory, keys, fusion, modality_dropout=0.7)
    enc.train()
    obs = obs_factory(space, 64)
    outs = [enc(obs) for _ in range(3)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.allclose(outs[0], outs[1])  # dropout does something
    enc.eval()
    assert torch.equal(enc(obs), enc(obs))  # and nothing at inference

    present = torch.rand(4000, 4) < 0.8
    kept = enc._drop_modalities(present)
    assert not (kept & ~present).any(), "dropout revived a missing modality"
    assert kept[present.any(dim=1)].any(dim=1).all(), "a sample lost every modality"
    frac = kept.sum() / present.sum()
    assert 0.3 < frac < 0.6  # p = 0.7 plus the rescued ones


@pytest.mark.parametrize("fusion", FUSIONS)
def test_state_dict_roundtrip_through_safetensors(space_factory, obs_factory, fusion, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    keys = ("image", "text", "audio", "direction")
    space, enc = _build(space_factory, keys, fusion)
    torch.manual_seed(123)
    _, other = _build(space_factory, keys, fusion)
    obs = obs_factory(space, B)
    enc.eval()
    other.eval()
    assert not torch.allclose(enc(obs), other(obs))
    path = tmp_path / "enc.safetensors"
    safetensors_torch.save_file(enc.state_dict(), str(path))
    other.load_state_dict(safetensors_torch.load_file(str(path)))
    assert torch.equal(enc(obs), other(obs))


@pytest.mark.parametrize("keys", [("image", "text"), ("symbolic_grid", "text")], ids=_ids)
def test_channel_first_and_last_share_weights_and_outputs(space_factory, obs_factory, keys):
    space_last, enc_last = _build(space_factory, keys, "film")
    _, enc_first = _build(space_factory, keys, "film", "channels_first")
    enc_first.load_state_dict(enc_last.state_dict())
    obs = obs_factory(space_last, B)
    spatial = keys[0]
    obs_first = {**obs, spatial: obs[spatial].permute(0, 3, 1, 2).contiguous()}
    torch.testing.assert_close(enc_last(obs), enc_first(obs_first))


def test_declared_layout_overrides_detection(obs_factory):
    # A 3x3x3 grid is ambiguous; the declaration decides.
    space = spaces.Dict({"grid": spaces.Box(0, 5, (3, 3, 3), dtype=np.uint8)})
    hwc = MultimodalEncoder(space, modalities={"grid": "symbolic_grid:hwc"})
    chw = MultimodalEncoder(space, modalities={"grid": "symbolic_grid:chw"})
    assert hwc.encoders["grid"].channels_last and not chw.encoders["grid"].channels_last


def test_float_image_and_nature_cnn(obs_factory):
    space = spaces.Dict({"image": spaces.Box(0.0, 1.0, (40, 40, 3), dtype=np.float32)})
    enc = MultimodalEncoder(space, EncoderConfig(image_encoder="nature", features_dim=32))
    assert enc.encoders["image"].scale == 1.0
    out = enc(obs_factory(space, 2))
    assert out.shape == (2, 32)
    small = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), dtype=np.uint8)})
    with pytest.raises(ValueError, match='image_encoder="small"'):
        MultimodalEncoder(small, EncoderConfig(image_encoder="nature"))


def test_uint8_scaling_matches_float_image():
    enc = ImageEncoder((8, 8, 3), True, 1 / 255, "uint8", "small", 16)
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    ref = ImageEncoder((8, 8, 3), True, 1.0, "float32", "small", 16)
    ref.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x), ref(x.float() / 255))


@pytest.mark.parametrize("kind", ["gru", "bow", "attention"])
def test_text_encoders_ignore_padding_and_handle_empty_text(kind):
    enc = TextEncoder(12, 6, kind=kind, word_dim=8, output_dim=8, heads=2)
    ids = torch.tensor([[3, 4, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    out = enc(ids)
    assert torch.isfinite(out).all()
    if kind == "gru":
        assert torch.equal(out[1], torch.zeros(8))
    shorter = TextEncoder(12, 3, kind=kind, word_dim=8, output_dim=8, heads=2)
    state = enc.state_dict()
    if kind == "attention":
        state["position"] = state["position"][:4]
    shorter.load_state_dict(state)
    # Same instruction, less padding: identical embedding.
    torch.testing.assert_close(out[[0, 2]], shorter(ids[[0, 2], :3]), atol=1e-6, rtol=1e-5)
    if kind == "gru":
        assert enc.rnn is not None
        ref, _ = enc.rnn(enc.word_embedding(ids[:1, :3]))
        torch.testing.assert_close(out[0], ref[0, -1])


def test_encoders_take_raw_observations_only(space_factory, obs_factory):
    """What SB3's preprocessing makes (floats, one-hot ids) is the SB3 adapter's to undo."""
    space = space_factory(("image", "text", "audio", "direction"), text_multidiscrete=True)
    enc = MultimodalEncoder(space)
    assert {s.name: s.dtype for s in enc.input_specs} == {
        "audio": "float32",
        "direction": "int64",
        "image": "uint8",
        "text": "int64",
    }
    obs = obs_factory(space, 3)
    enc(obs)
    with pytest.raises(ValueError, match=r"obs\['text'\] has dtype torch.float32.*integers"):
        enc({**obs, "text": obs["text"].float()})
    with pytest.raises(ValueError, match=r"obs\['image'\] has dtype float32.*raw frames"):
        enc({**obs, "image": obs["image"].float() / 255})


# ---------------------------------------------------------------- config


def test_config_roundtrip_and_replace():
    cfg = EncoderConfig(fusion="gated", features_dim=64, modality_dropout=0.25)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(fusion="film").fusion == "film"
    assert set(EncoderConfig.help()) == set(cfg.to_dict())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"fusoin": "film"}, r"'fusoin' \(did you mean 'fusion'\?\)"),
        ({"fusion": "sum"}, r"fusion='sum' is not allowed.*'attention', 'concat'|concat"),
        ({"image_encoder": "resnet"}, "image_encoder='resnet'.*small"),
        ({"features_dim": 0}, "features_dim must be >= 1"),
        ({"features_dim": 2.5}, "features_dim must be of type int"),
        ({"check_inputs": 1}, "check_inputs must be of type bool"),
        ({"modality_dropout": 1.0}, r"modality_dropout must be in \[0, 1\)"),
        ({"fusion": "attention", "fusion_dim": 30}, "fusion_dim=30 must be divisible"),
    ],
)
def test_config_errors_name_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig.from_dict(data)


def test_unknown_fusion_lists_known_modes():
    with pytest.raises(ValueError, match=r"Unknown fusion mode 'sum'.*concat.*film"):
        make_fusion("sum", {"a": 4}, {}, 8)


# ---------------------------------------------------------------- bad spaces and inputs


def test_undeclared_keys_get_a_modality_by_their_space():
    space = spaces.Dict(
        {
            "camera": spaces.Box(0, 255, (32, 32, 3), dtype=np.uint8),
            "grey_first": spaces.Box(0, 255, (1, 24, 24), dtype=np.uint8),
            "audio": spaces.Box(-14.0, 12.0, (2, 8, 4), dtype=np.float32),  # ours: by name
            "pcm": spaces.Box(-32768, 32767, (64,), dtype=np.int16),  # looks like a vector
            "inventory": spaces.MultiDiscrete([3, 3]),
        }
    )
    enc = MultimodalEncoder(space)
    assert enc.modalities == {
        "camera": "image",
        "grey_first": "image",
        "audio": "audio",
        "pcm": "vector",
        "inventory": "vector",
    }


def test_key_whose_modality_cannot_be_inferred_names_key_space_and_config_line():
    space = spaces.Dict({"depth": spaces.Box(0.0, 1.0, (3, 64, 64), dtype=np.float32)})
    with pytest.raises(ValueError) as info:
        MultimodalEncoder(space)
    message = str(info.value)
    assert "'depth'" in message and "Box(0.0, 1.0, (3, 64, 64), float32)" in message
    assert "modalities: {depth: image}" in message and "--set modalities.depth=image" in message
    enc = MultimodalEncoder(space, modalities={"depth": "image"})
    assert enc.modalities == {"depth": "image"}


def test_waveform_declared_to_the_encoder_points_to_the_edge_wrapper():
    space = spaces.Dict({"mic": spaces.Box(-1.0, 1.0, (256,), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"AdaptObservation.*'audio'"):
        MultimodalEncoder(space, modalities={"mic": "waveform"})


def test_string_space_points_to_tokenize_mission():
    space = spaces.Dict({"mission": spaces.Text(20), "vec": spaces.Box(0, 1, (2,))})
    with pytest.raises(ValueError, match=r"AdaptObservation.*TokenizeMission"):
        MultimodalEncoder(space)
    enc = MultimodalEncoder(space, modalities={"mission": "ignore"})
    assert enc.keys == ["vec"]


@pytest.mark.parametrize(
    ("modalities", "match"),
    [
        ({"nope": "image"}, r"key\(s\) \['nope'\].*its keys are"),
        ({"image": "video"}, "unknown modality 'video'"),
        ({"text": "image:hwc"}, "cannot be encoded as 'image'"),
        ({"image": "text"}, "cannot be encoded as 'text'"),
        ({"audio": "vector:chw"}, "layout suffix"),
    ],
)
def test_bad_declarations(space_factory, modalities, match):
    with pytest.raises(ValueError, match=match):
        MultimodalEncoder(space_factory(("image", "text", "audio")), modalities=modalities)


def test_forward_input_errors_name_key_and_expectation(space_factory, obs_factory):
    space, enc = _build(space_factory, ("image", "text", "audio"))
    obs = obs_factory(space, B)
    cases = [
        (
            {k: v for k, v in obs.items() if k != "text"},
            r"lacks key 'text'.*mask=\{'text': False\}",
        ),
        ({**obs, "extra": obs["audio"]}, r"\['extra'\].*not built for"),
        ({**obs, "image": obs["image"].float() / 255}, r"'image'.*dtype float32.*uint8"),
        ({**obs, "image": obs["image"].permute(0, 3, 1, 2)}, r"'image'.*permuted"),
        ({**obs, "audio": obs["audio"][0]}, "lacks the batch dimension"),
        ({**obs, "text": obs["text"].float()}, r"'text'.*integer"),
        ({**obs, "text": obs["text"][:2]}, "batch size 2"),
        ({**obs, "audio": obs["audio"].numpy()}, "convert with torch.as_tensor"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            enc(bad)
    with pytest.raises(ValueError, match=r"mask\['text'\] must be a bool tensor of shape \(5,\)"):
        enc(obs, mask={"text": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="mask has unknown key"):
        enc(obs, mask={"txt": False})
    enc.check_inputs = False  # the checks can be switched off
    enc({**obs, "extra": obs["audio"]})


# nn.GRU's flat-weights bookkeeping warns under export; the exported program is still correct.
@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")
def test_encoder_exports_with_torch_export(space_factory, obs_factory):
    space, enc = _build(space_factory, ("image", "text", "audio", "direction"), "film")
    enc.eval()
    enc.check_inputs = False
    exported = torch.export.export(enc, (obs_factory(space, 3),))
    other = obs_factory(space, 3, seed=9)
    torch.testing.assert_close(exported.module()(other), enc(other))


@pytest.mark.parametrize("key", ["keys", "values", "items", "update"])
def test_key_clashing_with_torch_containers_names_the_fix(key):
    space = spaces.Dict({key: spaces.Box(0.0, 1.0, (3,), np.float32)})
    with pytest.raises(ValueError, match="RenameObservationKeys"):
        MultimodalEncoder(space)
