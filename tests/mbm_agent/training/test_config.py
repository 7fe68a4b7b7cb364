"""The training config: precedence of its layers, aliases, validation, the round trip through a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.imitation.bc import BCConfig
from mbm_agent.sb3.algorithms import ALGORITHMS
from mbm_agent.training import config as config_module
from mbm_agent.training.config import (
    ALGOS,
    ConfigError,
    TrainConfig,
    expand_aliases,
    load_run_config,
    resolve_config,
    save_config,
)

ENV = "mbm/GoToObject-v0"


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``default.yaml`` and an env YAML of the test's own (the real ones stay untouched)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    _write(
        folder / "default.yaml",
        {
            "n_envs": 16,
            "steps": 1000,
            "policy_kwargs": {"net_arch": [64]},
            "hyperparams": {"ppo": {"n_steps": 128, "gamma": 0.9}, "a2c": {"n_steps": 8}},
        },
    )
    _write(
        folder / "mbm_GoToObject-v0.yaml",
        {"n_envs": 32, "fusion": "film", "hyperparams": {"ppo": {"n_steps": 64}}},
    )
    monkeypatch.setattr(config_module, "CONFIG_DIR", folder)
    return folder


# -- precedence ---------------------------------------------------------------------------
def test_each_layer_overrides_the_one_before(config_dir: Path, tmp_path: Path) -> None:
    """Dataclass defaults < default.yaml < env YAML < --config < flags and --set."""
    cfg = resolve_config("mbm/FindSound-v0")  # no YAML of its own here
    assert (cfg.n_envs, cfg.steps, cfg.eval_every) == (16, 1000, 20_000)  # last: the dataclass's
    assert cfg.policy_kwargs == {"net_arch": [64]}
    assert cfg.algo_kwargs == {"n_steps": 128, "gamma": 0.9}
    assert cfg.encoder == EncoderConfig()

    cfg = resolve_config(ENV)
    assert (cfg.n_envs, cfg.steps) == (32, 1000)
    assert cfg.algo_kwargs == {"n_steps": 64, "gamma": 0.9}  # merged key by key
    assert cfg.fusion == "film"

    user = _write(
        tmp_path / "user.yaml",
        {"n_envs": 8, "encoder": {"features_dim": 64}, "hyperparams": {"ppo": {"gamma": 0.5}}},
    )
    cfg = resolve_config(ENV, config_file=user)
    assert cfg.n_envs == 8
    assert cfg.algo_kwargs == {"n_steps": 64, "gamma": 0.5}
    assert (cfg.encoder.fusion, cfg.encoder.features_dim) == ("film", 64)

    flags = {"n_envs": 4, "algo_kwargs": {"n_steps": 16}, "encoder": {"features_dim": 32}}
    cfg = resolve_config(ENV, config_file=user, overrides=flags)
    assert cfg.n_envs == 4
    assert cfg.algo_kwargs == {"n_steps": 16, "gamma": 0.5}
    assert (cfg.encoder.fusion, cfg.encoder.features_dim) == ("film", 32)


@pytest.mark.parametrize(
    ("env_id", "family"),
    [
        ("BabyAI-GoToRedBall-v0", "BabyAI"),
        ("MiniGrid-Empty-5x5-v0", "MiniGrid"),
        ("mbm-atari/Seaquest-v0", "mbm-atari"),
        ("mbm/GoToObject-v0", "mbm"),
        ("my_pkg.envs:Lift-v0", "Lift"),
        ("CartPole-v1", "CartPole"),
    ],
)
def test_env_family_is_the_namespace_or_the_names_first_word(env_id: str, family: str) -> None:
    assert config_module.env_family(env_id) == family


def test_a_family_yaml_sits_between_default_and_the_envs_own(
    config_dir: Path, tmp_path: Path
) -> None:
    """default.yaml < families/<family>.yaml < the env's YAML < --config < flags."""
    (config_dir / "families").mkdir()
    _write(
        config_dir / "families" / "BabyAI.yaml",
        {"n_envs": 8, "steps": 5000, "hyperparams": {"ppo": {"n_steps": 32, "memory": 64}}},
    )
    cfg = resolve_config("BabyAI-GoToRedBall-v0")
    assert (cfg.n_envs, cfg.steps) == (8, 5000)
    assert cfg.algo_kwargs == {"n_steps": 32, "gamma": 0.9, "memory": 64}
    # Another family, and an id that only starts like one, do not get it.
    assert resolve_config("MiniGrid-Empty-5x5-v0").n_envs == 16
    assert resolve_config("BabyAIX-GoTo-v0").n_envs == 16

    _write(config_dir / "BabyAI-PickupLoc-v0.yaml", {"n_envs": 4})
    cfg = resolve_config("BabyAI-PickupLoc-v0")
    assert (cfg.n_envs, cfg.steps) == (4, 5000)  # its own YAML wins, the family's fills in
    user = _write(tmp_path / "user.yaml", {"steps": 7})
    assert resolve_config("BabyAI-PickupLoc-v0", config_file=user).steps == 7
    assert resolve_config("BabyAI-PickupLoc-v0", overrides={"n_envs": 2}).n_envs == 2


def test_the_shipped_family_files_are_valid_configs() -> None:
    families = sorted((config_module.CONFIG_DIR / "families").glob("*.yaml"))
    assert families, "no family defaults shipped"
    for path in families:
        cfg = resolve_config(f"{path.stem}-Any-v0")
        assert cfg.env_id == f"{path.stem}-Any-v0"


# -- extends: a recipe's values written once ---------------------------------------------------
FROM_SCRATCH_IDS = (
    "mbm/GoToObject-v0",
    "mbm/SoundMaze-v0",
    "mbm/FindSound-v0",
    "BabyAI-GoToRedBall-v0",
    "BabyAI-PickupLoc-v0",
)


def test_the_from_scratch_recipe_is_decided_once_for_every_game_that_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = yaml.safe_load((config_module.RECIPE_DIR / "from-scratch.yaml").read_text())
    for env_id in FROM_SCRATCH_IDS:
        cfg = resolve_config(env_id)
        for name, value in shipped["hyperparams"]["ppo"].items():
            assert cfg.algo_kwargs[name] == value, (env_id, name)
        assert cfg.encoder.image_encoder == shipped["encoder"]["image_encoder"]
        assert cfg.n_envs == shipped["n_envs"]
    # One edit of the recipe reaches all of them; the games' own values stay theirs.
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    edited = {**shipped, "hyperparams": {"ppo": {**shipped["hyperparams"]["ppo"], "memory": 32}}}
    _write(recipes / "from-scratch.yaml", edited)
    monkeypatch.setattr(config_module, "RECIPE_DIR", recipes)
    for env_id in FROM_SCRATCH_IDS:
        assert resolve_config(env_id).algo_kwargs["memory"] == 32, env_id
    assert resolve_config("mbm/SoundMaze-v0").steps == 1_000_000
    assert resolve_config("mbm/GoToObject-v0").fusion == "film"
    # The probe and third-party games do not build on it.
    for env_id in ("mbm/ModalityProbe-v0", "MiniHack-Eat-v0", "MiniGrid-Empty-5x5-v0"):
        assert resolve_config(env_id).algo_kwargs.get("memory", 0) == 0, env_id


def test_gotoobjmaze_adds_a_curriculum_and_long_sequences_to_the_family_recipe() -> None:
    """configs/BabyAI-GoToObjMaze-v0.yaml: its own curriculum, 64 envs and 128-step
    sequences on top of the BabyAI family file, whose recipe (FiLM, memory, reward
    prediction) it keeps."""
    pytest.importorskip("minigrid")
    maze = resolve_config("BabyAI-GoToObjMaze-v0")
    sibling = resolve_config("BabyAI-GoToObj-v0")  # same family, no level file
    assert maze.fusion == sibling.fusion == "film"
    for name in ("memory", "aux_reward_coef", "learning_rate"):
        assert maze.algo_kwargs[name] == sibling.algo_kwargs[name], name
    assert maze.algo_kwargs["sequence_length"] == maze.algo_kwargs["n_steps"] == 128
    assert maze.algo_kwargs["sequence_length"] > sibling.algo_kwargs["sequence_length"]
    assert maze.algo_kwargs["batch_size"] % maze.algo_kwargs["sequence_length"] == 0
    # 64 envs, twice the family's: 32 whole-rollout sequences per minibatch, two
    # minibatches per epoch.
    assert maze.n_envs == 2 * sibling.n_envs == 64
    assert maze.n_envs * maze.algo_kwargs["n_steps"] == 2 * maze.algo_kwargs["batch_size"]
    assert sibling.curriculum == {} and maze.steps > sibling.steps
    levels = maze.curriculum["levels"]
    assert levels[0] == {"num_rows": 1, "num_cols": 1}
    assert levels[-1] == {"num_rows": 2, "num_cols": 3}  # then the level's own 3x3 maze
    for level in levels:  # each is an argument set the level takes
        env = gym.make("BabyAI-GoToObjMaze-v0", **level)
        env.reset(seed=0)
        assert (env.unwrapped.num_rows, env.unwrapped.num_cols) == tuple(level.values())
        env.close()


def test_a_users_config_extends_a_recipe_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``extends:`` by recipe name or relative path; the extending file's values win."""
    user = _write(
        tmp_path / "mine.yaml",
        {"extends": "from-scratch", "steps": 1234, "hyperparams": {"ppo": {"memory": 16}}},
    )
    cfg = resolve_config("CartPole-v1", config_file=user)
    assert cfg.steps == 1234
    assert cfg.algo_kwargs["memory"] == 16  # the file's own value
    assert cfg.algo_kwargs["aux_reward_coef"] == 1.0  # the recipe's, merged key by key
    assert cfg.policy_kwargs["activation_fn"] == "relu"
    assert "net_arch" in cfg.policy_kwargs  # default.yaml's still beneath

    (tmp_path / "sub").mkdir()
    _write(tmp_path / "base.yaml", {"extends": "from-scratch", "n_envs": 4, "fusion": "film"})
    _write(tmp_path / "sub" / "mid.yaml", {"extends": "../base.yaml", "n_envs": 6})
    top = _write(tmp_path / "top.yaml", {"extends": "sub/mid.yaml", "seed": 9})
    cfg = resolve_config("CartPole-v1", config_file=top)
    assert (cfg.seed, cfg.n_envs, cfg.fusion) == (9, 6, "film")  # nearest file wins
    assert cfg.algo_kwargs["memory"] == 128  # the recipe at the bottom of the chain
    # the CLI prints what a config extending a recipe resolves to
    from mbm_agent.cli import main

    assert main(["train", "CartPole-v1", "--config", str(user), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 1234 and printed["algo_kwargs"]["memory"] == 16
    assert printed["algo_kwargs"]["aux_reward_coef"] == 1.0 and "extends" not in printed


@pytest.mark.parametrize(
    ("extends", "words"),
    [
        ("from-scrach", ["from-scrach", "not a recipe", "from-scratch"]),
        ("missing.yaml", ["missing.yaml", "does not exist"]),
        (["from-scratch"], ["extends must name a recipe", "from-scratch"]),
        ("", ["extends must name a recipe"]),
    ],
)
def test_extends_names_what_is_wrong(tmp_path: Path, extends: Any, words: list[str]) -> None:
    user = _write(tmp_path / "mine.yaml", {"extends": extends})
    with pytest.raises(ConfigError) as exc:
        resolve_config("CartPole-v1", config_file=user)
    for word in words:
        assert word in str(exc.value)
    assert str(user) in str(exc.value)


def test_files_that_extend_each_other_in_a_loop_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"extends": "b.yaml", "n_envs": 2})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml", "n_envs": 3})
    with pytest.raises(ConfigError, match="loop") as exc:
        resolve_config("CartPole-v1", config_file=tmp_path / "a.yaml")
    assert "a.yaml" in str(exc.value) and "b.yaml" in str(exc.value)
    _write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(ConfigError, match="loop"):
        resolve_config("CartPole-v1", config_file=tmp_path / "self.yaml")


def test_the_algorithm_picks_its_hyperparameters(config_dir: Path) -> None:
    cfg = resolve_config(ENV, overrides={"algo": "a2c"})
    assert cfg.algo_kwargs == {"n_steps": 8}


def test_resolve_config_checks_a_missing_config_file(config_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(ENV, config_file=tmp_path / "nope.yaml")


# -- aliases ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env_layer", "file_layer", "flags", "fusion"),
    [
        # the env YAML says `fusion: film` (alias); each later layer wins in either spelling
        ({}, {"encoder": {"fusion": "concat"}}, {}, "concat"),
        ({}, {"fusion": "gated"}, {}, "gated"),
        ({}, {"fusion": "gated"}, {"encoder": {"fusion": "attention"}}, "attention"),
        ({}, {"encoder": {"fusion": "gated"}}, {"fusion": "attention"}, "attention"),
        ({"encoder": {"fusion": "gated"}}, {}, {}, "gated"),
        ({}, {}, {}, "film"),
    ],
)
def test_fusion_alias_and_field_follow_precedence_in_any_spelling(
    config_dir: Path,
    tmp_path: Path,
    env_layer: dict[str, Any],
    file_layer: dict[str, Any],
    flags: dict[str, Any],
    fusion: str,
) -> None:
    if env_layer:
        _write(config_dir / "mbm_GoToObject-v0.yaml", env_layer)
    user = _write(tmp_path / "user.yaml", file_layer)
    cfg = resolve_config(ENV, config_file=user, overrides=flags)
    assert cfg.encoder.fusion == cfg.fusion == fusion


def test_alias_and_field_disagreeing_in_one_layer_is_an_error(
    config_dir: Path, tmp_path: Path
) -> None:
    user = _write(tmp_path / "user.yaml", {"fusion": "film", "encoder": {"fusion": "gated"}})
    with pytest.raises(ConfigError, match=r"user\.yaml: fusion='film' and encoder\.fusion='gated'"):
        resolve_config(ENV, config_file=user)
    # the same value twice is fine
    same = _write(tmp_path / "same.yaml", {"fusion": "gated", "encoder": {"fusion": "gated"}})
    assert resolve_config(ENV, config_file=same).fusion == "gated"


def test_expand_aliases_is_the_only_rewrite() -> None:
    assert expand_aliases({"fusion": "film", "seed": 3}) == {
        "encoder": {"fusion": "film"},
        "seed": 3,
    }
    assert expand_aliases({"fusion": "film", "encoder": {"features_dim": 8}}) == {
        "encoder": {"features_dim": 8, "fusion": "film"}
    }
    data = {"encoder": {"fusion": "film"}}
    assert expand_aliases(data) == data
    with pytest.raises(ConfigError, match="encoder must be a mapping"):
        expand_aliases({"fusion": "film", "encoder": [1]})
    cfg = TrainConfig.from_dict({"env_id": ENV, "fusion": "attention"})
    assert cfg.encoder.fusion == "attention"


# -- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"stepz": 10}, ("'stepz'", "did you mean 'steps'")),
        ({"fuson": "film"}, ("'fuson'", "did you mean 'fusion'")),
        ({"learning_rat": 0.1}, ("'learning_rat'", "algo_kwargs.learning_rate")),
        ({"features_dm": 8}, ("'features_dm'", "encoder.features_dim")),
        ({"encoder": {"fusoin": "film"}}, ("encoder:", "'fusoin'", "did you mean 'fusion'")),
        ({"algo": "sac"}, ("algo='sac'", *sorted(ALGORITHMS))),
        ({"fusion": "sum"}, ("fusion='sum'", *sorted(FUSION_MODES))),
        ({"encoder": {"features_dim": 0}}, ("features_dim", ">= 1")),
        ({"encoder": [1, 2]}, ("encoder must be a mapping", "[1, 2]")),
        ({"extractor": "clip"}, ("extractor='clip'", "mbm", "sb3")),
        ({"n_envs": 0}, ("n_envs", ">= 1")),
        ({"steps": True}, ("steps", "True")),
        ({"device": "tpu"}, ("device='tpu'", "cpu")),
    ],
)
def test_errors_name_the_field_and_the_fix(data: dict[str, Any], words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"env_id": ENV, **data})
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_allowed_names_come_from_the_registries() -> None:
    assert tuple(ALGORITHMS) == ALGOS
    assert EncoderConfig.choices()["fusion"] == tuple(FUSION_MODES)


def test_the_encoder_is_checked_once_and_travels_as_an_object() -> None:
    cfg = TrainConfig.from_dict({"env_id": ENV, "encoder": {"fusion": "gated"}})
    assert isinstance(cfg.encoder, EncoderConfig)
    assert cfg.encoder_config() is cfg.encoder
    with pytest.raises(AttributeError):  # frozen: a checked config stays checked
        cfg.encoder.fusion = "sum"  # type: ignore[misc]
    given = EncoderConfig(features_dim=48)
    assert TrainConfig(env_id=ENV, encoder=given).encoder is given


# -- round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("extractor", ["mbm", "sb3"])
def test_round_trip_through_config_json(tmp_path: Path, extractor: str) -> None:
    cfg = resolve_config(
        ENV,
        overrides={
            "fusion": "attention",
            "encoder": {"features_dim": 96},
            "seed": 5,
            "extractor": extractor,
            "modalities": {"audio": "ignore"},
            "algo_kwargs": {"learning_rate": 0.001},
        },
    )
    save_config(cfg, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["fusion"] == ("attention" if extractor == "mbm" else "sb3-default")
    assert saved["encoder"] == cfg.encoder.to_dict()  # every field, not only those given
    loaded = load_run_config(tmp_path)
    assert loaded == cfg
    assert isinstance(loaded.encoder, EncoderConfig)


def test_a_config_json_written_with_a_partial_encoder_loads(tmp_path: Path) -> None:
    """Runs saved before the encoder travelled as an object hold only the fields given."""
    cfg = resolve_config(ENV)
    data = cfg.to_dict()
    data["encoder"] = {"fusion": "gated"}
    (tmp_path / "config.json").write_text(json.dumps(data), encoding="utf-8")
    assert load_run_config(tmp_path).encoder == EncoderConfig(fusion="gated")


# -- behaviour cloning settings -------------------------------------------------------------
def test_bc_settings_share_the_alias_and_the_checks() -> None:
    cfg = BCConfig.from_dict({"fusion": "film", "encoder": {"features_dim": 64}, "epochs": 2})
    assert cfg.encoder == EncoderConfig(fusion="film", features_dim=64)
    with pytest.raises(ConfigError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        BCConfig.from_dict({"epoch": 2})
    with pytest.raises(ConfigError, match="fusion='sum'"):
        BCConfig.from_dict({"fusion": "sum"})
    with pytest.raises(ConfigError, match="disagree"):
        BCConfig.from_dict({"fusion": "film", "encoder": {"fusion": "gated"}})
