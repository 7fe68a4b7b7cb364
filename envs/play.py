"""Play a game from the keyboard, or watch the expert, and save episodes as a GIF.

Usage::

    python -m envs.play mbm/GoToObject-v1                # keys (pygame window, or the terminal)
    python -m envs.play mbm/SoundMaze-v1 --expert --episodes 3 --gif runs/expert.gif

Keys: left/right arrows (or a/d) turn, up (or w) moves forward, digits answer
the modality probe, q quits. Without the ``human`` extra (pygame) the game is
played in the terminal: type the key and Enter.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

import envs
from envs.core.env import GameEnv

_KEYS = {"a": 0, "d": 1, "w": 2}


def _pygame() -> Any:
    try:
        import pygame
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "render_mode='human' needs pygame: pip install 'mbm-agent[human]'."
        ) from exc
    return pygame


HEADLESS_WARNING = (
    "render_mode='human' without a display: frames go to SDL's dummy video driver and are "
    "not shown. Use render_mode='rgb_array' (or `--gif`) on a headless machine."
)


def _headless_fallback() -> None:
    """Use SDL's dummy driver on a Linux machine without a display (SDL can crash otherwise)."""
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and "SDL_VIDEODRIVER" not in os.environ:
        warnings.warn(HEADLESS_WARNING, UserWarning, stacklevel=3)
        os.environ["SDL_VIDEODRIVER"] = "dummy"


def show_frame(frame: NDArray[np.uint8], window: Any, fps: int) -> Any:
    """Show ``frame`` in a pygame window (created on first use); returns the window."""
    if window is None:
        _headless_fallback()
    pygame = _pygame()
    if window is None:
        pygame.init()
        window = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
        pygame.display.set_caption("mbm-agent")
    surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
    window.blit(surface, (0, 0))
    pygame.event.pump()
    pygame.display.flip()
    pygame.time.Clock().tick(fps)
    return window


def close_window() -> None:
    """Close the pygame window."""
    _pygame().quit()


def gif_bytes(frames: list[NDArray[np.uint8]], fps: int = 6) -> bytes:
    """Frames as the bytes of an animated GIF (Pillow)."""
    from PIL import Image

    if not frames:
        raise ValueError("save_gif needs at least one frame.")
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    return buffer.getvalue()


def save_gif(frames: list[NDArray[np.uint8]], path: str | Path, fps: int = 6) -> Path:
    """Write frames as an animated GIF (Pillow), creating parent folders.

    (``mbm_agent.plots.save_gif`` writes the same bytes through a temporary file.)
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gif_bytes(frames, fps))
    return out


def _key_action(env: gym.Env[Any, Any]) -> int | None:
    """Read one action from the terminal; None to quit."""
    n = int(cast(spaces.Discrete, env.action_space).n)  # our games' actions are Discrete
    while True:
        key = input(f"action ({'a/d/w' if n == 3 else f'0-{n - 1}'}, q quits): ").strip().lower()
        if key == "q":
            return None
        if n == 3 and key in _KEYS:
            return _KEYS[key]
        if key.isdigit() and int(key) < n:
            return int(key)


def run_episodes(
    env_id: str, *, episodes: int, seed: int, expert: bool, **kwargs: Any
) -> tuple[list[NDArray[np.uint8]], list[float], list[bool]]:
    """Play ``episodes`` episodes (expert or keyboard); return frames, returns, successes."""
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    frames: list[NDArray[np.uint8]] = []
    returns: list[float] = []
    successes: list[bool] = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        frames.append(cast(NDArray[np.uint8], env.render()))  # rgb_array: never None
        game = cast(GameEnv, env.unwrapped)
        total, done, info = 0.0, False, {"success": False}
        while not done:
            if expert:
                action: int | None = game.expert_action()
            else:
                print(game.game.instruction[0])
                action = _key_action(env)
                if action is None:
                    return frames, returns, successes
            _, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
            frames.append(cast(NDArray[np.uint8], env.render()))
        returns.append(total)
        successes.append(bool(info["success"]))
    env.close()
    return frames, returns, successes


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("env_id", choices=envs.ENV_IDS, help="game to play")
    parser.add_argument("--expert", action="store_true", help="let the shortest-path expert play")
    parser.add_argument("--episodes", type=int, default=1, help="episodes to play (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--gif", type=Path, default=None, help="write the episodes to this GIF")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    frames, returns, successes = run_episodes(
        args.env_id, episodes=args.episodes, seed=args.seed, expert=args.expert
    )
    for i, (r, s) in enumerate(zip(returns, successes, strict=True)):
        print(f"episode {i}: return {r:.3f} success {s}")
    if args.gif is not None:
        print(f"wrote {save_gif(frames, args.gif)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
