"""Comparing run folders, and the plot writers."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbm_agent.compare import (
    MissingEvalError,
    NotARunError,
    compare_markdown,
    compare_plot,
    compare_runs,
)
from mbm_agent.evaluation import EpisodeResults, build_report, eval_seeds, write_report
from mbm_agent.plots import learning_curve, save_gif

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path, name: str, config: dict[str, Any], success_p: float, *, episodes: int = 20
) -> Path:
    """A run folder with config.json and an eval.json as `mbm-agent eval` writes it."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    successes = rng.random(episodes) < success_p
    returns = np.where(successes, rng.uniform(0.6, 1.0, episodes), 0.0)
    results = EpisodeResults(returns, np.full(episodes, 10), successes, eval_seeds(episodes))
    write_report(build_report(results, meta={"env_id": config.get("env_id", "?")}), run)
    return run


def cfg(algo: str, seed: int, env_id: str = "mbm/GoToObject-v0", **extra: Any) -> dict[str, Any]:
    return {"env_id": env_id, "algo": algo, "fusion": "concat", "seed": seed, **extra}


@pytest.fixture
def two_algos(tmp_path: Path) -> list[Path]:
    good = [make_run(tmp_path, f"ppo-{s}", cfg("ppo", s), 0.9) for s in range(4)]
    bad = [make_run(tmp_path, f"a2c-{s}", cfg("a2c", s), 0.15) for s in range(3)]
    return good + bad


def _poi(result: dict[str, Any], x: str, y: str, metric: str) -> float:
    for p in result["poi"]:
        if x in p["x"] and y in p["y"]:
            return p["metrics"][metric]["poi"]
        if y in p["x"] and x in p["y"]:
            return 1.0 - p["metrics"][metric]["poi"]
    raise AssertionError(f"no comparison of {x} and {y}")


def test_groups_seeds_and_ranks(two_algos: list[Path]) -> None:
    result = compare_runs(two_algos, n_boot=500)
    assert result["n_runs"] == 7
    names = [g["name"] for g in result["groups"]]
    assert names == [
        "env_id=mbm/GoToObject-v0, algo=a2c, fusion=concat",
        "env_id=mbm/GoToObject-v0, algo=ppo, fusion=concat",
    ]
    a2c, ppo = result["groups"]
    assert (a2c["n_runs"], ppo["n_runs"]) == (3, 4)
    assert (a2c["label"], ppo["label"]) == ("algo=a2c", "algo=ppo")
    assert result["shared_config"] == {"env_id": "mbm/GoToObject-v0", "fusion": "concat"}
    assert sorted(ppo["seeds"]) == [0, 1, 2, 3]
    assert ppo["differing_keys"] == []
    success = ppo["metrics"]["success"]
    assert success["iqm_ci"][0] <= success["iqm"] <= success["iqm_ci"][1]
    assert success["iqm"] > 0.7 and a2c["metrics"]["success"]["iqm"] < 0.35
    assert _poi(result, "ppo", "a2c", "success") > 0.9
    assert _poi(result, "ppo", "a2c", "return") > 0.9
    json.loads(json.dumps(result, allow_nan=False))

    md = compare_markdown(result)
    assert "algo=ppo" in md and "algo=a2c" in md
    assert f"{success['iqm']:.3f}" in md
    assert "Probability of improvement" in md


def test_missing_keys_and_differing_config(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "a", {"env_id": "mbm/GoToObject-v0", "seed": 0, "lr": 1e-3}, 0.5),
        make_run(tmp_path, "b", {"env_id": "mbm/GoToObject-v0", "seed": 1, "lr": 3e-4}, 0.5),
    ]
    result = compare_runs(runs, n_boot=200)
    (group,) = result["groups"]
    assert group["config"] == {"env_id": "mbm/GoToObject-v0", "algo": "?", "fusion": "?"}
    assert group["differing_keys"] == ["lr"]
    assert result["poi"] == []
    assert "lr" in compare_markdown(result)


def test_strata_across_envs(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, f"{algo}-{env[4:8]}-{s}", cfg(algo, s, env), p)
        for algo, p in (("ppo", 0.9), ("a2c", 0.1))
        for env in ("mbm/GoToObject-v0", "mbm/FindSound-v0")
        for s in range(2)
    ]
    by_env = compare_runs(runs, n_boot=200)
    assert len(by_env["groups"]) == 4
    assert len(by_env["poi"]) == 2  # only groups of the same env are compared
    pooled = compare_runs(runs, group_by=("algo",), n_boot=200)
    assert [g["n_runs"] for g in pooled["groups"]] == [4, 4]
    (pair,) = pooled["poi"]
    assert pair["envs"] == ["mbm/FindSound-v0", "mbm/GoToObject-v0"]
    assert _poi(pooled, "ppo", "a2c", "success") > 0.9


def test_single_run_group_has_no_interval(tmp_path: Path) -> None:
    result = compare_runs([make_run(tmp_path, "only", cfg("ppo", 0), 0.5)], n_boot=100)
    assert result["groups"][0]["metrics"]["success"]["iqm_ci"] is None
    assert "one run" in compare_markdown(result)


def test_bad_folders_raise_documented_errors(tmp_path: Path) -> None:
    with pytest.raises(NotARunError, match="not a folder"):
        compare_runs([tmp_path / "nope"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotARunError, match=r"empty is not a run folder.*config\.json"):
        compare_runs([empty])
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.json").write_text(json.dumps(cfg("ppo", 0)))
    with pytest.raises(
        MissingEvalError, match=r"no eval\.json; run `mbm-agent eval .*trained` first"
    ):
        compare_runs([trained])
    assert issubclass(MissingEvalError, FileNotFoundError)
    (trained / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        compare_runs([trained])
    (trained / "eval.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="per-episode"):
        compare_runs([trained])
    run = make_run(tmp_path, "ok", cfg("ppo", 0), 0.5)
    with pytest.raises(ValueError, match="listed twice"):
        compare_runs([run, run])
    with pytest.raises(ValueError, match="No run folders"):
        compare_runs([])


def test_compare_plot_writes_png(two_algos: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = compare_plot(compare_runs(two_algos, n_boot=200), tmp_path / "plots" / "compare.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_learning_curve_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    csv_path = tmp_path / "metrics.csv"
    rows = ["timesteps,mean_return,success_rate,eval_return,eval_success"]
    for i in range(1, 11):
        evals = f"{i / 10:.2f},{i / 10:.2f}" if i % 5 == 0 else ","
        rows.append(f"{i * 1000},{i / 12:.3f},{i / 11:.3f},{evals}")
    csv_path.write_text("\n".join(rows) + "\n")
    out = learning_curve(csv_path, tmp_path / "curve.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000

    minimal = tmp_path / "minimal.csv"
    minimal.write_text("timesteps,mean_return,success_rate\n100,0.1,0.0\n200,0.3,0.5\n")
    assert learning_curve(minimal, tmp_path / "minimal.png").stat().st_size > 1000

    bad = tmp_path / "bad.csv"
    bad.write_text("timesteps,reward\n1,2\n")
    with pytest.raises(ValueError, match=r"success_rate"):
        learning_curve(bad, tmp_path / "bad.png")
    header_only = tmp_path / "header.csv"
    header_only.write_text("timesteps,mean_return,success_rate\n")
    with pytest.raises(ValueError, match="no rows"):
        learning_curve(header_only, tmp_path / "header.png")


def test_save_gif(tmp_path: Path) -> None:
    frames = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    out = save_gif(frames, tmp_path / "gifs" / "episode.gif", fps=4)
    assert out.read_bytes().startswith(b"GIF8")


def test_pictures_replace_a_link_and_never_write_through_it(tmp_path: Path) -> None:
    """A run folder's GIF and PNG are written to a temporary name and renamed in: a link
    there (to a file the user keeps elsewhere) is replaced, its target left alone."""
    pytest.importorskip("matplotlib")
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("timesteps,mean_return,success_rate\n100,0.1,0.0\n200,0.3,0.5\n")
    frames = [np.full((8, 8, 3), v, dtype=np.uint8) for v in (0, 255)]
    kept = tmp_path / "elsewhere"
    kept.mkdir()
    for name, write in (
        ("curve.png", lambda p: learning_curve(csv_path, p)),
        ("episodes.gif", lambda p: save_gif(frames, p)),
    ):
        (kept / name).write_bytes(b"precious")
        link = tmp_path / "run" / name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(kept / name)
        write(link)
        assert (kept / name).read_bytes() == b"precious"
        assert not link.is_symlink() and link.stat().st_size > 100
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
