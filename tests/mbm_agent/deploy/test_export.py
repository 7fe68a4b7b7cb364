"""Exports (ONNX, TorchScript, Keras-twin formats) act exactly as the torch policy does."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
import mbm_agent.deploy
from mbm_agent.deploy.export import ExportError, export_policy
from mbm_agent.deploy.network import PolicyNetwork
from mbm_agent.deploy.runtime import FORMATS, ExportedPolicy, load_exported
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import to_tensor_obs
from mbm_agent.sb3 import policy_class, policy_kwargs_for
from mbm_agent.training.agent import Agent, load_agent, policy_spec, save_policy
from mbm_agent.training.storage import ModelFileError

ENV_ID = "mbm/SoundMaze-v0"
N_OBS = 1000
TOL = 1e-4


@pytest.fixture(scope="module")
def game() -> tuple[spaces.Dict, spaces.Discrete, Any]:
    env = envs.make(ENV_ID)
    out = (env.observation_space, env.action_space, env.unwrapped.vocabulary)
    env.close()
    return out


def build(game, algo: str = "ppo", seed: int = 0, **encoder: Any):
    """An untrained SB3 policy on SoundMaze, its model.json spec and its PolicyNetwork."""
    obs_space, act_space, vocab = game
    torch.manual_seed(seed)
    cfg = EncoderConfig(**encoder)
    policy = policy_class(algo)(
        obs_space, act_space, lambda _: 0.0, **policy_kwargs_for(cfg, {}, {})
    )
    spec = policy_spec(
        policy,
        algo=algo,
        env_id=ENV_ID,
        env_kwargs={},
        encoder=cfg,
        modalities={},
        policy_kwargs={},
        vocabulary=vocab,
    )
    if algo == "recurrent_ppo":
        return policy, spec, None
    return policy, spec, PolicyNetwork.from_sb3_policy(policy, spec)


def observations(net: PolicyNetwork, n: int = N_OBS, seed: int = 1) -> dict[str, np.ndarray]:
    """Random observations; instructions get random lengths followed by padding, as the env's."""
    obs = net.random_observations(n, seed)
    rng = np.random.default_rng(seed)
    text = obs["text"]
    lengths = rng.integers(0, text.shape[1] + 1, size=n)
    text[np.arange(text.shape[1])[None, :] >= lengths[:, None]] = 0
    return obs


def reference(net: PolicyNetwork, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        action, logits, value = net(to_tensor_obs(obs))
    return {"action": action.numpy(), "logits": logits.numpy(), "value": value.numpy()}


def one_by_one(policy: ExportedPolicy, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of single, unbatched observations, stacked."""
    n = len(next(iter(obs.values())))
    outs = [policy({k: v[i] for k, v in obs.items()}) for i in range(n)]
    assert outs[0]["action"].shape == () and outs[0]["logits"].shape == (policy.n_actions,)
    return {name: np.stack([o[name] for o in outs]) for name in ("action", "logits", "value")}


def assert_parity(
    policy: ExportedPolicy, net: PolicyNetwork, obs: dict[str, np.ndarray], label: str
) -> None:
    ref = reference(net, obs)
    for mode, got in (("batch", policy(obs)), ("single", one_by_one(policy, obs))):
        assert got["action"].dtype == np.int64
        assert got["logits"].shape == ref["logits"].shape
        assert got["value"].shape == ref["value"].shape
        np.testing.assert_array_equal(got["action"], ref["action"])
        d_logits = float(np.max(np.abs(got["logits"] - ref["logits"])))
        d_value = float(np.max(np.abs(got["value"] - ref["value"])))
        print(
            f"{label} {policy.format} {mode}: max |dlogits|={d_logits:.2e} |dvalue|={d_value:.2e}"
        )
        assert d_logits <= TOL and d_value <= TOL


# The dynamo exporter takes 5-15 s a model on one core, the TorchScript-based one
# (the fallback) well under 1 s: each covers two fusion modes here, and "auto" on the
# default configuration must pick dynamo. Both are verified at export time anyway.
@pytest.mark.parametrize(
    ("fusion", "text_encoder", "exporter"),
    [
        ("concat", "bow", "auto"),
        ("film", "bow", "legacy"),
        ("attention", "bow", "dynamo"),
        ("gated", "gru", "legacy"),
    ],
)
def test_onnx_and_torchscript_match_torch(game, tmp_path, fusion, text_encoder, exporter):
    _, _, net = build(game, fusion=fusion, text_encoder=text_encoder)
    obs = observations(net)
    for fmt in ("onnx", "torchscript"):
        out = export_policy(net, fmt, tmp_path / fmt, onnx_exporter=exporter)
        meta = json.loads((out / "export.json").read_text())
        if fmt == "onnx":
            used = "dynamo" if exporter == "auto" else exporter
            assert meta["exporter"] == used, meta.get("fallback_reason")
        assert_parity(load_exported(out), net, obs, f"{fusion}/{text_encoder}/{meta['exporter']}")


def test_dqn_policy_exports(game, tmp_path):
    _, _, net = build(game, algo="dqn", fusion="film")
    assert net.kind == "q"
    obs = observations(net)
    for fmt in ("onnx", "torchscript"):
        policy = load_exported(export_policy(net, fmt, tmp_path / fmt, onnx_exporter="legacy"))
        assert policy.spec["policy_kind"] == "q"
        assert_parity(policy, net, obs, "dqn")
        out = policy(obs)
        np.testing.assert_allclose(out["value"], out["logits"].max(axis=1), atol=1e-6)


def test_export_from_a_run_folder_then_act_in_the_env(game, tmp_path):
    policy, spec, _ = build(game)
    vocab = game[2]
    run = tmp_path / "runs" / "r1"
    save_policy(policy, spec, run / "best", vocab)
    agent = load_agent(run)

    paths = {
        "onnx": export_policy(run, "onnx", onnx_exporter="legacy"),
        "torchscript": export_policy(run, "torchscript"),
    }
    assert paths == {fmt: run / "exports" / fmt for fmt in paths}
    env = envs.make(ENV_ID)
    for fmt, path in paths.items():
        meta = json.loads((path / "export.json").read_text())
        assert meta["export_format"] == fmt and meta["env_id"] == ENV_ID
        assert meta["algo"] == "ppo" and meta["source"] == "best"
        assert meta["n_actions"] == 3 and meta["outputs"] == ["action", "logits", "value"]
        assert [(i["name"], i["dtype"], i["shape"]) for i in meta["inputs"]] == [
            ("audio", "float32", [2, 32, 8]),
            ("image", "uint8", [64, 64, 3]),
            ("text", "int64", [8]),
        ]
        assert (path / "vocabulary.json").is_file()
        if fmt == "onnx":
            assert meta["exporter"] == "legacy" and isinstance(meta["opset"], int)

        exported = load_exported(path / meta["file"])  # a file in the folder works too
        assert exported.vocabulary is not None and exported.vocabulary.tokens == vocab.tokens
        obs, _ = env.reset(seed=3)
        for _ in range(20):
            action = exported.act(obs)
            assert action.shape == () and action == agent.act(obs)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
    env.close()
    with pytest.raises(ModelFileError, match=r"is a run folder, not an export.*exports/onnx"):
        load_exported(run)


def test_onnx_falls_back_to_the_legacy_exporter(game, tmp_path, monkeypatch):
    _, _, net = build(game)
    real = torch.onnx.export

    def no_dynamo(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo"):
            raise RuntimeError("dynamo is broken today")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    out = export_policy(net, "onnx", tmp_path / "onnx")
    meta = json.loads((out / "export.json").read_text())
    assert meta["exporter"] == "legacy"
    assert "dynamo is broken today" in meta["fallback_reason"]
    assert_parity(load_exported(out), net, observations(net, 50), "fallback")


def test_a_failed_export_leaves_the_earlier_one_intact(game, tmp_path, monkeypatch):
    _, _, net = build(game)
    out = export_policy(net, "onnx", tmp_path / "onnx", onnx_exporter="legacy")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match=r"ONNX export failed.*disk on fire"):
        export_policy(net, "onnx", out)
    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.raises(ExportError, match=r"TorchScript export failed.*disk on fire"):
        export_policy(net, "torchscript", tmp_path / "torchscript")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no temporary folders left
    assert_parity(load_exported(out), net, observations(net, 20), "intact")


# -- errors -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(game, tmp_path_factory) -> tuple[ExportedPolicy, PolicyNetwork]:
    _, _, net = build(game)
    path = export_policy(net, "torchscript", tmp_path_factory.mktemp("ts") / "torchscript")
    return load_exported(path), net


def test_bad_observations_are_refused_with_the_key_and_shapes(exported):
    policy, net = exported
    obs = {k: v[0] for k, v in observations(net, 2).items()}

    wrong_key = {**obs, "img": obs["image"]}
    del wrong_key["image"]
    with pytest.raises(
        ValueError, match=r"lacks key 'image' \(a uint8 .*key\(s\) \['img'\] it was not built"
    ):
        policy(wrong_key)
    with pytest.raises(
        ValueError,
        match=r"obs\['image'\] has shape \(3, 64, 64\), expected \(64, 64, 3\).*permuted",
    ):
        policy({**obs, "image": obs["image"].transpose(2, 0, 1)})
    with pytest.raises(
        ValueError, match=r"obs\['audio'\] has shape \(2, 32\), expected \(2, 32, 8\)"
    ):
        policy({**obs, "audio": obs["audio"][:, :, 0]})
    with pytest.raises(
        ValueError, match=r"obs\['image'\] has dtype float32, expected uint8.*raw frames"
    ):
        policy({**obs, "image": obs["image"].astype(np.float32) / 255})
    with pytest.raises(ValueError, match=r"obs\['text'\] has dtype float64, expected int64"):
        policy({**obs, "text": obs["text"].astype(np.float64)})
    with pytest.raises(
        ValueError, match=r"obs\['image'\] is batched .* but obs\['audio'\] is a single"
    ):
        policy({**obs, "image": obs["image"][None]})
    batch = observations(net, 3)
    with pytest.raises(
        ValueError, match=r"obs\['text'\] has batch size 2 but obs\['audio'\] has 3"
    ):
        policy({**batch, "text": batch["text"][:2]})


def test_safe_dtype_conversions_are_made(exported):
    policy, net = exported
    obs = observations(net, 5)
    expected = policy(obs)
    converted = policy(
        {**obs, "text": obs["text"].astype(np.int32), "audio": obs["audio"].astype(np.float64)}
    )
    np.testing.assert_array_equal(converted["action"], expected["action"])
    np.testing.assert_allclose(converted["logits"], expected["logits"], atol=1e-6)
    lists = {k: v[0].tolist() for k, v in obs.items()}  # nested lists of ints are int64
    lists["image"] = obs["image"][0]
    assert policy.act(lists) == expected["action"][0]


def test_unknown_format_and_missing_out_dir(exported, tmp_path):
    _, net = exported
    with pytest.raises(
        ValueError,
        match=r"Unknown export format 'pickle'.*'onnx', 'torchscript', 'savedmodel', 'tflite'",
    ):
        export_policy(net, "pickle", tmp_path / "x")
    with pytest.raises(ValueError, match="Pass out_dir to export a PolicyNetwork"):
        export_policy(net, "torchscript")
    with pytest.raises(ValueError, match="Unknown onnx_exporter"):
        export_policy(net, "onnx", tmp_path / "x", onnx_exporter="magic")
    assert FORMATS == ("onnx", "torchscript", "savedmodel", "tflite")


def test_recurrent_policy_is_refused(game, tmp_path):
    policy, spec, _ = build(game, algo="recurrent_ppo")
    agent = Agent(policy, spec, game[2])
    with pytest.raises(ExportError, match=r"recurrent_ppo policy cannot be exported.*--algo ppo"):
        export_policy(agent, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_missing_optional_dependencies_name_the_extra(exported, tmp_path, monkeypatch):
    _, net = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'mbm-agent\[export\]'"):
        export_policy(net, "onnx", tmp_path / "onnx")

    def needs_tf(*args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    fake = types.ModuleType("mbm_agent.deploy.keras")
    fake.export_savedmodel = needs_tf  # type: ignore[attr-defined]
    fake.export_tflite = needs_tf  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mbm_agent.deploy.keras", fake)
    monkeypatch.setattr(mbm_agent.deploy, "keras", fake, raising=False)
    for fmt in ("savedmodel", "tflite"):
        with pytest.raises(
            ImportError, match=rf"{fmt} format needs TensorFlow.*pip install 'mbm-agent\[tf\]'"
        ):
            export_policy(net, fmt, tmp_path / fmt)
    assert not any(tmp_path.iterdir())


# -- Keras-twin formats (skipped without mbm_agent.deploy.keras) ---------------------------
@pytest.mark.parametrize(("fmt", "fusion"), [("savedmodel", "concat"), ("tflite", "film")])
def test_keras_twin_formats_match_torch(game, tmp_path, fmt, fusion):
    pytest.importorskip("tensorflow")
    pytest.importorskip("mbm_agent.deploy.keras")
    _, _, net = build(game, fusion=fusion)
    policy = load_exported(export_policy(net, fmt, tmp_path / fmt))
    obs = observations(net, 200)
    ref = reference(net, obs)
    for got in (policy(obs), one_by_one(policy, {k: v[:20] for k, v in obs.items()})):
        n = len(got["action"])
        np.testing.assert_allclose(got["logits"], ref["logits"][:n], atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(got["value"], ref["value"][:n], atol=1e-3, rtol=1e-3)
        top2 = np.sort(ref["logits"][:n], axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2e-3  # ties may break either way within tolerance
        np.testing.assert_array_equal(got["action"][clear], ref["action"][:n][clear])


def test_exported_policy_repr_and_names(exported):
    policy, net = exported
    assert policy.input_names == list(net.keys)
    assert "torchscript" in repr(policy) and "image: uint8[64, 64, 3]" in repr(policy)
    assert isinstance(Path(policy.path), Path)


# -- one rule for what every runtime refuses (issue 15) -------------------------------------
@pytest.fixture(scope="module")
def every_format(game, tmp_path_factory) -> tuple[dict[str, ExportedPolicy], Agent, PolicyNetwork]:
    """One policy as the torch agent and in every export format (Keras ones when TF is here)."""
    policy, spec, net = build(game, fusion="concat")
    root = tmp_path_factory.mktemp("formats")
    formats = ["onnx", "torchscript"]
    try:
        import tensorflow  # noqa: F401

        import mbm_agent.deploy.keras  # noqa: F401

        formats += ["savedmodel", "tflite"]
    except ImportError:
        pass
    exports = {}
    for fmt in formats:
        kwargs = {"onnx_exporter": "legacy"} if fmt == "onnx" else {}
        exports[fmt] = load_exported(export_policy(net, fmt, root / fmt, **kwargs))
    return exports, Agent(policy, spec, game[2]), net


def test_nan_and_empty_observations_are_refused_alike_everywhere(every_format):
    exports, agent, net = every_format
    obs = observations(net, 3)
    nan = {**obs, "audio": obs["audio"].copy()}
    nan["audio"][1, 0, 0, 0] = np.nan
    inf = {**obs, "audio": obs["audio"].copy()}
    inf["audio"][0, 1, 2, 3] = -np.inf
    empty = {k: v[:0] for k, v in obs.items()}
    runtimes = {**{fmt: p.act for fmt, p in exports.items()}, "torch": agent.act}
    for bad, words in ((nan, "NaN or infinite"), (inf, "NaN or infinite"), (empty, "batch of 0")):
        messages = set()
        for act in runtimes.values():
            with pytest.raises(ValueError, match=words) as exc:
                act(bad)
            messages.add(str(exc.value))
        assert len(messages) == 1, messages  # the same words from every format
    with pytest.raises(ValueError, match="batch of 0"):
        net.encoder(to_tensor_obs(empty))


def test_out_of_range_token_ids_are_unknown_words_everywhere(every_format, game):
    exports, _, net = every_format
    vocab_size = len(game[2])
    obs = observations(net, 6)
    obs["text"][:, 0] = 3
    unknown = {**obs, "text": obs["text"].copy()}
    unknown["text"][:, 0] = 1  # <unk>
    outside = {**obs, "text": obs["text"].copy()}
    outside["text"][:, 0] = [vocab_size, vocab_size + 7, 10**9, -1, -(10**9), 2**40]
    ref = reference(net, unknown)
    np.testing.assert_allclose(reference(net, outside)["logits"], ref["logits"], atol=1e-6)
    assert not np.allclose(reference(net, obs)["logits"], ref["logits"])  # ids matter at all
    for fmt, policy in exports.items():
        got = policy(outside)
        tol = 1e-3 if fmt in ("savedmodel", "tflite") else TOL
        np.testing.assert_allclose(got["logits"], ref["logits"], atol=tol, rtol=tol, err_msg=fmt)


def test_float_frames_are_refused_alike_everywhere(every_format):
    """Frames scaled to [0, 1] played at chance through the torch agent (issue 15)."""
    exports, agent, net = every_format
    obs = observations(net, 2)
    scaled = {**obs, "image": obs["image"].astype(np.float32) / 255}
    messages = set()
    for act in (agent.act, *(p.act for p in exports.values())):
        with pytest.raises(
            ValueError, match=r"obs\['image'\] has dtype float32, expected uint8.*255"
        ) as exc:
            act(scaled)
        messages.add(str(exc.value))
    assert len(messages) == 1, messages  # the same words from every format


def test_export_json_paths_stay_inside_the_export(exported, tmp_path):
    policy, _ = exported
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    for field, value in (
        ("file", str(policy.path / "policy.pt")),
        ("file", "../ts/policy.pt"),
        ("vocabulary", str(secret)),
        ("vocabulary", "../secret.json"),
    ):
        copy = tmp_path / f"copy-{field}-{abs(hash(value))}"
        shutil.copytree(policy.path, copy)
        spec = json.loads((copy / "export.json").read_text())
        spec[field] = value
        (copy / "export.json").write_text(json.dumps(spec))
        with pytest.raises(ModelFileError, match=rf"export.json: field '{field}'.*inside"):
            load_exported(copy)


def test_a_vocabulary_of_another_length_is_refused(exported, game, tmp_path):
    _, net = exported
    copy = export_policy(net, "torchscript", tmp_path / "copy", vocabulary=game[2])
    assert load_exported(copy).vocabulary == game[2]
    vocab = json.loads((copy / "vocabulary.json").read_text())
    vocab["max_len"] += 2
    (copy / "vocabulary.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelFileError, match=r"vocabulary\.json.*does not fit"):
        load_exported(copy)
