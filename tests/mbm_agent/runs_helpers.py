"""Helpers for the trainer, CLI, storage and fault tests: tiny budgets, the CLI, shared runs.

Imported by ``test_trainer.py``, ``test_cli.py``, ``test_storage.py`` and
``test_faults.py`` (the test folder is on ``sys.path`` under pytest's default
import mode). Every budget here is sized for a shared 2-core machine.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ENV = "mbm/GoToObject-v0"
BABYAI = "BabyAI-GoToObj-v0"

#: One PPO rollout of the tiny budget: n_envs * n_steps environment steps.
ROLLOUT = 4 * 32

#: Command-line flags of a tiny training run (seconds, not minutes).
TINY_FLAGS: tuple[str, ...] = (
    "--steps",
    "256",
    "--n-envs",
    "4",
    "--set",
    "algo_kwargs.n_steps=32",
    "--set",
    "algo_kwargs.batch_size=64",
    "--set",
    "final_eval_episodes=4",
    "--eval-episodes",
    "4",
    "--set",
    "gif_episodes=1",
    "--no-progress",
)

#: The same budget as config overrides, for in-process training.
TINY: dict[str, Any] = {
    "steps": 256,
    "n_envs": 4,
    "algo_kwargs": {"n_steps": 32, "batch_size": 64},
    "eval_every": 0,
    "eval_episodes": 4,
    "final_eval_episodes": 4,
    "checkpoint_every": 0,
    "gif_episodes": 0,
}

POLICY_FILES = ("model.json", "model.safetensors", "vocabulary.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = (b"GIF87a", b"GIF89a")


def env_fusion(env_id: str = ENV) -> str:
    """The fusion mode a run of ``env_id`` gets without ``--fusion``.

    Resolved as ``mbm-agent train`` resolves it (default.yaml, the family's and the
    env's own YAML), so tests follow the per-env defaults instead of copying them.
    """
    from mbm_agent.training.config import resolve_config

    return resolve_config(env_id).encoder.fusion


def cli_command() -> list[str]:
    """The ``mbm-agent`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "mbm-agent"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "mbm_agent.cli"]


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses.

    One torch/OpenMP thread: on a shared 2-core machine a second intra-op thread
    spins against the other test worker and makes training ~10x slower.
    """
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def run_cli(
    *args: str | Path, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``mbm-agent ARGS`` to completion and capture its output."""
    return subprocess.run(
        [*cli_command(), *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``mbm-agent ARGS`` in the background (stdout/stderr captured)."""
    return subprocess.Popen(
        [*cli_command(), *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    predicate: Callable[[], bool],
    proc: subprocess.Popen[str],
    *,
    timeout: float = 120,
    what: str = "the condition",
) -> None:
    """Poll ``predicate`` until true; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"training exited (rc={proc.returncode}) before {what}:\n{out}\n{err}"
            )
        if time.monotonic() > deadline:
            kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process this test started (and reap it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def step_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint written at ``step``."""
    return run_dir / "checkpoints" / f"step-{step:012d}"


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a run folder, ascending."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-", 1)[1]) for p in root.glob("step-*") if p.is_dir())


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``metrics.csv``."""
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def rollout_steps(rows: Sequence[dict[str, str]]) -> list[int]:
    """Timesteps of the per-rollout rows (rows without evaluation columns)."""
    return [int(r["timesteps"]) for r in rows if not r["eval_return"]]


def tiny_config(env_id: str = ENV, **overrides: Any) -> Any:
    """A resolved :class:`TrainConfig` with the tiny budget and ``overrides`` on top."""
    from mbm_agent.training.config import merge, resolve_config

    return resolve_config(env_id, overrides=merge(dict(TINY), overrides))


def train_tiny(
    runs_dir: Path, env_id: str = ENV, *, finalize: bool = True, **overrides: Any
) -> Any:
    """Train in-process with the tiny budget; returns the :class:`TrainResult`."""
    from mbm_agent.training.trainer import train

    cfg = tiny_config(env_id, runs_dir=str(runs_dir), **overrides)
    return train(cfg, command=["pytest"], progress=False, finalize=finalize)


def shared_path(tmp_path_factory: Any, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once per test session, even across pytest-xdist workers.

    ``build(path)`` fills ``path``; other workers wait on a file lock and reuse it.
    Tests that modify what they get must copy it first (:func:`copy_tree`).
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / f"shared-{name}"
    done = root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            build(path)
            done.touch()
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a shared run folder."""
    shutil.copytree(src, dst)
    return dst


def only_run(runs_dir: Path) -> Path:
    """The single run folder under ``runs_dir``."""
    runs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder in {runs_dir}, found {runs}"
    return runs[0]


def evil_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker`` (what a malicious model file would do)."""
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    return pickle.dumps(Payload(), protocol=2)


def evil_zip(marker: Path, path: Path) -> None:
    """A zip shaped like SB3's ``.zip`` / torch's ``.pth`` whose pickles hold the payload."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name in ("data", "policy.pth", "pytorch_variables.pth", "archive/data.pkl"):
            zf.writestr(name, evil_pickle(marker))


def build_cli_run(runs_dir: Path) -> None:
    """``mbm-agent train`` (a subprocess) of the tiny budget into ``runs_dir``.

    Evaluates and checkpoints every rollout, so ``best/`` comes from a periodic
    evaluation and two checkpoints exist.
    """
    result = run_cli(
        "train",
        ENV,
        *TINY_FLAGS,
        "--runs-dir",
        runs_dir,
        "--eval-every",
        str(ROLLOUT),
        "--checkpoint-every",
        str(ROLLOUT),
        "--seed",
        "0",
    )
    assert result.returncode == 0, f"mbm-agent train failed:\n{result.stdout}\n{result.stderr}"


def cli_run(tmp_path_factory: Any) -> Path:
    """The shared run folder of :func:`build_cli_run` (copy it before changing it)."""
    return only_run(shared_path(tmp_path_factory, "cli-run", build_cli_run))
