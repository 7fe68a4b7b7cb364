"""The ``mbm-agent`` command: help, train/eval/compare smoke runs, config precedence and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from runs_helpers import (
    ENV,
    GIF_MAGIC,
    PNG_MAGIC,
    POLICY_FILES,
    ROLLOUT,
    TINY_FLAGS,
    checkpoint_steps,
    cli_run,
    copy_tree,
    env_fusion,
    only_run,
    read_metrics,
    rollout_steps,
    run_cli,
    shared_path,
    step_dir,
)

import mbm_agent.training.config
from mbm_agent.cli import main


@pytest.fixture(scope="session")
def run0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained by the real ``mbm-agent train`` subprocess (seed 0)."""
    return cli_run(tmp_path_factory)


def _train_seed1(runs_dir: Path) -> None:
    rc = main(["train", ENV, *TINY_FLAGS, "--runs-dir", str(runs_dir), "--seed", "1"])
    assert rc == 0


@pytest.fixture(scope="session")
def run1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same configuration with seed 1, trained in-process through ``main``."""
    run = only_run(shared_path(tmp_path_factory, "cli-run-seed1", _train_seed1))
    assert run.name == f"GoToObject-ppo-{env_fusion()}-s1"
    return run


# -- help -----------------------------------------------------------------------------
def test_top_level_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for word in ("train", "eval", "compare", "demo", "play", "--version", "examples:"):
        assert word in result.stdout
    assert result.stderr == ""


def test_train_help_subprocess() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    for flag in (
        "--algo",
        "--fusion",
        "--steps",
        "--seed",
        "--n-envs",
        "--runs-dir",
        "--config",
        "--resume",
        "--set",
        "--print-config",
        "--checkpoint-every",
        "--eval-every",
        "recurrent_ppo",
        "Precedence",
    ):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "eval",
            ("--episodes", "--drop-modality", "--which", "--stochastic", "--out", "--env", "--set"),
        ),
        ("compare", ("--out", "--group-by", "runs")),
        ("demo", ("--quick", "--runs-dir", "--seed")),
        ("play", ("--expert", "--episodes", "--gif")),
    ],
)
def test_subcommand_help(
    command: str, flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out, f"{command} --help does not mention {flag}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from mbm_agent._version import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


# -- train: the run folder --------------------------------------------------------------
@pytest.mark.slow
def test_train_writes_the_run_folder(run0: Path) -> None:
    # The default name carries the fusion mode of the env's YAML (mbm_GoToObject-v0.yaml).
    assert run0.name == f"GoToObject-ppo-{env_fusion()}-s0"
    for name in (
        "config.yaml",
        "config.json",
        "command.txt",
        "metrics.csv",
        "eval.json",
        "eval.md",
    ):
        assert (run0 / name).is_file(), name
        assert (run0 / name).stat().st_size > 0, name
    assert list((run0 / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    for policy in ("best", "final"):
        for name in POLICY_FILES:
            assert (run0 / policy / name).stat().st_size > 0, f"{policy}/{name}"
    assert (run0 / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)
    assert (run0 / "learning_curve.png").stat().st_size > 1000
    assert (run0 / "episodes.gif").read_bytes()[:6] in GIF_MAGIC
    assert (run0 / "episodes.gif").stat().st_size > 1000
    # No temporary files or folders left behind by the atomic writes.
    leftovers = [p for p in run0.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_train_records_config_and_command(run0: Path) -> None:
    as_yaml = yaml.safe_load((run0 / "config.yaml").read_text())
    as_json = json.loads((run0 / "config.json").read_text())
    assert as_yaml == as_json
    assert as_json["env_id"] == ENV
    assert as_json["steps"] == 256
    assert as_json["n_envs"] == 4
    assert as_json["algo_kwargs"]["n_steps"] == 32
    assert as_json["algo_kwargs"]["batch_size"] == 64
    assert as_json["algo_kwargs"]["ent_coef"] == 0.01  # from default.yaml's hyperparams.ppo
    assert as_json["fusion"] == as_json["encoder"]["fusion"] == env_fusion()  # the env's YAML
    lines = (run0 / "command.txt").read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mbm-agent train mbm/GoToObject-v0 ")
    assert "algo_kwargs.n_steps=32" in lines[0]


@pytest.mark.slow
def test_train_metrics_checkpoints_and_report(run0: Path) -> None:
    rows = read_metrics(run0)
    assert rollout_steps(rows) == [ROLLOUT, 2 * ROLLOUT]
    evals = [int(r["timesteps"]) for r in rows if r["eval_return"]]
    assert evals == [ROLLOUT, 2 * ROLLOUT]
    for row in rows:
        assert float(row["time_s"]) >= 0
        assert float(row["fps"]) > 0
    assert checkpoint_steps(run0) == [ROLLOUT, 2 * ROLLOUT]
    for step in checkpoint_steps(run0):
        ckpt = step_dir(run0, step)
        for name in ("optimizer.safetensors", "optimizer.json", "state.json"):
            assert (ckpt / name).is_file(), name
        for name in POLICY_FILES:
            assert (ckpt / "policy" / name).is_file(), name
        assert json.loads((ckpt / "state.json").read_text())["num_timesteps"] == step
    report = json.loads((run0 / "eval.json").read_text())
    assert report["meta"]["episodes"] == 4
    assert report["meta"]["policy"] == "best"
    assert set(report["baselines"]) == {"random", "expert"}
    assert "success rate" in (run0 / "eval.md").read_text()


# -- eval -------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_subcommand(run0: Path, tmp_path: Path) -> None:
    run = copy_tree(run0, tmp_path / "run")
    before = (run / "eval.json").read_text()
    result = run_cli("eval", run, "--episodes", "6", "--n-envs", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "eval.json").read_text())
    assert (run / "eval.json").read_text() != before
    assert report["meta"]["episodes"] == 6
    assert len(report["episodes"]["seeds"]) == len(set(report["episodes"]["seeds"])) == 6
    assert report["meta"]["drop_modalities"] == []
    assert "eval.json" in result.stdout
    assert (run / "eval.md").is_file()


@pytest.mark.slow
def test_eval_drop_modality_writes_its_own_report(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the subprocess path is smoke-tested above; this saves a start-up).
    run = copy_tree(run0, tmp_path / "run")
    before = (run / "eval.json").read_bytes()
    argv = ["eval", str(run), "--episodes", "6", "--drop-modality", "text", "--which", "final"]
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--torch-threads", "2"]) == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 2  # as train's --torch-threads
    finally:
        torch.set_num_threads(threads)
    assert "eval-final-drop-text.json" in capsys.readouterr().out
    report = json.loads((run / "eval-final-drop-text.json").read_text())
    assert report["meta"]["drop_modalities"] == ["text"]
    assert report["meta"]["policy"] == "final"
    assert report["meta"]["episodes"] == 6
    assert (run / "eval-final-drop-text.md").is_file()
    assert (run / "eval.json").read_bytes() == before  # the main report is left alone


@pytest.mark.slow
def test_eval_reports_are_named_by_mode_and_never_overwrite_each_other(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each mode (greedy / sampled, each sense / one masked) writes its own report:
    a sampled evaluation run after a greedy one leaves the greedy report as it was."""
    run = copy_tree(run0, tmp_path / "run")
    before = (run / "eval.json").read_bytes()
    expected = {
        (): "eval-sampled",
        ("--drop-modality", "text"): "eval-sampled-drop-text",
    }
    assert main(["eval", str(run), "--episodes", "3", "--drop-modality", "text"]) == 0
    greedy_drop = (run / "eval-drop-text.json").read_bytes()
    for extra, name in expected.items():
        assert main(["eval", str(run), "--episodes", "3", "--stochastic", *extra]) == 0
        assert f"{name}.json" in capsys.readouterr().out
        report = json.loads((run / f"{name}.json").read_text())
        assert report["meta"]["deterministic"] is False
        assert report["meta"]["drop_modalities"] == list(extra[1:])
        assert (run / f"{name}.md").is_file()
    assert (run / "eval.json").read_bytes() == before
    assert (run / "eval-drop-text.json").read_bytes() == greedy_drop


@pytest.mark.slow
def test_eval_names_each_policy_report_and_writes_it_where_training_keeps_it(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--which final, final/, a checkpoint's policy: each its own report, in the run
    folder (never inside a folder training replaces or prunes), labelled with what
    was played; a published policy folder reports into itself."""
    run = copy_tree(run0, tmp_path / "run")
    best = (run / "eval.json").read_bytes()
    step = sorted(p.name for p in (run / "checkpoints").iterdir())[-1]
    ckpt = run / "checkpoints" / step / "policy"
    cases = [
        ([str(run), "--which", "final"], run / "eval-final.json", "final", run / "final"),
        ([str(run / "final")], run / "eval-final.json", "final", run / "final"),
        ([str(ckpt)], run / f"eval-{step}.json", step, ckpt),
    ]
    for args, report_file, label, played in cases:
        report_file.unlink(missing_ok=True)
        assert main(["eval", *args, "--episodes", "2"]) == 0, capsys.readouterr().err
        meta = json.loads(report_file.read_text())["meta"]
        assert meta["policy"] == label
        assert Path(meta["policy_dir"]) == played.absolute()
    assert (run / "eval.json").read_bytes() == best
    assert not list((run / "checkpoints").rglob("eval*.json"))
    agents = tmp_path / "agents"
    for name in ("A", "B"):
        shutil.copytree(run / "best", agents / name)
        assert main(["eval", str(agents / name), "--episodes", "2"]) == 0
        assert json.loads((agents / name / "eval.json").read_text())["meta"]["policy"] == "policy"
    assert sorted(p.name for p in agents.iterdir()) == ["A", "B"]  # no shared agents/eval.json


@pytest.mark.slow
def test_eval_on_another_env_writes_its_own_report_and_names_the_env(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--env plays another version of the game (from its own default arguments) and
    --set changes a game argument; each report is named by the env it played and says
    so in its meta, and the training env's reports are left as they were."""
    run = copy_tree(run0, tmp_path / "run")
    best = (run / "eval.json").read_bytes()
    other = "mbm/GoToObject-v1"
    trained = json.loads((run / "best" / "model.json").read_text())
    assert trained["env_id"] == ENV != other
    cases = [
        # Another env starts from its own defaults, not the run's arguments.
        (["--env", other], "eval-on-mbm_GoToObject-v1", other, {}),
        (
            ["--set", "env_kwargs.n_objects=2"],  # train's spelling is accepted
            "eval-with-n_objects=2",
            ENV,
            {**trained["env_kwargs"], "n_objects": 2},
        ),
        (
            ["--env", other, "--set", "n_objects=3", "--stochastic"],
            "eval-sampled-on-mbm_GoToObject-v1-with-n_objects=3",
            other,
            {"n_objects": 3},
        ),
    ]
    for args, name, env_id, env_kwargs in cases:
        assert main(["eval", str(run), "--episodes", "2", *args]) == 0, capsys.readouterr().err
        assert f"{name}.json" in capsys.readouterr().out
        meta = json.loads((run / f"{name}.json").read_text())["meta"]
        assert (meta["env_id"], meta["env_kwargs"]) == (env_id, env_kwargs)
        assert meta["deterministic"] is ("--stochastic" not in args)
        assert (run / f"{name}.md").is_file()
    assert (run / "eval.json").read_bytes() == best


@pytest.mark.slow
def test_eval_on_an_env_the_agent_cannot_play_is_a_clear_error(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another game's keys, an unknown game argument and an unknown id each name the
    problem and the fix in one line, and write no report."""
    run = copy_tree(run0, tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    cases = [
        (["--env", "mbm/SoundMaze-v1"], ("['audio', 'image', 'text']", "trained on", ENV)),
        (["--set", "room_sise=6"], ("room_sise", ENV, "--set KEY=VALUE")),
        (["--set", "algo_kwargs.n_steps=8"], ("algo_kwargs.n_steps", "the env's own arguments")),
        (["--env", "mbm/Nope-v0"], ("mbm/Nope-v0", "module:EnvId-v0")),
    ]
    for args, words in cases:
        assert main(["eval", str(run), "--episodes", "2", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mbm-agent eval: error: ") and err.count("\n") == 1, err
        for word in words:
            assert word in err, (word, err)
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("name", ["config", "model", "Score", "vocabulary", "export"])
def test_eval_name_of_a_file_folders_keep_is_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path), "--name", name]) == 2
    err = capsys.readouterr().err
    assert f"--name {name} would overwrite" in err and f"eval-{name}" in err


@pytest.mark.slow
def test_eval_unknown_modality_is_a_clear_error(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    assert main(["eval", str(run), "--episodes", "2", "--drop-modality", "smell"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbm-agent eval: error: ")
    assert "smell" in err and "text" in err
    assert not (run / "eval-drop-smell.json").exists()


def test_eval_missing_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nope" in err and "does not exist" in err


def test_eval_negative_torch_threads_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path / "nope"), "--torch-threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--torch-threads must be >= 0" in err and "-1" in err


# -- compare ----------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_two_seeds(run0: Path, run1: Path, tmp_path: Path) -> None:
    assert json.loads((run1 / "config.json").read_text())["seed"] == 1
    out = tmp_path / "cmp"
    result = run_cli("compare", run0, run1, "--out", out)
    assert result.returncode == 0, result.stderr
    md = (out / "compare.md").read_text()
    assert "GoToObject" in md and "ppo" in md
    data = json.loads((out / "compare.json").read_text())
    assert len(data["groups"]) == 1
    group = data["groups"][0]
    assert group["n_runs"] == len(group["runs"]) == 2
    assert sorted(group["seeds"]) == [0, 1]
    assert (out / "compare.png").read_bytes().startswith(PNG_MAGIC)


# -- config precedence ---------------------------------------------------------------
def _print_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(
        Path(mbm_agent.training.config.CONFIG_DIR) / "default.yaml", configs / "default.yaml"
    )
    (configs / "mbm_GoToObject-v0.yaml").write_text(
        yaml.safe_dump(
            {
                "n_envs": 8,
                "steps": 5000,
                "seed": 1,
                "eval_every": 1000,
                "hyperparams": {"ppo": {"learning_rate": 0.001, "n_epochs": 7}},
            }
        )
    )
    user = tmp_path / "mine.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "steps": 7000,
                "seed": 2,
                "eval_every": 3000,
                "checkpoint_every": 500,
                "fusion": "film",
                "algo_kwargs": {"ent_coef": 0.05, "n_epochs": 9},
            }
        )
    )
    monkeypatch.setattr(mbm_agent.training.config, "CONFIG_DIR", configs)
    runs = tmp_path / "runs"
    cfg = _print_config(
        [
            ENV,
            "--config",
            str(user),
            "--steps",
            "9000",
            "--set",
            "seed=3",
            "--set",
            "algo_kwargs.gamma=0.5",
            "--runs-dir",
            str(runs),
        ],
        capsys,
    )
    assert cfg["final_eval_episodes"] == 200  # dataclass default only
    assert cfg["keep_checkpoints"] == 2  # dataclass default only
    assert cfg["algo_kwargs"]["clip_range"] == 0.2  # default.yaml
    assert cfg["n_envs"] == 8  # per-env YAML beats default.yaml
    assert cfg["algo_kwargs"]["learning_rate"] == 0.001  # per-env hyperparams beat default.yaml
    assert cfg["eval_every"] == 3000  # --config beats the per-env YAML
    assert cfg["algo_kwargs"]["n_epochs"] == 9  # --config beats per-env hyperparams
    assert cfg["algo_kwargs"]["ent_coef"] == 0.05
    assert cfg["checkpoint_every"] == 500
    assert cfg["fusion"] == cfg["encoder"]["fusion"] == "film"
    assert cfg["steps"] == 9000  # a flag beats --config
    assert cfg["seed"] == 3  # --set beats --config
    assert cfg["algo_kwargs"]["gamma"] == 0.5
    assert not runs.exists(), "--print-config must not create a run folder"

    # Without the file, the per-env YAML shows through.
    cfg = _print_config([ENV, "--runs-dir", str(runs)], capsys)
    assert (cfg["steps"], cfg["seed"], cfg["eval_every"]) == (5000, 1, 1000)
    assert cfg["algo_kwargs"]["n_epochs"] == 7
    # A flag and --fusion override the file's fusion.
    cfg = _print_config([ENV, "--config", str(user), "--fusion", "gated"], capsys)
    assert cfg["encoder"]["fusion"] == "gated"


def test_print_config_takes_the_hyperparameters_of_the_chosen_algo(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _print_config([ENV, "--algo", "a2c"], capsys)
    assert cfg["algo"] == "a2c"
    assert cfg["algo_kwargs"]["n_steps"] == 8
    assert "clip_range" not in cfg["algo_kwargs"]  # a PPO-only hyperparameter
    cfg = _print_config([ENV, "--set", "algo=dqn"], capsys)
    assert cfg["algo_kwargs"]["buffer_size"] == 20000


# -- config errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "learning_rat=1"], ("learning_rat", "algo_kwargs.learning_rate")),
        (["--set", "stepz=10"], ("stepz", "did you mean 'steps'")),
        (["--set", "algo=sac"], ("algo='sac'", "ppo", "recurrent_ppo")),
        (["--steps", "-5"], ("steps", "-5", ">= 1")),
        (["--set", "n_envs=0"], ("n_envs", ">= 1")),
        (["--set", "fusion=bogus"], ("fusion", "bogus", "concat", "film", "attention", "gated")),
        (["--set", "encoder.fusoin=film"], ("fusoin", "did you mean 'fusion'")),
        (["--device", "tpu"], ("device", "tpu", "cpu")),
        (["--set", "steps"], ("--set", "KEY=VALUE")),
        (["--config", "/no/such/file.yaml"], ("/no/such/file.yaml", "does not exist")),
    ],
    ids=lambda v: v[-1] if isinstance(v, list) else None,
)
def test_config_errors_are_one_line(
    argv: list[str],
    expected: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs"
    assert main(["train", ENV, *argv, "--runs-dir", str(runs), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mbm-agent train: error: ")
    assert captured.err.count("\n") == 1, captured.err
    for text in expected:
        assert text in captured.err, f"{text!r} not in {captured.err!r}"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        ("Nope-v0", ("Nope-v0", "mbm/GoToObject-v1")),
        ("mbm/Nope-v0", ("mbm/Nope-v0", "mbm/GoToObject-v1")),
        ("BabyAI-Nope-v0", ("BabyAI-Nope-v0",)),
        ("MbmTestUnencodable-v0", ("'depth'", "Box(0.0, 1.0, (3, 40, 40)", "modalities")),
    ],
)
def test_bad_env_is_a_clear_error_and_leaves_no_run_folder(
    env_id: str, expected: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["train", env_id, "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbm-agent train: error: ")
    assert err.count("\n") == 1, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    leftovers = list(runs.iterdir()) if runs.exists() else []
    assert not leftovers, f"a failed start left {leftovers} behind"


@pytest.mark.parametrize("command", ["train", "bc"])
def test_fusion_choices_are_the_registry_s(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mbm_agent.cli import build_parser
    from mbm_agent.encoding.fusion import FUSION_MODES

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fusion = next(a for a in sub.choices[command]._actions if a.dest == "fusion")
    assert sorted(fusion.choices) == sorted(FUSION_MODES)
    target = ENV if command == "train" else "demos.npz"
    with pytest.raises(SystemExit) as exc:
        main([command, target, "--fusion", "sum"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mbm-agent {command}: error: argument --fusion")
    assert "'sum'" in last and all(m in last for m in FUSION_MODES)


def test_bad_algo_choice_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", ENV, "--algo", "sac"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mbm-agent train: error: argument --algo")
    assert "'sac'" in last and "recurrent_ppo" in last


def test_config_error_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = run_cli("train", ENV, "--set", "learning_rat=1", "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mbm-agent train: error: ")
    assert result.stderr.count("\n") == 1
    assert "learning_rate" in result.stderr
    assert not (tmp_path / "runs").exists()


# -- nothing outside its folder, flags that --resume cannot honour --------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--fusion", next(m for m in ("gated", "attention") if m != env_fusion())], "--fusion"),
        (["--set", "algo_kwargs.learning_rate=0.1"], "--set"),
        (["--n-envs", "2"], "--n-envs"),
        (["--seed", "7"], "--seed"),
        (["--config", "__config__"], "--config"),
        (["--run-name", "other"], "--run-name"),
        (["--eval-every", "64"], "--eval-every"),
    ],
)
def test_resume_refuses_flags_that_change_the_run(
    flags: list[str], named: str, run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    config = tmp_path / "config.yaml"
    config.write_text("n_envs: 2\n")
    flags = [str(config) if f == "__config__" else f for f in flags]
    before = _tree(run)
    argv = ["train", ENV, "--resume", str(run), *flags, "--no-progress"]
    assert main([*argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbm-agent train: error: --resume")
    assert named in err and "--init-from" in err
    assert main(argv) == 2
    capsys.readouterr()
    assert _tree(run) == before


def test_resume_takes_unchanged_flags_and_steps_as_the_new_total(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    argv = ["train", ENV, "--resume", str(run), "--seed", str(saved["seed"]), "--print-config"]
    assert main(argv) == 0  # restating a saved value is not a change
    assert f"steps: {saved['steps']}\n" in capsys.readouterr().out
    # --steps is the run's new total budget, kept for the next resume.
    total = saved["steps"] + ROLLOUT
    assert main(["train", ENV, "--resume", str(run), "--steps", str(total), "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((run / "config.json").read_text())["steps"] == total
    assert checkpoint_steps(run)[-1] == total
    assert main(["train", ENV, "--resume", str(run), "--print-config"]) == 0
    assert f"steps: {total}\n" in capsys.readouterr().out
    # Below what the run has trained: refused, nothing changed.
    before = _tree(run)
    assert main(["train", ENV, "--resume", str(run), "--steps", str(ROLLOUT), "--no-progress"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert _tree(run) == before


def test_resume_refuses_a_symlinked_metrics_file(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    for name in ("metrics.csv", "command.txt"):
        outside = tmp_path / f"outside-{name}"
        outside.write_bytes((run / name).read_bytes())
        (run / name).unlink()
        (run / name).symlink_to(outside)
        before = outside.read_bytes()
        assert main(["train", ENV, "--resume", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "symbolic link" in err and name in err
        assert outside.read_bytes() == before
        (run / name).unlink()
        (run / name).write_bytes(before)


def test_eval_writes_only_inside_its_folder(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "a" / "b" / "run")
    for name in ("../../x", "/tmp/x", "..", ".hidden", "x" * 300):
        assert main(["eval", str(run), "--episodes", "1", "--name", name]) == 2
        assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "a" / "x.json").exists() and not (tmp_path / "x.json").exists()
    target = tmp_path / "report.txt"
    target.write_text("keep")
    assert main(["eval", str(run), "--episodes", "1", "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err
    assert target.read_text() == "keep"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--run-name", "x" * 300], "run_name"),
        (["--run-name", "../../escape"], "run_name"),
        (["--set", "algo_kwargs.n_steps=0"], "algo_kwargs.n_steps"),
        (["--set", "algo_kwargs.learning_rate=abc"], "algo_kwargs.learning_rate"),
        (["--set", "algo_kwargs.gamma=abc"], "algo_kwargs.gamma"),
        (["--set", "algo_kwargs.learning_rate=lin_abc"], "lin_<number>"),
        (["--set", "algo_kwargs.clip_range=lin_-0.1"], "algo_kwargs.clip_range"),
        (["--set", "algo_kwargs.learning_rate=exp_0.001"], "lin_<number>"),
        (["--set", "algo_kwargs.clip_range_vf=lin_abc"], "algo_kwargs.clip_range_vf"),
        (["--set", "algo_kwargs.clip_range_vf=lin_-0.1"], "> 0 (or null"),
        (["--set", "algo_kwargs.clip_range_vf=0"], "> 0 (or null"),
        (["--set", "algo_kwargs.batch_size=1"], "algo_kwargs.batch_size"),
    ],
)
def test_bad_names_and_hyperparameters_are_one_line_errors(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["train", ENV, *TINY_FLAGS, "--runs-dir", str(runs), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbm-agent train: error: ") and err.count("\n") == 1, err
    assert named in err
    assert not runs.exists() or not any(runs.iterdir())
    assert not (tmp_path / "escape").exists()


def test_bc_run_name_stays_inside_runs_dir(tmp_path: Path) -> None:
    from mbm_agent.imitation.bc import BCConfig, bc_run
    from mbm_agent.imitation.demos import record_demos
    from mbm_agent.training.config import ConfigError

    demos = record_demos(ENV, 2, n_envs=2)
    runs = tmp_path / "a" / "runs"
    with pytest.raises(ConfigError, match="--run-name"):
        bc_run(demos, BCConfig(epochs=1, eval_episodes=0), run_name="../../x", runs_dir=runs)
    assert not (tmp_path / "x").exists()


# -- export never deletes what it did not write ----------------------------------------------
@pytest.mark.slow
def test_export_out_never_replaces_a_folder_it_did_not_write(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    runs = tmp_path / "runs"
    run = copy_tree(run0, runs / "run")
    before = _tree(runs)
    for out in (run, runs, run / "best", run / "metrics.csv"):
        assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err
        assert _tree(runs) == before
    # A new folder, then the same folder again (an earlier export of ours) both work.
    out = tmp_path / "exports" / "ts"
    for _ in range(2):
        assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
        assert (out / "export.json").is_file() and (out / "policy.pt").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert _tree(runs) == before


@pytest.mark.slow
def test_export_of_final_or_a_checkpoint_goes_beside_the_best_one_not_over_it(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    step = sorted(p.name for p in (run / "checkpoints").iterdir())[-1]
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    best_export = _tree(run / "exports" / "torchscript")
    assert main(["export", str(run), "--format", "torchscript", "--which", "final"]) == 0
    ckpt_policy = run / "checkpoints" / step / "policy"
    assert main(["export", str(ckpt_policy), "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    for name in ("torchscript-final", f"torchscript-{step}"):
        assert str(run / "exports" / name) in out
        meta = json.loads((run / "exports" / name / "export.json").read_text())
        assert meta["source"] == (
            "final" if name.endswith("final") else f"checkpoints/{step}/policy"
        )
    assert _tree(run / "exports" / "torchscript") == best_export
    assert not (ckpt_policy / "exports").exists()  # pruning would take it


@pytest.mark.slow
def test_export_again_refuses_to_delete_files_put_in_the_export_folder(
    run0: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_tree(run0, tmp_path / "run")
    out = tmp_path / "ts"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    (out / "NOTES.md").write_text("mine")
    before = _tree(out)
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NOTES.md" in err and "did not write" in err
    assert _tree(out) == before
    assert main(["export", str(run), "--format", "torchscript", "--out", str(run / "best")]) == 2
    assert f"--out {run / 'exports' / 'best'}" in capsys.readouterr().err
