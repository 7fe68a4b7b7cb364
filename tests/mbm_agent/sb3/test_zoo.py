"""RL Baselines3 Zoo as a first-class path: ``mbm_agent/configs/zoo/ppo.yml`` and ``ZooPolicy``.

The hyperparameter file holds data only (no Python, no ``__import__`` tricks):
RL Zoo trains our games with it as it is, our policy reading the observations
that SB3's float32 buffer stored in the dtypes the env emits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import envs
from mbm_agent.sb3.extractor import MultimodalExtractor
from mbm_agent.sb3.zoo import ZooPolicy, stored_dtype

REPO = Path(__file__).resolve().parents[3]
ZOO_FILE = REPO / "mbm_agent" / "configs" / "zoo" / "ppo.yml"


def test_the_zoo_file_is_data_for_our_games() -> None:
    text = ZOO_FILE.read_text()
    entries = yaml.safe_load(text)  # safe_load: no Python objects in it
    assert "__import__" not in text and "!!python" not in text
    assert set(entries) == set(envs.ENV_IDS)
    for env_id, entry in entries.items():
        assert entry["policy"] == "mbm_agent.sb3.zoo.ZooPolicy", env_id
        assert isinstance(entry["policy_kwargs"], dict), env_id  # not a string RL Zoo evals
        assert entry["monitor_kwargs"] == "dict(info_keywords=('is_success',))", env_id


def test_zoo_policy_reads_float32_buffers_as_the_envs_dtypes() -> None:
    env = gym.make("mbm/SoundMaze-v0")
    space = env.observation_space
    assert stored_dtype(space["image"]) == torch.uint8
    assert stored_dtype(space["text"]) == torch.int64
    assert stored_dtype(space["audio"]) == torch.float32
    policy = ZooPolicy(
        space,
        env.action_space,
        lambda _: 1e-3,
        encoder={"fusion": "concat"},
        activation_fn="relu",
        net_arch=[32],
    )
    assert isinstance(policy.features_extractor, MultimodalExtractor)
    assert policy.activation_fn is torch.nn.ReLU
    observations = [env.reset(seed=s)[0] for s in range(4)]
    native = {k: torch.as_tensor(np.stack([o[k] for o in observations])) for k in space.spaces}
    as_stored = {k: v.to(torch.float32) for k, v in native.items()}  # DictRolloutBuffer
    with torch.no_grad():
        want = policy.features_extractor.encode(native)
        got = policy._features(as_stored, policy.features_extractor)
        actions = torch.arange(4) % env.action_space.n
        values, log_prob, _ = policy.evaluate_actions(as_stored, actions)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(values).all() and torch.isfinite(log_prob).all()


@pytest.mark.slow
def test_rl_zoo_trains_the_probe_with_the_shipped_file(tmp_path: Path) -> None:
    """``python -m rl_zoo3.train ... -conf mbm_agent/configs/zoo/ppo.yml``, as the README says.

    ModalityProbe (image cue) with the file's settings reached 98% evaluation success
    after 4,096 steps (100% after 8,192); chance is 25%. ~20 s on 2 shared cores.
    """
    pytest.importorskip("rl_zoo3", reason="needs rl_zoo3 (the zoo extra)")
    tmp = tmp_path / "tmp"  # SB3's logger folder goes under TMPDIR
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    cmd = [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        "ppo",
        "--env",
        "mbm/ModalityProbe-v0",
        "--gym-packages",
        "envs",
        "-conf",
        str(ZOO_FILE),
        "-n",
        "4096",
        "--eval-freq",
        "4096",
        "--eval-episodes",
        "100",
        "--n-eval-envs",
        "1",
        "--seed",
        "0",
        "--log-folder",
        str(tmp_path / "logs"),
        "--tensorboard-log",
        "",
    ]
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "ppo").glob("mbm-ModalityProbe-v0_*")
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [4096]
    assert evaluations["successes"].mean() >= 0.9, evaluations["successes"]  # chance: 0.25
    # Our env's is_success reached RL Zoo's monitor files (and SB3's success_rate).
    monitor = (run / "0.monitor.csv").read_text().splitlines()
    assert monitor[1] == "r,l,t,is_success"
    assert {line.rsplit(",", 1)[1] for line in monitor[2:]} <= {"True", "False"}
    assert "rollout/success_rate" in result.stdout or "success_rate" in result.stdout
    assert (run / "mbm-ModalityProbe-v0.zip").is_file()
