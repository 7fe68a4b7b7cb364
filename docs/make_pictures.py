"""Write docs/img/<game>.png: the top-down room (render) beside the agent's observed frame.

Run from the repository root: ``python docs/make_pictures.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import envs


def picture(env_id: str, seed: int = 3, scale: int = 3) -> Image.Image:
    """The rendered room and the observation frame, side by side, enlarged."""
    env = envs.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    room = np.asarray(env.render())
    frame = np.asarray(obs["image"])
    height = max(room.shape[0], frame.shape[0] * 2)
    canvas = np.full((height, room.shape[1] + frame.shape[1] * 2 + 8, 3), 255, np.uint8)
    canvas[: room.shape[0], : room.shape[1]] = room
    big = frame.repeat(2, axis=0).repeat(2, axis=1)
    canvas[: big.shape[0], room.shape[1] + 8 :] = big
    env.close()
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale // 2, image.height * scale // 2), Image.NEAREST)


if __name__ == "__main__":
    out = Path("docs/img")
    out.mkdir(parents=True, exist_ok=True)
    for env_id in envs.LATEST:  # one picture per game: its version to use
        path = out / f"{envs.game_name(env_id)}.png"
        picture(env_id).save(path, optimize=True)
        print(path)
