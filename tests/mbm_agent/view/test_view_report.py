"""``mbm-agent report RUN --html``: one self-contained file with curves, evaluations, episodes."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import AGENTS, ROOT

from mbm_agent.cli import main
from mbm_agent.view.report import evaluations_html

REFERENCE_RUN = ROOT / "runs" / "reference" / "runs" / "FindSound-concat-s0"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder: a reference grid run's metrics and evaluations, and the reference
    FindSound policy as its best/."""
    run = tmp_path / "FindSound-run"
    run.mkdir()
    for path in REFERENCE_RUN.iterdir():
        if path.suffix in (".csv", ".json"):
            shutil.copy(path, run / path.name)
    shutil.copytree(AGENTS / "FindSound", run / "best")
    return run


def test_report_is_one_self_contained_file_with_curves_table_and_playable_episodes(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir), "--html", "--episodes", "2"]) == 0
    out = run_dir / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    # Nothing is fetched: no external src/href, every image and sound inline.
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<link" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert text.count("<svg") >= 2  # return and success curves
    assert "eval-drop-audio" in text and "[95% CI, Wilson]" in text and "0.985" in text
    assert text.count('class="episode"') == 2
    wavs = re.findall(r'<audio controls src="data:audio/wav;base64,([^"]+)"', text)
    assert len(wavs) == 2
    pcm = base64.b64decode(wavs[0])[44:]
    assert (
        max(
            abs(int.from_bytes(pcm[i : i + 2], "little", signed=True))
            for i in range(0, len(pcm), 2)
        )
        > 300
    )
    assert not list(run_dir.glob(".*.tmp"))  # written atomically, nothing left over


def test_report_of_a_policy_folder_and_without_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "go.html"
    assert (
        main(["report", str(AGENTS / "GoToObject"), "--html", "--out", str(out), "--episodes", "1"])
        == 0
    )
    text = out.read_text(encoding="utf-8")
    assert "No metrics.csv" in text and 'class="word"' in text and "<audio" not in text
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["report", str(bare), "--html", "--episodes", "0"]) == 0
    assert "No evaluation yet" in (bare / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()


def test_report_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope"), "--html"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["report", str(bare), "--html"]) == 2
    assert "--episodes 0" in capsys.readouterr().err
    assert main(["report", str(bare)]) == 2
    assert "pass --html" in capsys.readouterr().err


def test_report_out_never_overwrites_a_run_file_and_a_policy_reports_to_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(AGENTS / "GoToObject", run / "best")
    (run / "config.json").write_text("{}")
    model = (run / "best" / "model.json").read_bytes()
    for out in (run / "best" / "model.json", run / "notes.txt"):
        assert main(["report", str(run), "--html", "--episodes", "0", "--out", str(out)]) == 2
        assert "does not end in .html" in capsys.readouterr().err
    assert (run / "best" / "model.json").read_bytes() == model
    assert not (run / "notes.txt").exists()
    assert main(["report", str(run / "best"), "--html", "--episodes", "0"]) == 0
    assert (run / "report.html").is_file() and not (run / "best" / "report.html").exists()
    shutil.copytree(run / "best", run / "final")
    assert main(["report", str(run / "final"), "--html", "--episodes", "0"]) == 0
    assert (run / "report-final.html").is_file()  # beside the best policy's, not over it
    shares = tmp_path / "shares"
    shares.mkdir()
    assert main(["report", str(run), "--html", "--episodes", "0", "--out", str(shares)]) == 0
    assert (shares / "report.html").is_file()
    capsys.readouterr()


def _report(env_id: str, env_kwargs: dict[str, int], random_success: float) -> str:
    """A minimal evaluation report: what the evaluations table reads."""
    return json.dumps(
        {
            "success": {"successes": 1, "n": 2, "rate": 0.5, "ci": [0.1, 0.9]},
            "returns": {"mean": 0.4, "iqm": 0.4},
            "lengths": {"mean": 9.0},
            "meta": {"env_id": env_id, "env_kwargs": env_kwargs, "deterministic": True},
            "baselines": {"random": {"mean_return": 0.1, "success_rate": random_success}},
        }
    )


def test_evaluations_table_names_each_report_s_env_and_keeps_each_env_s_baselines(
    tmp_path: Path,
) -> None:
    """`eval --env` / `--set` reports played another env: the table says which, and each
    env's baselines are shown, not the first report's for all."""
    (tmp_path / "eval.json").write_text(_report("mbm/GoToObject-v1", {}, 0.25))
    (tmp_path / "eval-on-mbm_GoToObject-v0.json").write_text(
        _report("mbm/GoToObject-v0", {"n_objects": 2}, 0.333)
    )
    text = evaluations_html(tmp_path)
    assert "<th>env</th>" in text
    assert "<td>mbm/GoToObject-v1</td>" in text
    assert "<td>mbm/GoToObject-v0 (n_objects=2)</td>" in text
    assert "0.250" in text and "0.333" in text  # both envs' random baselines
