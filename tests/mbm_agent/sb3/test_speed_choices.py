"""Choices made for speed keep their meaning: the patch conv is a conv, frames stay channel-last."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

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


def test_sb3_keeps_frames_channel_last_and_does_not_copy_them(sb3_logger: Any) -> None:
    """KeepChannelsLast hands on the game's own arrays, and uint8 HWC frames reach the encoder."""
    from stable_baselines3 import PPO

    from mbm_agent.encoding.config import EncoderConfig
    from mbm_agent.sb3 import policy_class, policy_kwargs_for

    inner = SB3VecEnv("mbm/FindSound-v0", 2)
    venv = KeepChannelsLast(inner)
    model = PPO(
        policy_class("ppo"),
        venv,
        policy_kwargs=policy_kwargs_for(EncoderConfig(), {}, {}),
        n_steps=8,
        batch_size=16,
        device="cpu",
    )
    assert model.env is venv  # SB3 did not add its own VecTransposeImage
    frame_shape = envs.make("mbm/FindSound-v0").observation_space["image"].shape
    assert model.observation_space["image"].shape == frame_shape
    assert frame_shape[-1] == 3

    # The same objects the game returned: neither transposed nor copied.
    returned: dict[str, Any] = {}
    reset, step_wait = inner.reset, inner.step_wait
    inner.reset = lambda: returned.setdefault("reset", reset())  # type: ignore[method-assign]
    inner.step_wait = lambda: returned.setdefault("step", step_wait())  # type: ignore[method-assign]
    venv.seed(3)
    obs = venv.reset()
    assert obs is returned["reset"]
    venv.step_async(np.zeros(2, np.int64))
    assert venv.step_wait() is returned["step"]
    inner.reset, inner.step_wait = reset, step_wait  # type: ignore[method-assign]

    # Rollouts and updates feed the encoder the stored uint8 frames (no float copy first).
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []
    image_encoder = model.policy.features_extractor.encoder.encoders["image"]
    image_encoder.register_forward_pre_hook(
        lambda _module, args: seen.append((args[0].dtype, tuple(args[0].shape[1:])))
    )
    model.set_logger(sb3_logger)
    model.learn(16)
    assert len(seen) > 8  # 8 rollout steps (plus the last value) and the update
    assert set(seen) == {(torch.uint8, frame_shape)}


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed"
)
def test_importing_the_trainer_does_not_import_tensorflow():
    code = "import sys, mbm_agent.training.trainer; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
