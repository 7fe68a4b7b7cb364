"""Faults: a killed or interrupted training run, corrupt checkpoints, failing writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from runs_helpers import (
    ENV,
    ROLLOUT,
    TINY_FLAGS,
    checkpoint_steps,
    copy_tree,
    read_metrics,
    rollout_steps,
    shared_path,
    start_cli,
    step_dir,
    train_tiny,
    wait_for,
)
from safetensors.torch import load_file

from mbm_agent.cli import main
from mbm_agent.evaluation import set_aside_reports, weights_digest
from mbm_agent.training.agent import load_agent, save_policy
from mbm_agent.training.callback import TrainerCallback
from mbm_agent.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from mbm_agent.training.config import load_run_config
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.lock import RunLock, RunLockedError
from mbm_agent.training.storage import (
    ModelFileError,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_text,
    clean_stale,
    load_tensors,
)
from mbm_agent.training.trainer import build_algorithm


def _model_for(run: Path) -> Any:
    """A fresh algorithm with the run's saved configuration (no weights loaded)."""
    cfg = load_run_config(run)
    venv, _ = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    venv.close()
    return model


def _optimizer_tensors(model: Any) -> dict[str, torch.Tensor]:
    state = model.policy.optimizer.state_dict()["state"]
    return {
        f"{pid}.{key}": value.clone()
        for pid, values in state.items()
        for key, value in values.items()
        if isinstance(value, torch.Tensor)
    }


def _assert_same_tensors(actual: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert saved, "nothing saved"
    for name, tensor in saved.items():
        assert name in actual, name
        assert torch.equal(actual[name], tensor), name


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


# -- (a) SIGKILL, then --resume -------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = 6 * ROLLOUT
    run = tmp_path / "runs" / "killed"
    proc = start_cli(
        "train",
        ENV,
        *TINY_FLAGS,
        "--steps",
        str(steps),
        "--runs-dir",
        tmp_path / "runs",
        "--run-name",
        "killed",
        "--checkpoint-every",
        str(ROLLOUT),
        "--eval-every",
        "0",
        "--set",
        "final_eval_episodes=2",
        "--set",
        "gif_episodes=0",
    )
    wait_for(lambda: step_dir(run, 2 * ROLLOUT).is_dir(), proc, what="the checkpoint at 256 steps")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists(), "the run finished before it was killed"

    kept = checkpoint_steps(run)
    newest = kept[-1]
    assert 2 * ROLLOUT <= newest < steps
    logged = rollout_steps(read_metrics(run))
    n_rows_before = len(read_metrics(run))
    # At most one checkpoint interval of progress is lost.
    assert not logged or max(logged) - newest <= ROLLOUT

    # The checkpoint holds the optimizer state: loading it restores Adam's moments.
    saved_opt = load_tensors(step_dir(run, newest) / "optimizer.safetensors")
    assert any(name.endswith(".exp_avg") for name in saved_opt)
    assert any(t.abs().sum() > 0 for n, t in saved_opt.items() if n.endswith(".exp_avg"))
    saved_weights = load_file(str(step_dir(run, newest) / "policy" / "model.safetensors"))
    model = _model_for(run)
    assert not model.policy.optimizer.state_dict()["state"]  # a fresh optimizer is empty
    state = load_checkpoint(step_dir(run, newest), model)
    assert state.num_timesteps == model.num_timesteps == newest
    _assert_same_tensors(_optimizer_tensors(model), saved_opt)

    # `mbm-agent train ENV --resume RUN` keeps the run's budget (not default.yaml's).
    assert main(["train", ENV, "--resume", str(run), "--print-config"]) == 0
    assert f"steps: {steps}\n" in capsys.readouterr().out

    # Resume in-process, looking at the model just before training continues.
    seen: dict[str, Any] = {}
    original = TrainerCallback._on_training_start

    def spy(self: TrainerCallback) -> None:
        seen["num_timesteps"] = self.model.num_timesteps
        seen["optimizer"] = _optimizer_tensors(self.model)
        seen["weights"] = {k: v.clone() for k, v in self.model.policy.state_dict().items()}
        original(self)

    monkeypatch.setattr(TrainerCallback, "_on_training_start", spy)
    assert main(["train", ENV, "--resume", str(run), "--no-progress"]) == 0
    assert seen["num_timesteps"] == newest
    _assert_same_tensors(seen["optimizer"], saved_opt)
    _assert_same_tensors(seen["weights"], saved_weights)

    resumed = rollout_steps(read_metrics(run)[n_rows_before:])
    assert resumed == list(range(newest + ROLLOUT, steps + 1, ROLLOUT))
    assert checkpoint_steps(run)[-1] == steps
    final_state = json.loads((step_dir(run, steps) / "state.json").read_text())
    assert final_state["num_timesteps"] == steps
    n_epochs = load_run_config(run).algo_kwargs["n_epochs"]
    assert final_state["n_updates"] == steps // ROLLOUT * n_epochs  # counters carried over
    assert (run / "final" / "model.safetensors").is_file()
    assert json.loads((run / "eval.json").read_text())["meta"]["episodes"] == 2
    commands = (run / "command.txt").read_text().splitlines()
    assert len(commands) == 2
    assert "--resume" in commands[1]


# -- (c) Ctrl-C ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_final_and_exits_130(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "ctrlc"
    proc = start_cli(
        "train",
        ENV,
        *TINY_FLAGS,
        "--steps",
        "100000",
        "--runs-dir",
        tmp_path / "runs",
        "--run-name",
        "ctrlc",
        "--checkpoint-every",
        str(ROLLOUT),
        "--eval-every",
        "0",
    )
    wait_for(lambda: step_dir(run, ROLLOUT).is_dir(), proc, what="the first checkpoint")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=90)
    except Exception:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Ctrl-C" in err
    assert f"mbm-agent train {ENV} --resume {run}" in err

    newest = checkpoint_steps(run)[-1]
    assert ROLLOUT < newest < 100000
    assert f"Stopped at {newest} steps" in err
    state = json.loads((step_dir(run, newest) / "state.json").read_text())
    assert state["num_timesteps"] == newest
    for policy in ("final", "best"):
        assert (run / policy / "model.safetensors").is_file()
    assert not (run / "eval.json").exists()  # an interrupted run is not finalised
    final = load_file(str(run / "final" / "model.safetensors"))
    _assert_same_tensors(
        final, load_file(str(step_dir(run, newest) / "policy" / "model.safetensors"))
    )
    assert load_agent(run, "final").spec["env_id"] == ENV


# -- (b) corrupt checkpoints ---------------------------------------------------------------
def _build_checkpointed(runs_dir: Path) -> None:
    train_tiny(
        runs_dir,
        steps=3 * ROLLOUT,
        checkpoint_every=ROLLOUT,
        keep_checkpoints=3,
        run_name="ckpt",
        finalize=False,
    )


@pytest.fixture
def ckpt_run(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of a run with checkpoints at 128, 256 and 384 steps."""
    shared = shared_path(tmp_path_factory, "ckpt-run", _build_checkpointed) / "ckpt"
    run = copy_tree(shared, tmp_path / "ckpt")
    assert checkpoint_steps(run) == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _edit_state(ckpt: Path, **changes: Any) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    state.update(changes)
    (ckpt / "state.json").write_text(json.dumps(state))


def _reshape_a_moment(ckpt: Path) -> None:
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    name = next(n for n in tensors if n.endswith(".exp_avg"))
    tensors[name] = torch.zeros(3, 3)
    atomic_save_tensors(ckpt / "optimizer.safetensors", tensors)


CORRUPTIONS = {
    "truncated-weights": lambda c: _truncate(c / "policy" / "model.safetensors"),
    "truncated-optimizer": lambda c: _truncate(c / "optimizer.safetensors"),
    "corrupt-state": lambda c: (c / "state.json").write_text("{"),
    "missing-optimizer-json": lambda c: (c / "optimizer.json").unlink(),
    "state-field-of-the-wrong-type": lambda c: _edit_state(c, num_timesteps="abc"),
    "state-not-matching-its-name": lambda c: _edit_state(c, num_timesteps=7),
    "optimizer-moment-of-the-wrong-shape": _reshape_a_moment,
    "optimizer-json-not-fitting": lambda c: (c / "optimizer.json").write_text(
        json.dumps({"param_groups": "abc"})
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
    corruption: str, ckpt_run: Path
) -> None:
    newest = step_dir(ckpt_run, 3 * ROLLOUT)
    CORRUPTIONS[corruption](newest)
    before = _snapshot(ckpt_run / "checkpoints")
    model = _model_for(ckpt_run)
    with pytest.warns(UserWarning, match=newest.name):
        state = latest_checkpoint(ckpt_run, model)
    assert state is not None
    assert state.num_timesteps == model.num_timesteps == 2 * ROLLOUT
    previous = step_dir(ckpt_run, 2 * ROLLOUT)
    _assert_same_tensors(
        model.policy.state_dict(), load_file(str(previous / "policy" / "model.safetensors"))
    )
    _assert_same_tensors(
        _optimizer_tensors(model), load_file(str(previous / "optimizer.safetensors"))
    )
    # The attempt deletes and rewrites nothing: the corrupt one stays for inspection.
    assert _snapshot(ckpt_run / "checkpoints") == before


@pytest.mark.slow
def test_resume_skips_a_corrupt_checkpoint(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _truncate(step_dir(ckpt_run, 3 * ROLLOUT) / "policy" / "model.safetensors")
    n_rows = len(read_metrics(ckpt_run))
    with pytest.warns(UserWarning, match="Skipping unreadable checkpoint"):
        rc = main(["train", ENV, "--resume", str(ckpt_run), "--steps", "512", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = read_metrics(ckpt_run)
    assert len(rows) < n_rows + 2  # rows past the restart checkpoint (256) were dropped
    steps = rollout_steps(rows)
    assert steps == sorted(steps) and steps[-2:] == [384, 512]  # no step logged twice
    assert checkpoint_steps(ckpt_run) == [256, 384, 512]  # keep_checkpoints=3
    model = _model_for(ckpt_run)
    assert load_checkpoint(step_dir(ckpt_run, 384), model).num_timesteps == 384  # rewritten


def test_all_checkpoints_corrupt_is_a_clear_error(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in checkpoint_steps(ckpt_run):
        _truncate(step_dir(ckpt_run, step) / "policy" / "model.safetensors")
    before = _snapshot(ckpt_run / "checkpoints")
    model = _model_for(ckpt_run)
    with pytest.warns(UserWarning), pytest.raises(ModelFileError) as exc:
        latest_checkpoint(ckpt_run, model)
    message = str(exc.value)
    assert "No readable checkpoint" in message
    for step in checkpoint_steps(ckpt_run):
        assert step_dir(ckpt_run, step).name in message
    assert _snapshot(ckpt_run / "checkpoints") == before

    with pytest.warns(UserWarning):
        assert main(["train", ENV, "--resume", str(ckpt_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbm-agent train: error: No readable checkpoint")
    assert _snapshot(ckpt_run / "checkpoints") == before


def test_resume_errors(ckpt_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", ENV, "--resume", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["train", "mbm/FindSound-v0", "--resume", str(ckpt_run)]) == 2
    err = capsys.readouterr().err
    assert ENV in err and "mbm/FindSound-v0" in err
    (ckpt_run / "config.json").unlink()
    assert main(["train", ENV, "--resume", str(ckpt_run)]) == 2
    assert "config.json" in capsys.readouterr().err


# -- (d) atomic writes ------------------------------------------------------------------
def _fail(*args: Any, **kwargs: Any) -> Any:
    raise OSError("simulated failure (disk full)")


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_atomic_write_failure_keeps_the_previous_file(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "config.json"
    atomic_write_text(target, '{"steps": 1}')
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, where, _fail)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, '{"steps": 2}')
    monkeypatch.undo()
    assert target.read_text() == '{"steps": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


class _HalfWriter:
    """Wraps a file: writes half of what it is given, then fails (a full disk)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError("simulated failure (disk full) after a partial write")


def test_atomic_write_creates_missing_folders(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"\x00\x01"


def test_atomic_tensor_save_failure_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "optimizer.safetensors"
    atomic_save_tensors(target, {"a": torch.ones(3)})
    monkeypatch.setattr(os, "replace", _fail)
    with pytest.raises(OSError, match="simulated"):
        atomic_save_tensors(target, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_file(str(target))["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("step", ["move-old-aside", "move-new-in"])
def test_failed_policy_save_keeps_the_previous_policy(
    step: str, ckpt_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = ckpt_run / "final"
    before = _snapshot(final)
    agent = load_agent(ckpt_run, "final")
    with torch.no_grad():
        for p in agent.policy.parameters():
            p.add_(1.0)
    real_replace = os.replace

    def flaky(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        src = Path(src)
        if src.is_dir():
            moving_new_in = src.name.endswith(".tmp")
            if moving_new_in == (step == "move-new-in"):
                raise OSError("simulated failure (disk full)")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        save_policy(agent.policy, agent.spec, final, agent.vocabulary)
    monkeypatch.undo()
    assert _snapshot(final) == before, "the previous policy was damaged"
    assert not _leftovers(ckpt_run), _leftovers(ckpt_run)
    load_agent(ckpt_run, "final")


def test_failed_checkpoint_write_leaves_no_partial_checkpoint(
    ckpt_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_run_config(ckpt_run)
    model = _model_for(ckpt_run)
    state = load_checkpoint(step_dir(ckpt_run, 3 * ROLLOUT), model)
    model.num_timesteps = 4 * ROLLOUT
    before = checkpoint_steps(ckpt_run)
    monkeypatch.setattr("mbm_agent.training.checkpoints.atomic_save_tensors", _fail)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(ckpt_run, model, cfg, None, state)
    assert checkpoint_steps(ckpt_run) == before  # nothing half-written, nothing pruned
    assert not _leftovers(ckpt_run)
    monkeypatch.undo()
    path = save_checkpoint(ckpt_run, model, cfg, None, state)
    assert path == step_dir(ckpt_run, 4 * ROLLOUT)
    assert checkpoint_steps(ckpt_run) == [2 * ROLLOUT, 3 * ROLLOUT, 4 * ROLLOUT]


# -- (e) nothing lost: pruning, best/, resume without a checkpoint, moved-aside folders -------
def _run_snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but the TensorBoard logs and the lock."""
    return {
        name: data
        for name, data in _snapshot(run).items()
        if not name.startswith("tb/") and name != ".lock"
    }


def test_pruning_keeps_the_newest_readable_checkpoints_by_step(
    ckpt_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ckpt_run / "checkpoints"
    (root / "step-zzz").mkdir()  # not a checkpoint name
    (root / "step-zzz" / "notes.txt").write_text("mine")
    truncated = step_dir(ckpt_run, 32 * ROLLOUT)  # a name above every real step, unreadable
    copy_tree(step_dir(ckpt_run, 3 * ROLLOUT), truncated)
    _truncate(truncated / "policy" / "model.safetensors")
    cfg = load_run_config(ckpt_run)
    cfg.keep_checkpoints = 2
    model = _model_for(ckpt_run)
    state = load_checkpoint(step_dir(ckpt_run, 3 * ROLLOUT), model)
    model.num_timesteps = 4 * ROLLOUT
    with pytest.warns(UserWarning) as caught:
        written = save_checkpoint(ckpt_run, model, cfg, None, state)
    assert written == step_dir(ckpt_run, 4 * ROLLOUT)
    # The newest two readable ones by step number, the one just written among them.
    assert written.is_dir() and step_dir(ckpt_run, 3 * ROLLOUT).is_dir()
    assert not step_dir(ckpt_run, ROLLOUT).exists()
    assert not step_dir(ckpt_run, 2 * ROLLOUT).exists()
    # What does not parse or read is left alone, with a warning naming it.
    assert (root / "step-zzz" / "notes.txt").read_text() == "mine"
    assert truncated.is_dir()
    messages = " ".join(str(w.message) for w in caught)
    assert "step-zzz" in messages and truncated.name in messages
    # Resuming skips both and continues from the newest readable checkpoint.
    with pytest.warns(UserWarning, match="Skipping unreadable checkpoint"):
        loaded = latest_checkpoint(ckpt_run, _model_for(ckpt_run))
    assert loaded is not None and loaded.num_timesteps == 4 * ROLLOUT


def test_resume_of_a_never_evaluated_run_renews_best_and_counts_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without periodic evaluations best/ is the final policy, after every session; the
    episode count of metrics.csv goes on from where the first session stopped."""
    runs = tmp_path / "runs"
    argv = [*TINY_FLAGS, "--runs-dir", str(runs), "--run-name", "noeval", "--eval-every", "0"]
    argv += ["--checkpoint-every", str(ROLLOUT), "--no-progress"]
    assert main(["train", ENV, *argv]) == 0, capsys.readouterr().err
    run = runs / "noeval"
    first = _snapshot(run / "best")
    ended = int(read_metrics(run)[-1]["episodes"])
    for extra in (["--stochastic"], ["--which", "final"]):
        assert main(["eval", str(run), "--episodes", "2", *extra]) == 0
    sampled = (run / "eval-sampled.json").read_bytes()
    assert main(["train", ENV, "--resume", str(run), "--steps", str(4 * ROLLOUT)]) == 0
    assert _snapshot(run / "best") == _snapshot(run / "final") != first
    # the sampled report described the earlier best: set aside, not left beside the new one
    assert not (run / "eval-sampled.json").exists()
    earlier = run / "reports-of-earlier-best" / "1"
    assert (earlier / "eval-sampled.json").is_file()
    # a later replacement gets the next free number, gaps or not
    (run / "eval-sampled.json").write_bytes(sampled)
    shutil.copytree(earlier, earlier.with_name("3"))
    assert set_aside_reports(run) == [earlier.with_name("4") / "eval-sampled.json"]
    assert (earlier / "eval-sampled.json").read_bytes() == sampled
    assert (earlier / "eval-sampled.md").is_file()
    assert (run / "eval-final.json").is_file()  # another policy's report stays
    # metrics.csv's episode count goes on from the checkpoint's (it restarted at 0)
    counts = [int(r["episodes"]) for r in read_metrics(run)]
    assert ended > 0 and counts == sorted(counts) and counts[-1] > ended


def test_resume_never_replaces_a_better_best(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A crash after best/ improved and before the next checkpoint: the checkpoint
    # knows no evaluation (best_eval null), best/ knows its score.
    newest = step_dir(ckpt_run, 3 * ROLLOUT) / "state.json"
    state = json.loads(newest.read_text())
    state["best_eval"] = None
    newest.write_text(json.dumps(state))
    (ckpt_run / "best" / "score.json").write_text(json.dumps({"score": 5.0}))
    best = _snapshot(ckpt_run / "best")
    argv = ["train", ENV, "--resume", str(ckpt_run), "--steps", str(4 * ROLLOUT)]
    cfg = json.loads((ckpt_run / "config.json").read_text())
    cfg["eval_every"] = ROLLOUT  # evaluate after the resume (a saved-config edit)
    (ckpt_run / "config.json").write_text(json.dumps(cfg))
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    rows = read_metrics(ckpt_run)
    assert any(r["eval_return"] for r in rows)  # an evaluation ran, and lost to best/
    assert _snapshot(ckpt_run / "best") == best


def test_resume_without_a_readable_checkpoint_changes_nothing(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in checkpoint_steps(ckpt_run):
        (step_dir(ckpt_run, step) / "state.json").write_text('{"format": "mbm-agent/checkpoint"}')
    before = _run_snapshot(ckpt_run)
    with pytest.warns(UserWarning, match="Skipping unreadable checkpoint"):
        assert main(["train", ENV, "--resume", str(ckpt_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "No readable checkpoint" in err and "num_timesteps" in err
    assert _run_snapshot(ckpt_run) == before  # metrics.csv, command.txt, best/, final/ too


def test_resume_of_a_trained_run_without_checkpoints_is_refused(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(ckpt_run / "checkpoints")
    before = _run_snapshot(ckpt_run)
    assert main(["train", ENV, "--resume", str(ckpt_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "--init-from" in err
    assert _run_snapshot(ckpt_run) == before


def test_resume_before_the_first_checkpoint_trains_again_and_says_so(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("checkpoints", "final", "best"):
        shutil.rmtree(ckpt_run / name)
    n_rows = len(read_metrics(ckpt_run))
    assert n_rows > 0
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        assert main(["train", ENV, "--resume", str(ckpt_run), "--no-progress"]) == 0
    assert rollout_steps(read_metrics(ckpt_run)) == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
    capsys.readouterr()


def test_a_policy_left_aside_by_a_kill_is_found_and_put_back(ckpt_run: Path) -> None:
    best = _snapshot(ckpt_run / "best")
    # A kill between the two renames that replace best/: only the old copy remains.
    os.replace(ckpt_run / "best", ckpt_run / ".best.old")
    (ckpt_run / ".best.abc123.tmp").mkdir()  # the new one, half written
    (ckpt_run / "checkpoints" / ".step-000000000512.x.tmp").mkdir()
    with pytest.warns(UserWarning, match="using the copy"):
        agent = load_agent(ckpt_run, "best")  # what `mbm-agent eval RUN` loads
    assert agent.spec["env_id"] == ENV
    with pytest.warns(UserWarning, match="Restored"):
        removed = clean_stale(ckpt_run)
    assert removed == [".best.abc123.tmp"]
    assert clean_stale(ckpt_run / "checkpoints") == [".step-000000000512.x.tmp"]
    assert _snapshot(ckpt_run / "best") == best
    assert not _leftovers(ckpt_run)
    # A save that finds only the moved-aside copy puts it back first, then replaces it.
    os.replace(ckpt_run / "best", ckpt_run / ".best.old")
    final = load_agent(ckpt_run, "final")
    with pytest.warns(UserWarning, match="Restored"):
        save_policy(final.policy, final.spec, ckpt_run / "best", final.vocabulary)
    assert not _leftovers(ckpt_run)
    _assert_same_tensors(
        load_file(str(ckpt_run / "best" / "model.safetensors")),
        load_file(str(ckpt_run / "final" / "model.safetensors")),
    )


# -- (f) one writer per run folder ------------------------------------------------------------
def test_a_run_folder_being_written_is_refused(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _run_snapshot(ckpt_run)
    with RunLock(ckpt_run):
        assert (ckpt_run / ".lock").read_text().split()[0] == str(os.getpid())
        assert main(["train", ENV, "--resume", str(ckpt_run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"process {os.getpid()}" in err and "one writer" in err
        with pytest.raises(RunLockedError):
            RunLock(ckpt_run).acquire()
    assert not (ckpt_run / ".lock").exists()
    assert _run_snapshot(ckpt_run) == before


def test_a_stale_lock_of_a_dead_process_is_taken_over(ckpt_run: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    (ckpt_run / ".lock").write_text(f"{pid} somehost\n")
    with pytest.warns(UserWarning, match=f"taking over the lock of process {pid}"):
        lock = RunLock(ckpt_run)
        lock.acquire()
    try:
        assert (ckpt_run / ".lock").read_text().split()[0] == str(os.getpid())
    finally:
        lock.release()


def test_two_trainings_with_one_name_one_fails_cleanly(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    procs = [
        start_cli("train", ENV, *TINY_FLAGS, "--runs-dir", runs, "--run-name", "same")
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    err = next(e for (_, e), p in zip(results, procs, strict=True) if p.returncode == 2)
    assert "Traceback" not in err
    assert "already exists" in err or "being written" in err
    assert len(rollout_steps(read_metrics(runs / "same"))) == 2  # one writer's rows only


def test_resume_drops_malformed_metrics_rows_with_a_warning(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = ckpt_run / "metrics.csv"
    with metrics.open("a") as fh:
        fh.write("abc,1,2,3,4,5,6,,\n")  # garbage
        fh.write("512,1.0,2")  # a row cut by a crash
    with pytest.warns(UserWarning, match=r"metrics\.csv, line \d+: dropping a malformed row"):
        rc = main(["train", ENV, "--resume", str(ckpt_run), "--steps", "512", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    steps = rollout_steps(read_metrics(ckpt_run))
    assert steps == sorted(set(steps)) and steps[-1] == 512


def _report(run: Path, name: str, meta: dict[str, Any]) -> None:
    (run / f"{name}.json").write_text(json.dumps({"meta": meta}))
    (run / f"{name}.md").write_text(name)


def test_set_aside_matches_reports_to_best_by_their_weights_digest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_bytes(b"now")
    now = weights_digest(run / "best")
    (run / "old").mkdir()
    (run / "old" / "model.safetensors").write_bytes(b"before")
    before = weights_digest(run / "old")
    assert now is not None and before is not None and now != before
    _report(run, "eval", {"policy": "best", "policy_digest": now})
    _report(run, "eval-sampled", {"policy": "best", "policy_digest": before})
    _report(run, "eval-drop-text", {"policy": "best"})  # written before reports had digests
    _report(run, "eval-final", {"policy": "final", "policy_digest": before})
    # Best not known to have changed: only what names other weights goes.
    moved = set_aside_reports(run, main_report=True, changed=False)
    assert [p.name for p in moved] == ["eval-sampled.json"]
    assert (run / "reports-of-earlier-best" / "1" / "eval-sampled.md").read_text() == "eval-sampled"
    assert (run / "eval.json").is_file() and (run / "eval-drop-text.json").is_file()
    # Known to have changed: a report without a digest goes too; best's own never does.
    moved = set_aside_reports(run, main_report=True, changed=True)
    assert [p.name for p in moved] == ["eval-drop-text.json"]
    assert (run / "eval.json").is_file() and (run / "eval-final.json").is_file()


def test_resume_sets_aside_the_reports_a_killed_session_left_beside_a_new_best(
    ckpt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session killed between replacing best/ and its end left the reports of the
    earlier best beside the new one; the next session finds them by their digest."""
    for extra in ([], ["--stochastic"], ["--which", "final"]):
        assert main(["eval", str(ckpt_run), "--episodes", "2", *extra]) == 0
    earlier_best = weights_digest(ckpt_run / "best")
    report = json.loads((ckpt_run / "eval-sampled.json").read_text())
    assert report["meta"]["policy_digest"] == earlier_best
    sampled = (ckpt_run / "eval-sampled.json").read_bytes()
    # The killed session's new best/: other weights, the old reports still beside them.
    weights = ckpt_run / "best" / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    atomic_save_tensors(weights, tensors)
    capsys.readouterr()
    argv = ["train", ENV, "--resume", str(ckpt_run), "--steps", str(4 * ROLLOUT), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "report(s) of an earlier best policy moved" in capsys.readouterr().err
    earlier = ckpt_run / "reports-of-earlier-best" / "1"
    assert (earlier / "eval-sampled.json").read_bytes() == sampled
    assert (earlier / "eval.json").is_file() and (earlier / "eval-sampled.md").is_file()
    assert (ckpt_run / "eval-final.json").is_file()  # another policy's report stays
    # The session's own final evaluation names the weights best/ holds now.
    fresh = json.loads((ckpt_run / "eval.json").read_text())["meta"]
    assert fresh["policy_digest"] == weights_digest(ckpt_run / "best") != earlier_best
