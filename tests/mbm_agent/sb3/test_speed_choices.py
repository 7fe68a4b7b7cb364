"""Choices made for speed keep their meaning: the patch conv is a conv, frames stay channel-last."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import envs
from envs.sb3 import SB3VecEnv
from mbm_agent.encoding.encoders import AudioEncoder
from mbm_agent.sb3 import KeepChannelsLast


@pytest.mark.parametrize("shape", [(2, 32, 8), (32, 8), (1, 18, 5), (3, 3, 3)])
def test_audio_patch_conv_equals_a_strided_conv2d(shape):
    torch.manual_seed(0)
    enc = AudioEncoder(shape, np.array(-5.0), np.array(5.0))
    x = torch.randn(4, *shape) * 3
    ph, pw = enc.patch
    channels = enc.in_channels
    weight = enc.patch_conv.weight.reshape(-1, channels, ph, pw)
    xin = ((x - enc.center) * enc.inv_half).reshape(4, channels, *shape[-2:])
    conv = F.relu(F.conv2d(xin, weight, enc.patch_conv.bias, stride=(ph, pw)))
    expected = enc.head(conv.permute(0, 2, 3, 1).flatten(1))
    torch.testing.assert_close(enc(x), expected, rtol=1e-5, atol=1e-6)
    assert conv.shape[-2:] == enc.grid


def test_sb3_keeps_frames_channel_last_and_does_not_copy_them():
    from stable_baselines3 import PPO

    from mbm_agent.encoding.config import EncoderConfig
    from mbm_agent.sb3 import policy_kwargs_for

    venv = KeepChannelsLast(SB3VecEnv("mbm/FindSound-v0", 2))
    model = PPO(
        "MultiInputPolicy",
        venv,
        policy_kwargs=policy_kwargs_for(EncoderConfig(), {}, {}),
        n_steps=8,
        batch_size=16,
        device="cpu",
    )
    assert model.env is venv  # SB3 did not add its own VecTransposeImage
    assert (
        model.observation_space["image"].shape
        == envs.make("mbm/FindSound-v0").observation_space["image"].shape
    )
    venv.seed(3)
    obs = venv.reset()
    inner = SB3VecEnv("mbm/FindSound-v0", 2)
    inner.seed(3)
    np.testing.assert_array_equal(obs["image"], inner.reset()["image"])
    model.learn(16)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed"
)
def test_importing_the_trainer_does_not_import_tensorflow():
    code = "import sys, mbm_agent.training.trainer; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
