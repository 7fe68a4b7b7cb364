"""Atari with sound: ALE's frames and audio, preprocessed as RL Zoo preprocesses Atari.

``ale-py`` (>= 0.10.2, the ``atari`` extra; the ROMs ship in its wheel) emits, with
``sound_obs=True``, the emulator's RGB frame and the 512 unsigned 8-bit mono
samples (~30,720 Hz: 60 frames/s x 512) of each emulator frame.
:class:`AtariSoundPreprocessing` applies Stable-Baselines3's ``AtariWrapper``
choices (RL Zoo's Atari settings) to that Dict observation:

- up to 30 no-ops at reset, FIRE at reset for games that need it;
- 4 emulator frames per step (the action repeated), the frame the max of the
  last two (Atari sprites flicker), the rewards summed, and the sound of all
  4 frames kept, in order: 2,048 contiguous samples per step (ALE's own
  ``frameskip`` returns only the last frame's 512);
- an episode ends when a life is lost (the game goes on at the next reset),
  rewards clipped to their sign (both switchable: ``terminal_on_life_loss``,
  ``clip_reward``; RL Zoo's scores are full games with raw points, so
  :data:`FULL_GAMES` switches both off for scoring);
- grey 84 x 84 frames (ITU-R 601 luma, as OpenCV's ``RGB2GRAY``; area
  resampling, as OpenCV's ``INTER_AREA``, by Pillow: no OpenCV needed), the last
  4 stacked on the channel axis (RL Zoo's ``frame_stack: 4``; zeros before the
  first).

The observation is ``{"image": (84, 84, 4) uint8, "sound": (2048,) uint8}``; the
sound is raw PCM, which ``mbm-agent train`` turns into log-mel features at the
env's edge (``modalities: {sound: {kind: waveform, sample_rate: 30720}}``; the
env also says its rate in ``metadata["audio_sample_rate"]``).

Importing this module registers ``mbm-atari/<Game>-v0`` for the games of
:data:`GAMES` (RL Zoo's Atari benchmark and a few more); ``ale-py`` is imported
only when one is made. Another game: ``gymnasium.make("mbm-atari/Seaquest-v0",
game="Venture")``, or register it with :func:`make_atari_sound_env` as entry point.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, SupportsFloat, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

#: Namespace of the ids this module registers.
NAMESPACE = "mbm-atari"

#: Games registered as ``mbm-atari/<Game>-v0``: RL Zoo's PPO Atari benchmark, Seaquest's
#: low-oxygen alarm among them, plus Freeway, and Amidar and Hero (CASL's audio games).
GAMES: tuple[str, ...] = (
    "Asteroids",
    "BeamRider",
    "Breakout",
    "Enduro",
    "MsPacman",
    "Pong",
    "Qbert",
    "RoadRunner",
    "Seaquest",
    "SpaceInvaders",
    "Freeway",
    "Amidar",
    "Hero",
)

#: Samples of sound per emulator frame, and frames per second (ALE's ``SoundRaw``).
SAMPLES_PER_FRAME = 512
FRAMES_PER_SECOND = 60
#: Nominal sample rate of ALE's sound (60 x 512 Hz; the console's is ~31,400 Hz).
SAMPLE_RATE = SAMPLES_PER_FRAME * FRAMES_PER_SECOND
#: The PCM value of silence (ALE mixes ``volume0 + volume1 + 128``).
SILENCE = 128
#: Emulator frames of one episode at most (30 minutes of play; Machado et al., 2018).
MAX_FRAMES = 108_000
#: ``env_kwargs`` that score full games with raw points (RL Zoo's published scores).
FULL_GAMES: dict[str, Any] = {"terminal_on_life_loss": False, "clip_reward": False}


def scoring_kwargs(env_id: str) -> dict[str, Any]:
    """The env arguments every evaluation of ``env_id`` applies on top of training's.

    Our Atari ids (``mbm-atari/<Game>-v0``) are scored as RL Zoo scores them: full games
    with raw points (:data:`FULL_GAMES`), where training ends an episode at each lost
    life and clips rewards. Any other id: none.
    """
    return dict(FULL_GAMES) if env_id.startswith(f"{NAMESPACE}/") else {}


def ale_game_name(game: str) -> str:
    """ALE's ROM name of a game: ``"MsPacman"`` -> ``"ms_pacman"``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def grey_resize(frame: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """An RGB frame as a grey ``size x size`` one (ITU-R 601 luma, then area resampling)."""
    from PIL import Image

    # Pillow's "L" is R * 299/1000 + G * 587/1000 + B * 114/1000, as OpenCV's RGB2GRAY.
    grey = Image.fromarray(frame).convert("L")
    return np.asarray(grey.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


class AtariSoundPreprocessing(gym.Wrapper[dict[str, Any], np.int64, dict[str, Any], Any]):
    """SB3's ``AtariWrapper`` and RL Zoo's frame stack for ALE's frame + sound observation.

    Args:
        env: An ALE env made with ``frameskip=1`` and ``sound_obs=True`` (a
            ``Dict`` of ``image`` (210, 160, 3) and ``sound`` (512,)).
        noop_max: Most no-ops at reset (a uniform number in ``[1, noop_max]``; 0: none).
        frame_skip: Emulator frames per step.
        frame_size: Side of the grey frame.
        frame_stack: Frames stacked on the channel axis.
        terminal_on_life_loss: End the episode when a life is lost (the game
            continues at the next reset, with a no-op).
        clip_reward: Rewards clipped to -1, 0 or 1.
        fire_reset: Press FIRE at each reset, if the game has it (SB3 does).
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        *,
        noop_max: int = 30,
        frame_skip: int = 4,
        frame_size: int = 84,
        frame_stack: int = 4,
        terminal_on_life_loss: bool = True,
        clip_reward: bool = True,
        fire_reset: bool = True,
    ) -> None:
        super().__init__(env)
        space = env.observation_space
        if (
            not isinstance(space, spaces.Dict)
            or "image" not in space.spaces
            or "sound" not in space.spaces
        ):
            raise ValueError(
                f"AtariSoundPreprocessing needs ALE's Dict observation with 'image' and "
                f"'sound' (make the env with sound_obs=True), got {space}."
            )
        for name, value, low in (
            ("noop_max", noop_max, 0),
            ("frame_skip", frame_skip, 1),
            ("frame_size", frame_size, 8),
            ("frame_stack", frame_stack, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        self.noop_max = noop_max
        self.frame_skip = frame_skip
        self.frame_size = frame_size
        self.frame_stack = frame_stack
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.clip_reward = bool(clip_reward)
        # ALE's AtariEnv method, beyond gymnasium.Env's API.
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        self.fire_reset = bool(fire_reset) and len(meanings) >= 3 and meanings[1] == "FIRE"
        self.chunk = int(cast(tuple[int, ...], space["sound"].shape)[0])
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (frame_size, frame_size, frame_stack), np.uint8),
                "sound": spaces.Box(0, 255, (frame_skip * self.chunk,), np.uint8),
            }
        )
        self.metadata = {**env.metadata, "audio_sample_rate": SAMPLE_RATE}
        self._stack = np.zeros((frame_size, frame_size, frame_stack), dtype=np.uint8)
        self._sound = np.full(frame_skip * self.chunk, SILENCE, dtype=np.uint8)
        self._lives = 0
        self._game_over = True

    # -- helpers ------------------------------------------------------------------
    def _lives_now(self) -> int:
        # ALE's AtariEnv.ale, beyond gymnasium.Env's API.
        return int(self.env.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def _push(self, frame: NDArray[np.uint8]) -> dict[str, NDArray[np.uint8]]:
        self._stack[..., :-1] = self._stack[..., 1:]
        self._stack[..., -1] = grey_resize(frame, self.frame_size)
        return {"image": self._stack.copy(), "sound": self._sound.copy()}

    def _raw_step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """One agent step: ``frame_skip`` emulator frames, max-pooled frame, all the sound."""
        total = 0.0
        frames: list[NDArray[np.uint8]] = []
        self._sound[:] = SILENCE
        obs: dict[str, Any] = {}
        terminated = truncated = False
        info: dict[str, Any] = {}
        for i in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            self._sound[i * self.chunk : (i + 1) * self.chunk] = obs["sound"]
            frames = [*frames[-1:], obs["image"]]
            if terminated or truncated:
                break
        frame = frames[-1] if len(frames) == 1 else np.maximum(frames[0], frames[1])
        return {"image": frame}, total, terminated, truncated, info

    # -- Gymnasium ------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[np.uint8]], dict[str, Any]]:
        """A new game (no-ops, FIRE), or, after a lost life, the same game going on."""
        self._stack[:] = 0
        if self._game_over or not self.terminal_on_life_loss or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
            self._sound[:] = SILENCE
            self._sound[-self.chunk :] = obs["sound"]
            frame = obs["image"]
            rng = self.env.unwrapped.np_random
            noops = int(rng.integers(1, self.noop_max + 1)) if self.noop_max else 0
            for _ in range(noops):
                step_obs, _, terminated, truncated, info = self._raw_step(0)
                frame = step_obs["image"]
                if terminated or truncated:
                    obs, info = self.env.reset()
                    frame = obs["image"]
        else:  # a life was lost: the game goes on (SB3's EpisodicLifeEnv)
            step_obs, _, terminated, truncated, info = self._raw_step(0)
            frame = step_obs["image"]
            if terminated or truncated:
                obs, info = self.env.reset()
                frame = obs["image"]
        if self.fire_reset:
            for action in (1, 2):  # SB3's FireResetEnv
                step_obs, _, terminated, truncated, info = self._raw_step(action)
                frame = step_obs["image"]
                if terminated or truncated:
                    obs, info = self.env.reset()
                    frame = obs["image"]
        self._lives = self._lives_now()
        self._game_over = False
        return self._push(frame), dict(info)

    def step(
        self, action: Any
    ) -> tuple[dict[str, NDArray[np.uint8]], SupportsFloat, bool, bool, dict[str, Any]]:
        """``frame_skip`` emulator frames with ``action``."""
        obs, reward, terminated, truncated, info = self._raw_step(int(action))
        self._game_over = terminated or truncated
        lives = self._lives_now()
        life_lost = 0 < lives < self._lives
        self._lives = lives
        if self.terminal_on_life_loss and life_lost:
            terminated = True
        info = dict(info)
        info["game_over"] = self._game_over
        if self.clip_reward:
            reward = float(np.sign(reward))
        return self._push(obs["image"]), reward, terminated, truncated, info


def make_atari_sound_env(
    game: str,
    *,
    render_mode: str | None = None,
    max_frames: int = MAX_FRAMES,
    **preprocessing: Any,
) -> AtariSoundPreprocessing:
    """One Atari game with its sound, preprocessed (:class:`AtariSoundPreprocessing`).

    The emulator is RL Zoo's ``<Game>NoFrameskip-v4``: one frame per ALE step, no
    sticky actions, the game's minimal action set.

    Args:
        game: The game, as in ``ALE/<Game>-v5`` (``"Seaquest"``, ``"MsPacman"``).
        render_mode: ALE's (``"rgb_array"``: the emulator's colour frame).
        max_frames: Emulator frames before the episode is truncated.
        **preprocessing: :class:`AtariSoundPreprocessing` arguments.

    Raises:
        ImportError: ale-py is missing (the message names the extra).
        ValueError: An unknown game.
    """
    try:
        from ale_py.env import AtariEnv
    except ImportError as exc:
        raise ImportError(
            "Atari games need ale-py >= 0.10.2 (it ships the ROMs): pip install 'mbm-agent[atari]'."
        ) from exc
    import ale_py.roms

    rom = ale_game_name(game)
    if rom not in ale_py.roms.get_all_rom_ids():
        raise ValueError(f"ALE has no game {game!r} (ROM id {rom!r}).")
    env = AtariEnv(
        game=rom,
        obs_type="rgb",
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=max_frames,
        # ALE annotates render_mode as a Literal; it checks the value itself.
        render_mode=render_mode,  # type: ignore[arg-type]
        sound_obs=True,
    )
    return AtariSoundPreprocessing(env, **preprocessing)


def env_id(game: str) -> str:
    """The id of a game's preprocessed env with sound: ``mbm-atari/<Game>-v0``."""
    return f"{NAMESPACE}/{game}-v0"


def register(games: tuple[str, ...] = GAMES, **defaults: Any) -> None:
    """Register ``mbm-atari/<Game>-v0`` for ``games`` (ids already there are kept)."""
    for game in games:
        name = env_id(game)
        if name in gym.registry:
            continue
        kwargs: Mapping[str, Any] = {"game": game, **defaults}
        gym.register(
            id=name,
            entry_point="mbm_agent.training.atari:make_atari_sound_env",
            kwargs=dict(kwargs),  # truncation is ALE's own (max_frames): no TimeLimit
        )


register()

__all__ = [
    "FULL_GAMES",
    "GAMES",
    "SAMPLE_RATE",
    "AtariSoundPreprocessing",
    "env_id",
    "make_atari_sound_env",
    "register",
    "scoring_kwargs",
]
