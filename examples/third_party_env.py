"""A third-party multimodal env that knows nothing of mbm-agent, and how to train on it.

``ThirdPartyEnv`` is written as anyone would write a Gymnasium env: an RGB
frame under its own key (``frame``), a ``spaces.Text`` instruction
(``instruction``) and a raw int16 microphone chunk (``mic``), with no token
ids, no vocabulary and no spectrogram in sight. ``mbm-agent`` trains on it as
it is::

    mbm-agent inspect examples.third_party_env:ThirdPartyEnv-v0 --set modalities.mic=waveform
    mbm-agent train examples.third_party_env:ThirdPartyEnv-v0 --set modalities.mic=waveform

(run from the repository root: a ``module:EnvId`` id imports the module, which
registers the id, and mbm-agent searches the current folder). The frame goes to
the image CNN by its space; the instruction's words are hashed into token ids;
the microphone is declared a ``waveform`` (its sample rate comes from the env's
``metadata["audio_sample_rate"]``; without it, declare
``{kind: waveform, sample_rate: 8000}``) and heard as log-mel features over the
last few steps. ``python examples/third_party_env.py`` does the same through
the Python API, briefly.

The task: three lamps of different colours stand side by side in the frame.
An episode either names a colour ("touch the red lamp") or says "touch the lamp
you hear", while the microphone plays a tone whose pitch tells the position
(low: left, middle: centre, high: right). Each of the 8 steps the agent touches
one lamp (actions 0, 1, 2) and earns 1 for the right one; an episode is a
success when at least 6 touches are right.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

SAMPLE_RATE = 8000
CHUNK = 256  # samples per step: 32 ms, shorter than a spectrogram's window
EPISODE_STEPS = 8
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
}
PITCHES = (400.0, 1100.0, 2600.0)  # Hz of the tone for the left, centre and right lamp
ENV_ID = "ThirdPartyEnv-v0"


class ThirdPartyEnv(gym.Env[dict[str, Any], int]):
    """Touch the lamp the instruction names by colour, or the one the microphone hears.

    Observation space (a ``Dict``):

    | key | space | meaning |
    |---|---|---|
    | ``frame`` | ``Box(0, 255, (24, 24, 3), uint8)`` | three lamps, left to right |
    | ``instruction`` | ``Text(64)`` | "touch the <colour> lamp" or "touch the lamp you hear" |
    | ``mic`` | ``Box(-32768, 32767, (256,), int16)`` | 32 ms of sound at 8 kHz |

    Action space: ``Discrete(3)``, the lamp to touch. Reward: 1 for the right
    lamp. Episodes are truncated after 8 steps; ``info["is_success"]`` then says
    whether at least 6 touches were right.
    """

    metadata: dict[str, Any] = {
        "render_modes": ["rgb_array"],
        "render_fps": 4,
        "audio_sample_rate": SAMPLE_RATE,
    }

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "frame": spaces.Box(0, 255, (24, 24, 3), dtype=np.uint8),
                "instruction": spaces.Text(64, charset=string.ascii_lowercase + " "),
                "mic": spaces.Box(-32768, 32767, (CHUNK,), dtype=np.int16),
            }
        )
        self.action_space = spaces.Discrete(3)
        self._order: list[str] = list(COLOURS)
        self._target = 0
        self._listen = False
        self._t = 0
        self._right = 0
        self._phase = 0.0

    def _frame(self) -> NDArray[np.uint8]:
        frame = np.zeros((24, 24, 3), dtype=np.uint8)
        for i, name in enumerate(self._order):
            frame[4:20, 8 * i + 1 : 8 * i + 7] = COLOURS[name]
        return frame

    def _sound(self) -> NDArray[np.int16]:
        t = np.arange(CHUNK) / SAMPLE_RATE
        noise = self.np_random.normal(0.0, 0.02, CHUNK)
        wave = noise
        if self._listen:
            freq = PITCHES[self._target]
            wave = wave + 0.4 * np.sin(2 * np.pi * freq * t + self._phase)
            self._phase += 2 * np.pi * freq * CHUNK / SAMPLE_RATE
        return np.clip(wave * 32767, -32768, 32767).astype(np.int16)

    def _obs(self) -> dict[str, Any]:
        if self._listen:
            text = "touch the lamp you hear"
        else:
            text = f"touch the {self._order[self._target]} lamp"
        return {"frame": self._frame(), "instruction": text, "mic": self._sound()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode: shuffle the lamps, pick the target and how it is given."""
        super().reset(seed=seed)
        self._order = [str(c) for c in self.np_random.permutation(list(COLOURS))]
        self._target = int(self.np_random.integers(3))
        self._listen = bool(self.np_random.integers(2))
        self._phase = float(self.np_random.uniform(0, 2 * np.pi))
        self._t = self._right = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Touch a lamp."""
        reward = float(int(action) == self._target)
        self._right += int(reward)
        self._t += 1
        truncated = self._t >= EPISODE_STEPS
        info = {"is_success": self._right >= 6} if truncated else {}
        return self._obs(), reward, False, truncated, info

    def render(self) -> NDArray[np.uint8] | None:
        """The frame (``rgb_array``), or None without a render mode."""
        return self._frame() if self.render_mode == "rgb_array" else None


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=ThirdPartyEnv, max_episode_steps=EPISODE_STEPS)


def main() -> None:
    """Train briefly through the Python API, evaluate, and act on a raw observation."""
    import tempfile

    from mbm_agent.training.agent import load_agent
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.trainer import train

    with tempfile.TemporaryDirectory() as runs:
        cfg = resolve_config(  # the id this module registered on import
            ENV_ID,
            overrides={
                "steps": 4096,
                "n_envs": 8,
                "runs_dir": runs,
                "modalities": {"mic": {"kind": "waveform", "sample_rate": SAMPLE_RATE}},
                "eval_every": 0,
                "final_eval_episodes": 50,
                "gif_episodes": 0,
                "algo_kwargs": {"n_steps": 64, "batch_size": 128},
            },
        )
        result = train(cfg, progress=False)
        assert result.report is not None
        print(f"success {result.report['success']['rate']:.2f}")
        agent = load_agent(result.run_dir)
        env = ThirdPartyEnv()
        obs, _ = env.reset(seed=0)
        print("action on a raw observation:", agent.act(obs))


if __name__ == "__main__":
    main()
