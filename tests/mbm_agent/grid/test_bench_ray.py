"""``mbm-agent bench`` on Ray Tune: a 4-trial grid on a local Ray survives a killed worker.

Also: without Ray the grid runs sequentially, and asking for Ray names the extra.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mbm_agent import load_agent
from mbm_agent.cli import main
from mbm_agent.grid.ray import pid_file
from mbm_agent.grid.run import resolve_backend, run_grid
from mbm_agent.grid.spec import build_grid
from mbm_agent.plots import read_metrics

PROBE = "mbm/ModalityProbe-v0"
STEPS = 3072  # with --quick's 4 envs x 32 steps per rollout: 24 rollouts, a checkpoint every 256
GRID = ["--games", PROBE, "--fusions", "concat", "film", "--seeds", "0", "1"]
GRID += ["--no-ablations", "--no-baseline", "--quick", "--steps", str(STEPS)]
NAMES = [f"ModalityProbe-{f}-s{s}" for f in ("concat", "film") for s in (0, 1)]
VICTIM = "ModalityProbe-film-s1"


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import ray`` fail as if the extra were not installed."""
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # type: ignore[arg-type]


def test_ray_requests_without_ray_name_the_extra(
    no_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kwargs in ({"ray_address": "ray://head:10001"}, {"backend": "ray"}):
        with pytest.raises(ImportError, match=r"pip install 'mbm-agent\[ray\]'"):
            resolve_backend(**{"backend": "auto", **kwargs})
    assert resolve_backend("auto", pending=4) == "sequential"

    out = tmp_path / "grid"
    assert main(["bench", *GRID, "--out", str(out), "--ray-address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--ray-address" in err and "mbm-agent[ray]" in err and "--backend sequential" in err
    assert not (out / "runs").exists()  # nothing started


def test_without_ray_the_grid_runs_sequentially(no_ray: None, tmp_path: Path) -> None:
    cells = build_grid([PROBE], ["concat"], [0, 1], ablations=False, baseline=False)
    log: list[str] = []
    summary = run_grid(cells, tmp_path, quick=True, log=log.append)
    assert "sequential" in log[-1]
    assert [r["seeds"] for r in summary["rows"]] == [[0, 1]]
    for cell in cells:
        assert (tmp_path / "runs" / cell.name / "eval.json").is_file()


@pytest.mark.parametrize(
    ("backend", "address", "cpus", "words"),
    [
        ("threads", None, 1, ["'threads'", "sequential"]),
        ("sequential", "auto", 1, ["--ray-address", "--backend sequential"]),
        ("auto", None, 0, ["cpus_per_trial", "0"]),
    ],
)
def test_bad_backend_settings(
    backend: str, address: str | None, cpus: int, words: list[str]
) -> None:
    with pytest.raises(ValueError) as exc:
        resolve_backend(backend, address, cpus)
    for word in words:
        assert word in str(exc.value)


def test_auto_backend_needs_two_runs_and_ray() -> None:
    pytest.importorskip("ray.tune")
    assert resolve_backend("auto", pending=1) == "sequential"
    expect = "ray" if (os.cpu_count() or 1) >= 2 else "sequential"
    assert resolve_backend("auto", pending=4) == expect
    assert resolve_backend("sequential", pending=4) == "sequential"


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and the Ray daemons of its process group, and wait until they are gone.

    Otherwise a daemon outliving a failed test could still write into Ray's temp dir
    after the test's ``ray_temp_dir`` is removed.
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for _ in range(200):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)


def test_grid_on_local_ray_survives_a_killed_worker(tmp_path: Path, ray_temp_dir: Path) -> None:
    """4 trials, 2 at a time; one trial's worker is SIGKILLed mid-training after a checkpoint.

    Tune retries it in a new worker, which resumes from the run's checkpoint;
    every run folder ends complete and ``mbm-agent compare`` reads them.
    """
    pytest.importorskip("ray.tune")
    out = tmp_path / "grid"
    # The local Ray the command starts keeps its files under this test session's folder.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_temp_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbm_agent.cli", "bench", *GRID, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: Ray's daemons join it
    )
    victim_run = out / "runs" / VICTIM
    killed_pid = None
    killed_at_step = -1
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ckpts = sorted((victim_run / "checkpoints").glob("step-*"))
            pid = pid_file(out, VICTIM)
            if ckpts and pid.is_file() and not (victim_run / "eval.json").exists():
                killed_pid = int(pid.read_text())
                killed_at_step = max(int(p.name.split("-")[1]) for p in ckpts)
                os.kill(killed_pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _stop_group(proc)
    assert killed_pid is not None, f"never caught {VICTIM} mid-training:\n{output}"
    assert proc.returncode == 0, output
    assert "on a local Ray" in output
    assert f"{VICTIM}: its worker failed; retrying" in output, output
    assert int(pid_file(out, VICTIM).read_text()) != killed_pid  # ran again in a new worker
    assert killed_at_step < STEPS

    for name in NAMES:
        run = out / "runs" / name
        report = json.loads((run / "eval.json").read_text())
        assert len(report["episodes"]["returns"]) > 0, name
        assert 0.0 <= report["success"]["rate"] <= 1.0, name
        assert (run / "eval-drop-image.json").is_file(), name
        metrics = read_metrics(run / "metrics.csv")
        steps = metrics["timesteps"]
        assert np.all(np.diff(steps) >= 0), f"{name}: metrics went back in steps (resume)"
        assert steps[-1] == STEPS, name
        agent = load_agent(run)
        assert agent.spec["env_id"] == PROBE
    # the resumed run kept the rows written before the kill (it did not start over)
    victim_rows = read_metrics(victim_run / "metrics.csv")["timesteps"]
    assert np.sum(victim_rows <= killed_at_step) >= 1

    summary = json.loads((out / "summary.json").read_text())
    assert sorted((r["variant"], r["seeds"]) for r in summary["rows"]) == [
        ("concat", [0, 1]),
        ("film", [0, 1]),
    ]
    cmp_out = tmp_path / "compare"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbm_agent.cli",
            "compare",
            *(str(out / "runs" / n) for n in NAMES),
            "--out",
            str(cmp_out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    table = (cmp_out / "compare.md").read_text()
    assert "concat" in table and "film" in table
