"""Property tests of the games' constructor arguments.

Any combination of arguments, valid or not, and arguments a game does not take,
either builds an env that plays a short random rollout inside its spaces, or
raises ValueError/TypeError whose message names an argument that was given; the
single and the vector env (one validation path) agree on which. Valid values
whose combination fits always build.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs

ROLLOUT_STEPS = 6
# Examples per game, capped so the file runs in about 5 s of CPU.
SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}

odd_values = st.sampled_from(
    [None, True, np.bool_(True), 3.0, np.float64(8.0), "8", [8], (8,), math.nan, 2**70]
)

#: Values each argument accepts on its own (a combination may still not fit).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "grid_size": st.one_of(st.integers(5, 16), st.just(np.int64(9))),
    "n_objects": st.one_of(st.integers(2, 6), st.just(np.int32(3))),
    "frame_size": st.one_of(
        st.integers(15, 96),
        st.tuples(st.integers(15, 96), st.integers(15, 96)),
        st.sampled_from([[48, 64], (np.int64(48), 48)]),
    ),
    "max_steps": st.one_of(st.integers(1, 300), st.sampled_from([None, 100_000])),
    "view": st.sampled_from(["egocentric", "topdown"]),
    "view_size": st.sampled_from([3, 5, 7, 9, 11, 13, 15]),
    "noise": st.one_of(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(lambda p: tuple(sorted(p))),
        st.sampled_from([[0.0, 1], (np.float32(0.1), 0.5)]),
    ),
    "cue": st.sampled_from(["image", "text", "audio"]),
    "n_answers": st.integers(2, 8),
    "wall_density": st.one_of(st.floats(0.0, 0.3), st.sampled_from([0, np.float32(0.1)])),
    "object_set": st.sampled_from(["grid", "around-target"]),
    "all_reachable": st.sampled_from([True, False, np.bool_(True)]),
}
#: Values each argument refuses, whatever the others are.
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "grid_size": st.one_of(st.integers(-2, 4), st.just(33), odd_values),
    "n_objects": st.one_of(st.integers(-1, 1), st.just(7), odd_values),
    "frame_size": st.one_of(
        st.integers(-1, 14),
        st.tuples(st.integers(-1, 14), st.integers(-1, 20)),
        st.sampled_from([(64,), (64, 64, 3), "64", 64.0, None, True, 1025, (64, 2000)]),
    ),
    "max_steps": st.one_of(
        st.integers(-1, 0), st.sampled_from([100_001, 2**70, 5.0, "9", False, math.nan])
    ),
    "view": st.sampled_from(["Egocentric", "", None, 1, ["topdown"]]),
    "view_size": st.one_of(st.sampled_from([-1, 0, 1, 2, 4, 8, 14, 16, 17]), odd_values),
    "noise": st.one_of(
        st.tuples(st.floats(-0.5, -0.01), st.floats(0.0, 1.0)),
        st.tuples(st.floats(0.5, 1.0), st.floats(0.0, 0.49)),  # low > high
        st.sampled_from([(0.1,), 0.1, "0.1", None, (0.1, 0.2, 0.3), (math.nan, 0.2)]),
        st.just((True, False)),
    ),
    "cue": st.sampled_from(["Image", "", None, 0, ["text"]]),
    "n_answers": st.one_of(st.integers(-1, 1), st.just(9), odd_values),
    "wall_density": st.one_of(
        st.floats(-0.5, -0.01),
        st.floats(0.31, 1.0),
        st.sampled_from([math.nan, "0.1", None, False]),
    ),
    "object_set": st.sampled_from(["Grid", "", None, 1, ["grid"]]),
    "all_reachable": st.sampled_from(["yes", 1, None, 0.5]),
}
TAGGED = {  # (value, whether it is valid); valid three times in four, so many examples build
    name: st.one_of(
        *[VALID[name].map(lambda v: (v, True))] * 3, INVALID[name].map(lambda v: (v, False))
    )
    for name in VALID
}


def entry_points(env_id: str) -> tuple[Any, Any]:
    spec = gym.spec(env_id)
    return load_env_creator(spec.entry_point), load_env_creator(spec.vector_entry_point)


def defaults(env_id: str) -> dict[str, Any]:
    """The game's keyword arguments and their defaults."""
    params = inspect.signature(entry_points(env_id)[0].game_class.__init__).parameters
    own = {n: p.default for n, p in params.items() if n not in ("self", "num_worlds")}
    return {**own, **envs.VERSION_KWARGS.get(env_id, {})}


def kwargs_strategy(env_id: str, foreign: bool) -> st.SearchStrategy[tuple[dict[str, Any], bool]]:
    """Some of the game's own arguments and, if ``foreign``, now and then one it does not
    take, with whether each value on its own is one the game accepts (all valid without
    ``foreign``)."""
    own = list(defaults(env_id))
    values = TAGGED if foreign else {name: VALID[name].map(lambda v: (v, True)) for name in own}
    base = st.fixed_dictionaries({}, optional={name: values[name] for name in own})
    others = [name for name in VALID if name not in own] if foreign else []
    extra = st.sampled_from([*[None] * 3 * len(others), *others]) if others else st.none()

    def combine(tagged: dict[str, tuple[Any, bool]], name: str | None, value: Any):
        kwargs = {k: v for k, (v, _) in tagged.items()}
        valid = all(ok for _, ok in tagged.values())
        if name is not None:
            kwargs[name], valid = value, False
        return kwargs, valid

    return st.builds(combine, base, extra, st.sampled_from([8, "image", (0.1, 0.2)]))


def fits(env_id: str, kwargs: dict[str, Any]) -> bool:
    """Whether individually valid arguments also fit together (the documented limits)."""
    a = {**defaults(env_id), **kwargs}
    frame = a["frame_size"]
    side = min(frame) if isinstance(frame, tuple | list) else frame
    if env_id == "mbm/ModalityProbe-v0":
        return side >= 2 * a["n_answers"]
    g, k = a["grid_size"], a["n_objects"]
    cells = g if a["view"] == "topdown" or g >= a["view_size"] else a["view_size"]
    return k + 1 <= (g - 2) ** 2 // 2 and side >= 3 * cells


def build(cls: Any, *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    try:
        return cls(*args, **kwargs), None
    except (ValueError, TypeError) as exc:
        return None, exc


def assert_names_an_argument(exc: Exception, kwargs: dict[str, Any]) -> None:
    message = str(exc)
    named = [name for name in kwargs if re.search(rf"\b{name}\b", message)]
    assert named, f"{type(exc).__name__}({message!r}) names none of {sorted(kwargs)}"


def rollout(env: envs.GameEnv, seed: int) -> None:
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    env.action_space.seed(seed)
    for _ in range(ROLLOUT_STEPS):
        obs, reward, terminated, truncated, info = env.step(int(env.action_space.sample()))
        assert env.observation_space.contains(obs)
        assert 0.0 <= reward <= 1.0 and isinstance(info["is_success"], bool)
        if terminated or truncated:
            obs, _ = env.reset()
            assert env.observation_space.contains(obs)


def check_single_and_vector(env_id: str, kwargs: dict[str, Any], seed: int) -> bool:
    """Build both envs; a built pair must play, a refusal must name an argument.
    Returns whether they built."""
    single_cls, vector_cls = entry_points(env_id)
    # What gym.make passes: the version's registered arguments, the drawn ones over them.
    kwargs = {**envs.VERSION_KWARGS.get(env_id, {}), **kwargs}
    env, error = build(single_cls, **kwargs)
    vec, vec_error = build(vector_cls, 2, **kwargs)
    if error is not None:
        assert_names_an_argument(error, kwargs)
        assert vec_error is not None and type(vec_error) is type(error)
        assert str(vec_error) == str(error)
        return False
    assert vec_error is None, f"the single env built but the vector env raised {vec_error!r}"
    assert vec.single_observation_space == env.observation_space
    rollout(env, seed)
    obs, _ = vec.reset(seed=seed)
    assert vec.observation_space.contains(obs)
    obs, *_ = vec.step(np.zeros(2, dtype=np.int64))
    assert vec.observation_space.contains(obs)
    return True


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_every_game_argument_has_strategies(env_id: str) -> None:
    assert set(defaults(env_id)) <= set(VALID) == set(INVALID)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_any_arguments_build_a_working_env_or_raise_a_named_error(
    env_id: str, data: st.DataObject
) -> None:
    kwargs, valid = data.draw(kwargs_strategy(env_id, foreign=True), label="kwargs")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    built = check_single_and_vector(env_id, kwargs, seed)
    # Built exactly when every value is one the game accepts and they fit together.
    assert built == (valid and fits(env_id, kwargs)), (kwargs, valid)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_valid_arguments_build_when_they_fit(env_id: str, data: st.DataObject) -> None:
    """Only valid values, so combinations near the limits come up often."""
    kwargs, _ = data.draw(kwargs_strategy(env_id, foreign=False), label="kwargs")
    built = check_single_and_vector(env_id, kwargs, seed=0)
    assert built == fits(env_id, kwargs), kwargs
