"""PPO with our extractor learns each sense of ModalityProbe, and needs that sense to do it.

ModalityProbe is a one-step question whose answer only the cued modality
carries; the other two are noise. So a policy that learned it must score near
1 on held-out seeds, and near chance (``1 / n_answers``) once the cued
modality is masked at evaluation.

Budget: with these hyperparameters (SB3's PPO defaults otherwise, ``n_epochs=10``)
every cue reached 100% held-out success within 3072 steps for training seeds
0-9 (the slowest, text with seed 1, was at 95% after 2560 steps; measured on
2 CPU cores). The test trains twice that, 6144 steps (12 rollouts of 32 x 16).
"""

from __future__ import annotations

from typing import Any

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

from envs.sb3 import SB3VecEnv
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.evaluation import EVAL_SEED_BASE, evaluate_agent
from mbm_agent.sb3 import policy_kwargs_for
from mbm_agent.training.agent import Agent

PROBE = "mbm/ModalityProbe-v0"
N_ENVS = 32
STEPS = 6144
EVAL_EPISODES = 512
TRAIN_SEED = 0


@pytest.mark.slow
@pytest.mark.parametrize("cue", ["image", "text", "audio"])
def test_ppo_learns_the_cued_sense_and_needs_it(cue: str, sb3_logger: Any) -> None:
    venv = VecMonitor(SB3VecEnv(PROBE, N_ENVS, cue=cue), info_keywords=("is_success",))
    encoder = EncoderConfig()
    assert encoder.fusion == "concat"
    model = PPO(
        "MultiInputPolicy",
        venv,
        n_steps=16,
        batch_size=256,
        learning_rate=5e-4,
        seed=TRAIN_SEED,
        policy_kwargs=policy_kwargs_for(encoder, {}, {"net_arch": [64]}),
        device="cpu",
        verbose=0,
    )
    model.set_logger(sb3_logger)
    model.learn(STEPS)
    assert model.num_timesteps == STEPS
    # The monitor saw one-step episodes with their success flags.
    assert model.ep_info_buffer and all("is_success" in ep for ep in model.ep_info_buffer)
    assert all(ep["l"] == 1 for ep in model.ep_info_buffer)

    game = venv.venv.game
    agent = Agent(model.policy, {"algo": "ppo", "encoder": encoder.to_dict()}, game.vocabulary)
    # Held-out seeds: training worlds are seeded from TRAIN_SEED + slot and continue
    # their own streams; evaluation starts far above at EVAL_SEED_BASE.
    assert EVAL_SEED_BASE > TRAIN_SEED + N_ENVS
    kwargs = {"cue": cue}
    report = evaluate_agent(
        agent, PROBE, kwargs, episodes=EVAL_EPISODES, n_envs=64, baselines=False
    )
    masked = evaluate_agent(
        agent,
        PROBE,
        kwargs,
        episodes=EVAL_EPISODES,
        n_envs=64,
        baselines=False,
        drop_modalities=[cue],
    )
    success = report["success"]["rate"]
    blind = masked["success"]["rate"]
    assert report["meta"]["episodes"] == masked["meta"]["episodes"] == EVAL_EPISODES
    assert masked["meta"]["drop_modalities"] == [cue]
    assert success >= 0.95, f"cue={cue}: {success:.3f} held-out success after {STEPS} steps"
    chance = game.chance_level
    assert chance == 0.25
    assert abs(blind - chance) <= 0.15, f"cue={cue}: {blind:.3f} with {cue} masked"
