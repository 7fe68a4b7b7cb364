"""Property tests over every file format mbm-agent reads, and over observations.

Each format is fed damaged or hostile inputs (hypothesis): every input either
loads or raises our error type (``ModelFileError``, ``ConfigError``,
``DemoFileError``; ``ValueError`` for observations) with a message naming the
file, never another exception, and never allocates beyond the stated bounds:
Python/numpy allocations are measured with ``tracemalloc`` and a loaded policy
never has more than ``MAX_PARAMETERS`` parameters. A property test also checks
that the cheap parameter bound the loader relies on is an upper bound.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs_helpers import tiny_config

from mbm_agent.deploy.export import export_policy
from mbm_agent.deploy.runtime import load_exported
from mbm_agent.imitation.demos import DemoFileError, load_demos, record_demos, save_demos
from mbm_agent.training.agent import load_agent, model_spec, policy_spec, save_policy
from mbm_agent.training.config import ConfigError, load_run_config, resolve_config
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.model_check import MAX_PARAMETERS, parameter_bound
from mbm_agent.training.storage import ModelFileError, load_module, load_tensors
from mbm_agent.training.trainer import build_algorithm

PROBE = "mbm/ModalityProbe-v0"
#: Most bytes Python and numpy may allocate while one hostile file is read.
PY_ALLOC_BOUND = 256 * 2**20
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: JSON values that break things: wrong types, huge and negative numbers, nesting.
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**9, 10**12, 2**20 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["inf", "-inf", "abc", "", "../x", "/etc/passwd", "uint8", "Box"]),
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved ModalityProbe policy (image, text and audio keys; a vocabulary)."""
    root = tmp_path_factory.mktemp("fuzz-policy")
    cfg = tiny_config(PROBE, runs_dir=str(root), n_envs=2)
    venv, vocab = make_train_env(cfg, 0)
    model = build_algorithm(cfg, venv, None)
    venv.close()
    return save_policy(model.policy, model_spec(model, cfg, vocab), root / "final", vocab)


@pytest.fixture(scope="module")
def export_dir(policy_dir: Path) -> Path:
    return export_policy(policy_dir, "torchscript", policy_dir.parent / "export")


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path (keys and indices) into a JSON value."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*prefix, i))


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    data[path[0]] = _set(data[path[0]], path[1:], value)
    return data


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, Any], n: int = 3) -> dict[str, Any]:
    """``original`` with up to ``n`` values (anywhere in it) replaced by hostile ones."""
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, n))):
        paths = list(_paths(data))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()) and isinstance(data, dict):
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and draw(st.booleans()):
                del parent[path[-1]]
                continue
        data = _set(data, path, draw(HOSTILE))
    return data


def _expect_our_error(
    load: Callable[[], Any], errors: tuple[type[BaseException], ...], names: tuple[str, ...]
) -> Any:
    """Run ``load``: it returns, or raises one of ``errors`` naming one of ``names``."""
    tracemalloc.start()
    try:
        return load()
    except errors as exc:
        message = str(exc)
        assert any(name in message for name in names), message
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < PY_ALLOC_BOUND, f"{peak} bytes allocated"


# -- model.json, vocabulary.json, the weights -----------------------------------------------
@FUZZ
@given(data=st.data())
def test_model_json_loads_or_names_the_file(
    data: st.DataObject, policy_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = Path(shutil.copytree(policy_dir, tmp_path_factory.mktemp("m") / "final"))
    spec = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(data.draw(mutated(spec))))
    agent = _expect_our_error(
        lambda: load_agent(folder), (ModelFileError,), ("model.json", "model.safetensors")
    )
    if agent is not None:
        assert sum(p.numel() for p in agent.policy.parameters()) <= MAX_PARAMETERS


@FUZZ
@given(
    vocab=st.one_of(
        HOSTILE,
        st.fixed_dictionaries(
            {
                "format": st.sampled_from(["mbm-agent/vocabulary", "x"]),
                "version": st.sampled_from([1, 2, "1"]),
                "max_len": HOSTILE_SCALARS,
                "tokens": st.one_of(
                    HOSTILE,
                    st.lists(st.text(max_size=5), max_size=40).map(
                        lambda t: ["<pad>", "<unk>", *t]
                    ),
                ),
            }
        ),
    ),
    raw=st.booleans(),
)
def test_vocabulary_json_loads_or_names_the_file(
    vocab: Any, raw: bool, policy_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = Path(shutil.copytree(policy_dir, tmp_path_factory.mktemp("v") / "final"))
    text = json.dumps(vocab)
    (folder / "vocabulary.json").write_text(text[: len(text) // 2] if raw else text)
    _expect_our_error(lambda: load_agent(folder), (ModelFileError,), ("vocabulary.json",))


def _safetensors(header: Any, data: bytes, length: int | None = None) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


@FUZZ
@given(
    header=st.one_of(
        HOSTILE,
        st.dictionaries(
            st.text(max_size=6),
            st.fixed_dictionaries(
                {
                    "dtype": st.sampled_from(["F32", "I64", "U8", "F16", "BOOL", "X"]),
                    "shape": st.lists(st.integers(-2, 2**40), max_size=4),
                    "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3),
                }
            ),
            max_size=3,
        ),
    ),
    data=st.binary(max_size=64),
    length=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_safetensors_headers_load_or_name_the_file(
    header: Any, data: bytes, length: int | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(_safetensors(header, data, length))
    _expect_our_error(lambda: load_tensors(path), (ModelFileError,), ("model.safetensors",))
    module = torch.nn.Linear(2, 2)
    _expect_our_error(lambda: load_module(path, module), (ModelFileError,), ("model.safetensors",))


# -- export.json ------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_export_json_loads_or_names_the_file(
    data: st.DataObject, export_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = Path(shutil.copytree(export_dir, tmp_path_factory.mktemp("e") / "export"))
    spec = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps(data.draw(mutated(spec))))
    _expect_our_error(
        lambda: load_exported(folder),
        (ModelFileError,),
        ("export.json", "vocabulary.json", "policy.pt"),
    )


# -- demonstrations ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demos_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demos = record_demos(PROBE, 3, n_envs=3)
    return save_demos(demos, tmp_path_factory.mktemp("demos") / "probe.npz")


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """A .npy file that is only a header claiming ``shape`` (its data left out)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return np.lib.format.magic(1, 0) + buffer.getvalue()


@FUZZ
@given(
    drop=st.lists(
        st.sampled_from(["actions", "executed", "rewards", "episode", "meta"]), max_size=2
    ),
    replace=st.dictionaries(
        st.sampled_from(["actions", "rewards", "episode", "obs/image", "meta", "extra"]),
        st.one_of(
            st.builds(
                np.array, HOSTILE_SCALARS.filter(lambda v: not isinstance(v, int) or abs(v) < 2**62)
            ),
            st.builds(lambda n: np.zeros(n, dtype=np.float32), st.integers(0, 5)),
            st.builds(lambda s: np.array(json.dumps(s)), HOSTILE),
        ),
        max_size=2,
    ),
    huge=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["actions", "obs/image"]),
            st.sampled_from([(10**12,), (2**40, 64, 64, 3), (10**6, 10**6)]),
            st.sampled_from(["<i8", "|u1", "<f4", "|O"]),
        ),
    ),
    truncate=st.booleans(),
)
def test_demos_npz_loads_or_names_the_file(
    drop: list[str],
    replace: dict[str, np.ndarray],
    huge: tuple[str, tuple[int, ...], str] | None,
    truncate: bool,
    demos_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with np.load(demos_file, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name in drop:
        arrays.pop(name, None)
    arrays.update(replace)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    raw = buffer.getvalue()
    if huge is not None:  # a member whose header claims terabytes
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if info.filename == f"{huge[0]}.npy":
                    dst.writestr(info.filename, _npy_header(huge[1], huge[2]))
                else:
                    dst.writestr(info, src.read(info))
        raw = out.getvalue()
    if truncate:
        raw = raw[: len(raw) * 2 // 3]
    path = tmp_path_factory.mktemp("d") / "demos.npz"
    path.write_bytes(raw)
    _expect_our_error(lambda: load_demos(path), (DemoFileError,), (str(path),))


# -- configuration files ----------------------------------------------------------------------
CONFIG_FIELDS = st.sampled_from(
    [
        "steps",
        "n_envs",
        "seed",
        "algo",
        "fusion",
        "encoder",
        "algo_kwargs",
        "policy_kwargs",
        "modalities",
        "env_kwargs",
        "run_name",
        "runs_dir",
        "hyperparams",
        "eval_every",
        "keep_checkpoints",
        "device",
        "extractor",
        "sb3_zip",
        "torch_threads",
    ]
)


@FUZZ
@given(
    data=st.one_of(
        st.dictionaries(CONFIG_FIELDS, HOSTILE, max_size=4),
        st.fixed_dictionaries(
            {
                "algo_kwargs": st.dictionaries(
                    st.sampled_from(
                        ["n_steps", "learning_rate", "gamma", "batch_size", "ent_coef"]
                    ),
                    HOSTILE_SCALARS,
                    max_size=3,
                )
            }
        ),
        HOSTILE,
    ),
    as_text=st.one_of(st.none(), st.text(max_size=40)),
)
def test_yaml_config_resolves_or_names_the_field(
    data: Any, as_text: str | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("c") / "config.yaml"
    path.write_text(as_text if as_text is not None else yaml.safe_dump(data))
    _expect_our_error(
        lambda: resolve_config(PROBE, config_file=path),
        (ConfigError,),
        (str(path), "field", "must", "not", "Unknown", "env_id", "algo", "encoder"),
    )
    run = path.parent / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(data) if as_text is None else as_text)
    _expect_our_error(lambda: load_run_config(run), (ConfigError,), ("config.json",))


# -- observations -----------------------------------------------------------------------------
OBS_ARRAYS = st.one_of(
    st.builds(
        lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
        st.lists(st.integers(0, 4), max_size=4).map(tuple),
        st.sampled_from([np.uint8, np.int64, np.int32, np.float32, np.float64, np.bool_]),
        st.sampled_from([0, 1, 255, -1, 10**6, np.nan, np.inf]),
    ),
    HOSTILE_SCALARS,
)


@FUZZ
@given(
    change=st.dictionaries(
        st.sampled_from(["image", "text", "audio", "other"]), OBS_ARRAYS, max_size=3
    ),
    drop=st.lists(st.sampled_from(["image", "text", "audio"]), max_size=1),
    batch=st.integers(0, 3),
)
def test_observations_act_or_raise_a_value_error(
    change: dict[str, Any], drop: list[str], batch: int, policy_dir: Path, export_dir: Path
) -> None:
    agent = load_agent(policy_dir)
    exported = load_exported(export_dir)
    space = agent.policy.observation_space
    assert isinstance(space, spaces.Dict)
    obs: dict[str, Any] = {
        k: np.stack([s.sample() for _ in range(batch)])
        if batch
        else np.zeros((0, *s.shape), s.dtype)
        for k, s in space.spaces.items()
    }
    obs.update(change)
    for key in drop:
        obs.pop(key, None)
    for act in (agent.act, exported.act):
        try:
            actions = np.asarray(act(obs))
        except ValueError:
            continue
        assert np.issubdtype(actions.dtype, np.integer)


# -- the parameter bound the loader trusts ------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    image=st.tuples(st.integers(4, 40), st.integers(4, 40), st.sampled_from([1, 3])),
    text=st.tuples(st.integers(1, 12), st.integers(2, 60)),
    audio=st.tuples(st.integers(1, 2), st.integers(1, 20), st.integers(1, 9)),
    vector=st.integers(1, 30),
    grid=st.one_of(st.none(), st.tuples(st.integers(3, 9), st.integers(1, 12))),
    fusion=st.sampled_from(["concat", "film", "attention", "gated"]),
    text_encoder=st.sampled_from(["bow", "gru", "attention"]),
    dims=st.tuples(st.integers(1, 64), st.integers(1, 64), st.integers(4, 64)),
    net_arch=st.lists(st.integers(1, 64), max_size=3),
    algo=st.sampled_from(["ppo", "dqn"]),
)
def test_the_parameter_bound_is_an_upper_bound(
    image: tuple[int, int, int],
    text: tuple[int, int],
    audio: tuple[int, int, int],
    vector: int,
    grid: tuple[int, int] | None,
    fusion: str,
    text_encoder: str,
    dims: tuple[int, int, int],
    net_arch: list[int],
    algo: str,
) -> None:
    from mbm_agent.encoding.config import EncoderConfig
    from mbm_agent.sb3 import policy_class, policy_kwargs_for

    keys: dict[str, spaces.Space[Any]] = {
        "image": spaces.Box(0, 255, image, np.uint8),
        "text": spaces.Box(0, text[1] - 1, (text[0],), np.int64),
        "audio": spaces.Box(-1.0, 1.0, audio, np.float32),
        "vec": spaces.Box(-1.0, 1.0, (vector,), np.float32),
        "direction": spaces.Discrete(vector + 1),
    }
    if grid is not None:
        keys["symbolic_grid"] = spaces.Box(0, grid[1], (grid[0], grid[0], 3), np.uint8)
    heads = 4 if dims[2] % 4 == 0 else 1
    encoder = EncoderConfig(
        fusion=fusion,
        text_encoder=text_encoder,
        image_dim=dims[0],
        text_dim=dims[1],
        audio_dim=dims[1],
        vector_dim=dims[0],
        word_dim=dims[2],
        fusion_dim=dims[2],
        features_dim=dims[0] + dims[1],
        attention_heads=heads,
    )
    obs_space, act_space = spaces.Dict(keys), spaces.Discrete(5)
    kwargs = {"net_arch": net_arch}
    policy = policy_class(algo)(
        obs_space, act_space, lambda _: 0.0, **policy_kwargs_for(encoder, {}, kwargs)
    )
    spec = policy_spec(
        policy,
        algo=algo,
        env_id="x",
        env_kwargs={},
        encoder=encoder,
        modalities={},
        policy_kwargs=kwargs,
        vocabulary=None,
    )
    spec = json.loads(json.dumps(spec))
    assert sum(p.numel() for p in policy.parameters()) <= parameter_bound(spec)
