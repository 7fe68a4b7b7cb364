"""Parity of the Keras twin, its SavedModel and TFLite exports with the torch PolicyNetwork."""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

try:  # one thread, like the torch tests: the machine is shared and has 2 cores
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # TensorFlow already initialised by another test module
    pass

from mbm_agent.deploy import keras as twin  # noqa: E402
from mbm_agent.deploy.network import PolicyNetwork  # noqa: E402
from mbm_agent.encoding.config import EncoderConfig  # noqa: E402
from mbm_agent.encoding.multimodal import MultimodalEncoder, to_tensor_obs  # noqa: E402

N_OBS = 1000
ATOL = 1e-4
TFLITE_ATOL = 1e-3

# name: (env id, algo, encoder settings); every fusion mode and text encoder appears.
SB3_NETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "concat-bow": ("mbm/SoundMaze-v0", "ppo", {"fusion": "concat", "text_encoder": "bow"}),
    "film-gru": ("mbm/SoundMaze-v0", "ppo", {"fusion": "film", "text_encoder": "gru"}),
    "attention-attention": (
        "mbm/SoundMaze-v0",
        "ppo",
        {"fusion": "attention", "text_encoder": "attention"},
    ),
    "gated-gru-nature": (
        "mbm/GoToObject-v0",
        "ppo",
        {"fusion": "gated", "text_encoder": "gru", "image_encoder": "nature"},
    ),
    "dqn-film-audio": ("mbm/FindSound-v0", "dqn", {"fusion": "film"}),
}


def _perturb(module: nn.Module, seed: int) -> None:
    """Move every parameter away from its init (FiLM generators start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _sb3_net(env_id: str, algo: str, settings: dict[str, Any]) -> PolicyNetwork:
    from stable_baselines3 import DQN, PPO

    import envs  # noqa: F401  (registers the games)
    from envs.sb3 import SB3VecEnv
    from mbm_agent.sb3 import KeepChannelsLast, policy_kwargs_for
    from mbm_agent.training.agent import policy_spec

    config = EncoderConfig(features_dim=64, **settings)
    venv = KeepChannelsLast(SB3VecEnv(env_id, 2))
    try:
        cls, extra = (DQN, {"buffer_size": 64}) if algo == "dqn" else (PPO, {})
        model = cls(
            "MultiInputPolicy",
            venv,
            policy_kwargs=policy_kwargs_for(config, {}, {}),
            device="cpu",
            seed=0,
            **extra,
        )
        spec = policy_spec(
            model.policy,
            algo=algo,
            env_id=env_id,
            env_kwargs={},
            encoder=config,
            modalities={},
            policy_kwargs={},
            vocabulary=None,
        )
        net = PolicyNetwork.from_sb3_policy(model.policy, spec)
    finally:
        venv.close()
    return net


def _hand_space() -> spaces.Dict:
    return spaces.Dict(
        {
            "camera": spaces.Box(0, 255, (3, 12, 12), dtype=np.uint8),
            "symbolic_grid": spaces.Box(0, 6, (3, 5, 5), dtype=np.uint8),
            "mission": spaces.MultiDiscrete([9] * 5),
            "mic": spaces.Box(-1.0, 1.0, (8, 6), dtype=np.float32),
            "pos": spaces.Box(-2.0, 2.0, (2,), dtype=np.float32),
            "heading": spaces.Discrete(4, start=1),
            "tools": spaces.MultiDiscrete([3, 2]),
            "flags": spaces.MultiBinary(3),
            "unused": spaces.Box(0.0, 1.0, (7,), dtype=np.float32),
        }
    )


HAND_MODALITIES = {
    "camera": "image:chw",
    "symbolic_grid": "symbolic_grid:chw",
    "mission": "text",
    "mic": "audio",
    "unused": "ignore",
}


def _hand_net() -> PolicyNetwork:
    """Every other modality and layout, a separate critic encoder, GELU / ELU / tanh heads."""
    config = EncoderConfig(fusion="film", text_encoder="attention", features_dim=64)
    space = _hand_space()
    encoder = MultimodalEncoder(space, config, HAND_MODALITIES)
    critic_encoder = MultimodalEncoder(space, config.replace(fusion="gated"), HAND_MODALITIES)
    d = encoder.features_dim
    net = PolicyNetwork(
        encoder,
        nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, 16), nn.ELU()),
        nn.Linear(16, 5),
        nn.Sequential(nn.Linear(critic_encoder.features_dim, 24), nn.Tanh()),
        nn.Linear(24, 1),
        critic_encoder=critic_encoder,
    )
    return net.eval()


@functools.cache
def _net(name: str) -> PolicyNetwork:
    net = _hand_net() if name == "hand" else _sb3_net(*SB3_NETS[name])
    _perturb(net, seed=len(name))
    return net


def _observations(net: PolicyNetwork, n: int = N_OBS) -> dict[str, np.ndarray]:
    """Random observations in the env's raw dtypes, text with realistic trailing padding."""
    obs = net.random_observations(n, seed=1)
    space = net.encoder.observation_space
    rng = np.random.default_rng(2)
    for key, modality in net.encoder.modalities.items():
        if modality == "text":
            ids = obs[key]
            lengths = rng.integers(0, ids.shape[1] + 1, size=n)
            lengths[: n // 2] = ids.shape[1]  # half keep uniform ids, zeros inside
            ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 0
    return {k: np.asarray(v).astype(space[k].dtype) for k, v in obs.items()}


def _torch_outputs(net: PolicyNetwork, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        action, logits, value = net(to_tensor_obs(obs))
    return {"action": action.numpy(), "logits": logits.numpy(), "value": value.numpy()}


def _keras_outputs(model: Any, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = model({i.name: obs[i.name] for i in model.inputs}, training=False)
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


def _assert_close(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], atol: float) -> float:
    assert got["action"].dtype == np.int64
    np.testing.assert_array_equal(got["action"], ref["action"])
    for key in ("logits", "value"):
        assert got[key].shape == ref[key].shape
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=atol)
    return float(np.abs(got["logits"] - ref["logits"]).max())


@pytest.mark.parametrize("name", [*SB3_NETS, "hand"])
def test_keras_twin_matches_torch(name: str) -> None:
    net = _net(name)
    model = twin.torch_to_keras(net)
    assert sorted(i.name for i in model.inputs) == sorted(net.keys)
    obs = _observations(net)
    ref = _torch_outputs(net, obs)
    assert np.abs(ref["logits"]).max() > 0.05  # parity is not met by near-zero outputs
    _assert_close(_keras_outputs(model, obs), ref, ATOL)
    if net.kind == "q":
        np.testing.assert_allclose(ref["value"], ref["logits"].max(axis=1))


@pytest.fixture(scope="module", params=["film-gru", "attention-attention"])
def exported(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    net = _net(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    saved = twin.export_savedmodel(net, folder / "saved_model")  # from torch
    lite = twin.export_tflite(twin.torch_to_keras(net), folder / "policy.tflite")
    return {
        "net": net,
        "savedmodel": twin.load_savedmodel(saved),
        "tflite": twin.load_tflite(lite),
        "tflite_path": lite,
    }


@pytest.mark.parametrize(("backend", "atol"), [("savedmodel", ATOL), ("tflite", TFLITE_ATOL)])
def test_exports_match_torch(exported: dict[str, Any], backend: str, atol: float) -> None:
    net, runner = exported["net"], exported[backend]
    obs = _observations(net)
    _assert_close(runner(obs), _torch_outputs(net, obs), atol)
    # The batch is dynamic: other sizes run on the same loaded model.
    for n in (1, 3):
        small = {k: v[:n] for k, v in obs.items()}
        _assert_close(runner(small), _torch_outputs(net, small), atol)


def test_tflite_uses_builtin_ops_and_dynamic_batch(exported: dict[str, Any]) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(exported["tflite_path"]))
    signature = interpreter.get_signature_list()[twin.SIGNATURE]
    assert sorted(signature["inputs"]) == sorted(exported["net"].keys)
    assert sorted(signature["outputs"]) == sorted(twin.OUTPUTS)
    details = interpreter.get_signature_runner(twin.SIGNATURE).get_input_details()
    assert all(d["shape_signature"][0] == -1 for d in details.values())
    assert b"Flex" not in Path(exported["tflite_path"]).read_bytes()  # no TF Select ops


@pytest.mark.parametrize("backend", ["savedmodel", "tflite"])
def test_runner_errors_name_key_and_shape(exported: dict[str, Any], backend: str) -> None:
    runner = exported[backend]
    obs = _observations(exported["net"], 4)
    with pytest.raises(ValueError, match=r"lacks key 'text'.*\(B, \*\(8,\)\)"):
        runner({k: v for k, v in obs.items() if k != "text"})
    with pytest.raises(
        ValueError, match=r"obs\['image'\] has shape \(4, 3, 64, 64\).*\(64, 64, 3\)"
    ):
        runner({**obs, "image": obs["image"].transpose(0, 3, 1, 2)})
    with pytest.raises(ValueError, match=r"obs\['audio'\] has shape \(2, 32, 8\).*batch"):
        runner({**obs, "audio": obs["audio"][0]})
    with pytest.raises(ValueError, match=r"obs\['image'\] has dtype float32.*uint8"):
        runner({**obs, "image": obs["image"].astype(np.float32)})
    # Same-kind dtypes are cast, extra keys ignored.
    out = runner({**obs, "text": obs["text"].astype(np.int32), "extra": np.zeros(4)})
    assert out["logits"].shape == (4, exported["net"].n_actions)


@pytest.mark.parametrize("name", ["film-gru", "attention-attention", "hand"])
def test_keras_to_torch_round_trip(name: str) -> None:
    net = _net(name)
    model = twin.torch_to_keras(net)
    rng = np.random.default_rng(3)
    for variable in model.weights:
        value = variable.numpy()
        variable.assign(value + 0.05 * rng.standard_normal(value.shape).astype(np.float32))
    target = copy.deepcopy(net)
    twin.keras_to_torch(model, target)
    obs = _observations(net, 300)
    ref = _torch_outputs(target, obs)
    _assert_close(_keras_outputs(model, obs), ref, ATOL)
    assert np.abs(ref["logits"] - _torch_outputs(net, obs)["logits"]).max() > 1e-3
    # and back again: the ports are inverse to each other
    again = twin.torch_to_keras(target)
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_keras_to_torch_rejects_other_architecture() -> None:
    model = twin.torch_to_keras(_net("film-gru"))
    with pytest.raises(ValueError, match="differ"):
        twin.keras_to_torch(model, _net("concat-bow"))


def test_build_from_space_trains_with_fit_and_ports_to_torch() -> None:
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (16, 16, 3), dtype=np.uint8),
            "text": spaces.Box(0, 9, (6,), dtype=np.int64),
            "direction": spaces.Discrete(4),
        }
    )
    config = EncoderConfig(fusion="gated", features_dim=32)
    model = twin.build_keras_policy(space, 3, config, net_arch=[32], activation="relu")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    rng = np.random.default_rng(0)
    n = 128
    obs = {
        "image": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8),
        "text": rng.integers(0, 10, (n, 6)).astype(np.int64),
        "direction": rng.integers(0, 4, n).astype(np.int64),
    }
    labels = obs["direction"] % 3  # learnable from one input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the critic gets no gradient from a logits-only loss
        history = model.fit(obs, {"logits": labels}, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.1

    # The same architecture in torch receives the trained weights.
    encoder = MultimodalEncoder(space, config)
    d = encoder.features_dim
    net = PolicyNetwork(
        encoder,
        nn.Sequential(nn.Linear(d, 32), nn.ReLU()),
        nn.Linear(32, 3),
        nn.Sequential(nn.Linear(d, 32), nn.ReLU()),
        nn.Linear(32, 1),
    ).eval()
    twin.keras_to_torch(model, net)
    _assert_close(_keras_outputs(model, obs), _torch_outputs(net, obs), ATOL)


def test_build_keras_policy_dqn_kind_and_argument_errors() -> None:
    space = spaces.Dict({"vec": spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)})
    model = twin.build_keras_policy(space, 4, EncoderConfig(features_dim=16), kind="q")
    out = _keras_outputs(model, {"vec": np.zeros((2, 3), np.float32)})
    np.testing.assert_allclose(out["value"], out["logits"].max(axis=1))
    with pytest.raises(ValueError, match="n_actions"):
        twin.build_keras_policy(space)
    with pytest.raises(ValueError, match="activation"):
        twin.build_keras_policy(space, 2, activation="swish")
    with pytest.raises(ValueError, match="reads the architecture"):
        twin.build_keras_policy(_net("concat-bow"), 3)


# -------------------------------------------------------------------- every registered choice
def _registered_choices() -> list[tuple[str, str]]:
    from mbm_agent.encoding import FUSION_MODES, IMAGE_ENCODERS, MODALITIES, TEXT_ENCODERS

    return [
        *(("fusion", m) for m in FUSION_MODES),
        *(("image_encoder", a) for a in IMAGE_ENCODERS),
        *(("text_encoder", t) for t in TEXT_ENCODERS),
        *(("modality", m) for m in MODALITIES if m != "ignore"),
    ]


def _choice_encoder(field: str, name: str) -> MultimodalEncoder:
    """A small encoder using the registered choice ``name`` of ``field`` (every other default)."""
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (36, 36, 3), dtype=np.uint8),
            "text": spaces.Box(0, 9, (5,), dtype=np.int64),
            "audio": spaces.Box(-4.0, 4.0, (2, 8, 4), dtype=np.float32),
            "grid": spaces.Box(0, 6, (5, 5, 3), dtype=np.uint8),
            "vec": spaces.Box(-1.0, 1.0, (3,), dtype=np.float32),
        }
    )
    modalities = {"grid": "symbolic_grid"}
    if field == "modality":  # the modality under test, on a key whose space suits it
        keep = {"image": "image", "symbolic_grid": "grid", "vector": "vec"}.get(name, name)
        modalities = {k: ("ignore" if k != keep else modalities.get(k, name)) for k in space}
        modalities[keep] = name
        config = EncoderConfig(features_dim=16)
    else:
        config = EncoderConfig(features_dim=16, **{field: name})
    return MultimodalEncoder(space, config, modalities).eval()


@pytest.mark.parametrize(("field", "name"), _registered_choices())
def test_every_registered_choice_has_a_keras_mirror(field: str, name: str) -> None:
    """Each FUSION_MODES / IMAGE_ENCODERS / TEXT_ENCODERS entry and modality runs in Keras as in torch."""
    encoder = _choice_encoder(field, name)
    _perturb(encoder, seed=5)
    try:
        layer = twin.KerasMultimodalEncoder(template=encoder)
        ties = layer.ties("encoder", encoder)
    except (ValueError, NotImplementedError) as exc:
        pytest.fail(
            f"{field}={name!r} is registered but the Keras twin has no working mirror of it: "
            f"{exc}. Write its Keras layer in mbm_agent/deploy/keras/layers.py (fusion modes: "
            "name it in the FUSION_MODES entry; modalities: KERAS_ENCODERS; architectures: the "
            "mirroring layer's archs / kinds)."
        )
    for tie in ties:
        tie.load()
    space = encoder.observation_space
    space.seed(0)
    samples = [space.sample() for _ in range(8)]
    obs = {k: np.stack([s[k] for s in samples]) for k in encoder.keys}
    with torch.no_grad():
        ref = encoder(to_tensor_obs(obs)).numpy()
    got = keras.ops.convert_to_numpy(layer(obs))
    assert np.abs(ref).max() > 0.01
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"{field}={name!r}")


def test_a_fusion_mode_without_a_keras_mirror_is_named() -> None:
    from mbm_agent.deploy.keras.layers import keras_fusion_class
    from mbm_agent.deploy.network import UnsupportedPolicyError
    from mbm_agent.encoding.fusion import FUSION_MODES, ConcatFusion, FusionMode

    entry = FusionMode(ConcatFusion, "mbm_agent.deploy.keras.layers:KerasSumFusion")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FUSION_MODES, "sum", entry)
        with pytest.raises(UnsupportedPolicyError, match=r"FUSION_MODES\['sum'\].*KerasSumFusion"):
            keras_fusion_class("sum")
        patch.setitem(FUSION_MODES, "sum", FusionMode(ConcatFusion, "numpy:ndarray"))
        with pytest.raises(UnsupportedPolicyError, match="not a KerasFusion"):
            keras_fusion_class("sum")
