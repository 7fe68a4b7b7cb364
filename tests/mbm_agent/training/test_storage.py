"""Saved policies: exact round trips, no pickle on the load path, clear errors for bad files."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from runs_helpers import (
    ENV,
    POLICY_FILES,
    cli_run,
    copy_tree,
    env_fusion,
    evil_pickle,
    evil_zip,
    run_cli,
)

import envs
from mbm_agent.cli import main
from mbm_agent.training.agent import build_policy, load_agent, model_spec, read_spec, save_policy
from mbm_agent.training.config import resolve_config
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.storage import (
    FORMAT_VERSION,
    ModelFileError,
    atomic_write_text,
    optimizer_from_tensors,
    optimizer_to_tensors,
    space_from_dict,
    space_to_dict,
)
from mbm_agent.training.trainer import build_algorithm

ALGO_KWARGS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 16, "batch_size": 32},
    "a2c": {"n_steps": 8},
    "dqn": {"buffer_size": 64, "learning_starts": 0},
    "recurrent_ppo": {"n_steps": 16, "batch_size": 32},
}


def _model(algo: str, runs_dir: Path) -> tuple[Any, Any, Any]:
    """An SB3 model of ``algo`` with our extractor, weights perturbed away from their init."""
    cfg = resolve_config(
        ENV,
        overrides={
            "algo": algo,
            "n_envs": 2,
            "runs_dir": str(runs_dir),
            "algo_kwargs": ALGO_KWARGS[algo],
        },
    )
    venv, vocab = make_train_env(cfg, 0)
    model = build_algorithm(cfg, venv, None)
    venv.close()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return cfg, vocab, model


def _observations(n: int = 12) -> dict[str, np.ndarray]:
    venv = envs.make_vec(ENV, n)
    obs, _ = venv.reset(seed=2024)
    venv.close()
    return {k: np.asarray(v) for k, v in obs.items()}


def _outputs(policy: Any, algo: str, obs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """Everything the policy computes from ``obs`` that depends on its weights."""
    policy.set_training_mode(False)
    with torch.no_grad():
        if algo == "recurrent_ppo":
            starts = np.ones(len(obs["image"]), dtype=bool)
            actions, (h, c) = policy.predict(obs, episode_start=starts, deterministic=True)
            return [torch.as_tensor(actions), torch.as_tensor(h), torch.as_tensor(c)]
        tensors = policy.obs_to_tensor(obs)[0]
        if algo == "dqn":
            return [policy.q_net(tensors), policy.q_net_target(tensors)]
        if getattr(policy, "memory", 0):  # our games' PPO has a GRU memory: one step from zeros
            n = len(obs["image"])
            starts = torch.ones(n, device=policy.device)
            return list(policy.step(tensors, policy.initial_state(n), starts))
        dist = policy.get_distribution(tensors)
        return [dist.distribution.probs, policy.predict_values(tensors)]


@pytest.fixture(scope="module")
def ppo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved PPO policy folder (model.json, model.safetensors, vocabulary.json)."""
    root = tmp_path_factory.mktemp("policy")
    cfg, vocab, model = _model("ppo", root)
    return save_policy(model.policy, model_spec(model, cfg, vocab), root / "final", vocab)


@pytest.fixture
def folder(ppo_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the saved policy, to damage."""
    return copy_tree(ppo_folder, tmp_path / "final")


# -- round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", sorted(ALGO_KWARGS))
def test_load_agent_round_trip_is_exact(algo: str, tmp_path: Path) -> None:
    if algo == "recurrent_ppo":
        pytest.importorskip("sb3_contrib")
    cfg, vocab, model = _model(algo, tmp_path)
    out = save_policy(model.policy, model_spec(model, cfg, vocab), tmp_path / "policy", vocab)
    assert sorted(p.name for p in out.iterdir()) == sorted(POLICY_FILES)
    agent = load_agent(out)
    assert type(agent.policy) is type(model.policy)
    assert agent.vocabulary == vocab

    mine = model.policy.state_dict()
    theirs = agent.policy.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key

    obs = _observations()
    for a, b in zip(
        _outputs(model.policy, algo, obs), _outputs(agent.policy, algo, obs), strict=True
    ):
        assert torch.equal(a, b)
    expected = model.policy.predict(obs, deterministic=True)[0]
    np.testing.assert_array_equal(agent.act(obs), expected)

    # The comparison can fail: an untrained policy of the same architecture differs.
    fresh = build_policy(read_spec(out))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(_outputs(fresh, algo, obs), _outputs(agent.policy, algo, obs), strict=True)
    )


def test_model_json_describes_the_policy(ppo_folder: Path) -> None:
    spec = json.loads((ppo_folder / "model.json").read_text())
    assert spec["format"] == "mbm-agent/policy"
    assert spec["version"] == FORMAT_VERSION
    assert spec["algo"] == "ppo"
    assert spec["env_id"] == ENV
    assert set(spec["observation_space"]["spaces"]) == {"image", "text"}
    assert spec["action_space"] == {"type": "Discrete", "n": 3, "start": 0}
    assert spec["encoder"]["fusion"] == env_fusion()  # what the env's YAML trains with
    assert spec["vocabulary"] is True


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(0, 255, (4, 4, 3), np.uint8),
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float64),
        spaces.Discrete(5, start=2),
        spaces.MultiDiscrete([3, 4, 5]),
        spaces.MultiBinary(6),
        spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Box(-80.0, 0.0, (2, 8, 4), np.float32)}),
    ],
    ids=lambda s: type(s).__name__,
)
def test_space_json_round_trip(space: spaces.Space[Any]) -> None:
    data = space_to_dict(space)
    again = space_from_dict(json.loads(json.dumps(data)))
    assert again == space
    if isinstance(space, spaces.Box):
        assert again.dtype == space.dtype


def test_unsupported_space_is_a_model_file_error() -> None:
    with pytest.raises(ModelFileError, match="Text"):
        space_to_dict(spaces.Text(10))
    with pytest.raises(ModelFileError, match="Unknown space type"):
        space_from_dict({"type": "Graph"})
    with pytest.raises(ModelFileError, match="malformed"):
        space_from_dict({"type": "Box", "shape": [2]})


def test_optimizer_state_round_trips_through_tensors_and_json() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    meta = json.loads(json.dumps(meta))  # what optimizer.json holds
    other = torch.optim.Adam(net.parameters(), lr=0.5)
    optimizer_from_tensors(other, tensors, meta)
    a, b = opt.state_dict(), other.state_dict()
    # JSON turns Adam's betas tuple into a list, which Adam reads the same way.
    assert json.loads(json.dumps(a["param_groups"])) == json.loads(json.dumps(b["param_groups"]))
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))
    with pytest.raises(ModelFileError, match="param_groups"):
        optimizer_from_tensors(other, tensors, {})


# -- no pickle ------------------------------------------------------------------------------
def test_the_planted_payload_is_live(tmp_path: Path) -> None:
    """The payload used below really runs code when unpickled (so the tests can fail)."""
    marker = tmp_path / "ran"
    pickle.loads(evil_pickle(marker))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["pickle", "zip"])
def test_a_pickle_in_place_of_the_weights_is_refused_without_running(
    kind: str, folder: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    weights = folder / "model.safetensors"
    if kind == "pickle":
        weights.write_bytes(evil_pickle(marker))
    else:
        evil_zip(marker, weights)
    with pytest.raises(ModelFileError, match=r"model\.safetensors") as exc:
        load_agent(folder)
    assert "corrupt" in str(exc.value)
    assert not marker.exists(), "loading a model ran code from a pickle"


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every unpickling entry point fail the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the load path unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_load_agent_ignores_pickles_beside_the_policy(
    folder: Path, tmp_path: Path, no_unpickling: None
) -> None:
    run = folder.parent
    marker = tmp_path / "pwned"
    evil_zip(marker, run / "sb3_model.zip")
    (run / "model.pkl").write_bytes(evil_pickle(marker))
    (folder / "policy.pkl").write_bytes(evil_pickle(marker))
    evil_zip(marker, folder / "policy.pth")
    agent = load_agent(run, "final")
    assert agent.spec["algo"] == "ppo"
    assert not marker.exists()


@pytest.mark.slow
def test_cli_eval_refuses_a_planted_pickle(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run = copy_tree(cli_run(tmp_path_factory), tmp_path / "run")
    marker = tmp_path / "pwned"
    for policy in ("best", "final"):
        (run / policy / "model.safetensors").write_bytes(evil_pickle(marker))
    evil_zip(marker, run / "sb3_model.zip")
    (run / "model.pkl").write_bytes(evil_pickle(marker))
    result = run_cli("eval", run, "--episodes", "2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mbm-agent eval: error: ")
    assert "model.safetensors" in result.stderr
    assert not marker.exists()


# -- bad files ----------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _swap_fusion(folder: Path) -> None:
    """Claim another fusion mode than the weights were trained with (another architecture)."""
    spec = json.loads((folder / "model.json").read_text())
    other = "concat" if spec["encoder"]["fusion"] == "film" else "film"
    spec["encoder"] = {"fusion": other}
    (folder / "model.json").write_text(json.dumps(spec))


def _edit_spec(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / "model.json").read_text())
        spec.update(changes)
        (folder / "model.json").write_text(json.dumps(spec))

    return edit


def _edit_text_space(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / "model.json").read_text())
        spec["observation_space"]["spaces"]["text"].update(changes)
        (folder / "model.json").write_text(json.dumps(spec))

    return edit


def _edit_image_space(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / "model.json").read_text())
        spec["observation_space"]["spaces"]["image"].update(changes)
        (folder / "model.json").write_text(json.dumps(spec))

    return edit


def _edit_encoder(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / "model.json").read_text())
        spec["encoder"].update(changes)
        (folder / "model.json").write_text(json.dumps(spec))

    return edit


def _compose(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        for one in edits:
            one(folder)

    return edit


def _shrink_vocabulary(folder: Path) -> None:
    vocab = json.loads((folder / "vocabulary.json").read_text())
    vocab["tokens"] = vocab["tokens"][:-1]
    vocab["max_len"] += 1
    (folder / "vocabulary.json").write_text(json.dumps(vocab))


def _edit_vocabulary(*, drop_word: bool = False, longer: bool = False) -> Callable[[Path], None]:
    """One half of a vocabulary that does not fit: one word fewer, or a longer max_len."""

    def edit(folder: Path) -> None:
        vocab = json.loads((folder / "vocabulary.json").read_text())
        if drop_word:
            vocab["tokens"] = vocab["tokens"][:-1]
        if longer:
            vocab["max_len"] += 1
        (folder / "vocabulary.json").write_text(json.dumps(vocab))

    return edit


#: name -> (damage, the file the message must name, words of the message)
DAMAGE: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "truncated-weights": (
        lambda f: _truncate(f / "model.safetensors"),
        "model.safetensors",
        ("corrupt or truncated", "checkpoint"),
    ),
    "empty-weights": (
        lambda f: (f / "model.safetensors").write_bytes(b""),
        "model.safetensors",
        ("corrupt or truncated", "checkpoint"),
    ),
    "missing-weights": (
        lambda f: (f / "model.safetensors").unlink(),
        "model.safetensors",
        ("missing", "checkpoint"),
    ),
    "corrupt-model-json": (
        lambda f: (f / "model.json").write_text('{"format": "mbm-agent/po'),
        "model.json",
        ("corrupt", "checkpoint"),
    ),
    "missing-model-json": (
        lambda f: (f / "model.json").unlink(),
        "model.json",
        ("holds no saved policy",),
    ),
    "model-json-not-an-object": (
        lambda f: (f / "model.json").write_text("[1, 2]"),
        "model.json",
        ("JSON object",),
    ),
    "future-version": (
        _edit_spec(version=FORMAT_VERSION + 98, mbm_agent_version="9.9.9"),
        "final",
        (f"version {FORMAT_VERSION + 98}", "9.9.9", "retrain"),
    ),
    "other-format": (_edit_spec(format="someone-else/model"), "model.json", ("not an mbm-agent",)),
    "unknown-algo": (_edit_spec(algo="__import__('os')"), "model.json", ("Unknown algorithm",)),
    "wrong-architecture": (
        _swap_fusion,
        "model.safetensors",
        ("does not fit", "model.json"),
    ),
    "malformed-space": (
        _edit_spec(observation_space={"type": "Box"}),
        "model.json",
        ("observation_space", "Dict"),
    ),
    "net-arch-not-a-list": (
        _edit_spec(policy_kwargs={"net_arch": "abc"}),
        "model.json",
        ("policy_kwargs.net_arch", "list"),
    ),
    "list-for-an-object": (
        _edit_spec(encoder=[1, 2]),
        "model.json",
        ("'encoder'", "object"),
    ),
    "huge-features-dim": (
        _edit_spec(encoder={"features_dim": 10**9}),
        "model.json",
        ("encoder.features_dim", "integer in"),
    ),
    "huge-text-vocabulary": (
        _compose(_edit_text_space(high=999_999), _edit_encoder(word_dim=4096)),
        "model.json",
        ("parameters", "more than"),
    ),
    "huge-image": (
        _edit_image_space(shape=[100_000, 100_000, 3]),
        "model.json",
        ("observation_space", "more than"),
    ),
    "vocabulary-of-another-policy": (
        _shrink_vocabulary,
        "vocabulary.json",
        ("does not fit", "model.json", "max_len"),
    ),
    "vocabulary-one-word-short": (
        _edit_vocabulary(drop_word=True),
        "vocabulary.json",
        ("does not fit", "model.json", "words"),
    ),
    "vocabulary-longer-instructions": (
        _edit_vocabulary(longer=True),
        "vocabulary.json",
        ("does not fit", "model.json", "max_len"),
    ),
    "missing-vocabulary": (
        lambda f: (f / "vocabulary.json").unlink(),
        "vocabulary.json",
        ("missing", "copy"),
    ),
    "corrupt-vocabulary": (
        lambda f: (f / "vocabulary.json").write_text("{nope"),
        "vocabulary.json",
        (),
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_bad_policy_files_raise_model_file_error(damage: str, folder: Path) -> None:
    harm, file, words = DAMAGE[damage]
    harm(folder)
    with pytest.raises(ModelFileError) as exc:
        load_agent(folder.parent, "final")
    message = str(exc.value)
    assert file in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("damage", ["truncated-weights", "future-version", "missing-vocabulary"])
def test_cli_eval_on_bad_policy_files_exits_2(
    damage: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    harm, file, _ = DAMAGE[damage]
    harm(folder)
    assert main(["eval", str(folder.parent), "--which", "final", "--episodes", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mbm-agent eval: error: ")
    assert file in captured.err
    assert not (folder.parent / "eval.json").exists()


# -- file permissions --------------------------------------------------------------------
def test_saved_files_follow_the_umask(tmp_path: Path, ppo_folder: Path) -> None:
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); saved files must not stay private."""
    from mbm_agent.evaluation import EpisodeResults, build_report, write_report

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "x")
    results = EpisodeResults([1.0, 0.0], [3, 5], [True, False], [7, 8])
    write_report(build_report(results, meta={}), tmp_path)
    agent = load_agent(ppo_folder)
    out = save_policy(agent.policy, agent.spec, tmp_path / "policy", agent.vocabulary)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    for name in ("eval.json", "eval.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for name in POLICY_FILES:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name
