"""NetHack through MiniHack: seeded as Gymnasium seeds, actions by name, success reported.

``MiniHack-*`` ids (the ``minihack`` extra: ``nle`` and ``minihack``) are made by
:func:`make_minihack_env`, which ``mbm-agent train`` uses for them. The env is
MiniHack's own, with :class:`NetHackConventions` on top:

- ``reset(seed=s)`` seeds NetHack's two random generators (NLE's ``reset``
  ignores ``seed``: the same seed gave different levels), and later unseeded
  resets draw their seeds from a generator seeded by ``s``, as Gymnasium envs do;
- ``info["is_success"]`` at the end of an episode: the task was done (NLE's
  ``end_status`` is ``TASK_SUCCESSFUL``), not a death, not a time-out.

``actions`` may name NetHack's commands (``["N", "E", "S", "W", "EAT"]``, the
names of ``nle.nethack.ACTIONS``; a bare compass name is the one-step move) as
well as give their key codes, so a config file can hold a small action set.

The observation is MiniHack's ``Dict`` of the chosen ``observation_keys``: the
message is a 256-byte UTF-8 array (declare it ``text``: words are hashed into
token ids at the env's edge) and the glyphs a 2-D grid of glyph ids (declare it
``symbolic_grid``: the adapter adds its channel axis). The skill tasks (Eat,
Wield, Wear, ...) ask their follow-up questions in the message ("There is an
apple here; eat it? [ynq] (n)"), which is why the message matters there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

#: Id prefix of MiniHack's envs.
PREFIX = "MiniHack-"
#: Largest seed NetHack's generators take.
_MAX_SEED = 2**63 - 1


def is_minihack(env_id: str) -> bool:
    """Whether ``env_id`` (optionally ``module:id``) is a MiniHack id."""
    return env_id.split(":")[-1].startswith(PREFIX)


def _import_minihack() -> Any:
    try:
        import minihack  # registers the MiniHack-* ids
    except ImportError as exc:
        raise ImportError(
            "MiniHack environments need the 'nle' and 'minihack' packages: "
            "pip install 'mbm-agent[minihack]' (`make install` adds them)."
        ) from exc
    return minihack


def action_codes(actions: Sequence[int | str]) -> tuple[int, ...]:
    """NetHack key codes of ``actions``: codes as given, names looked up in ``nle.nethack.ACTIONS``.

    A name is an action's enum name (``"EAT"``, ``"PICKUP"``) or ``Class.NAME``
    (``"CompassDirectionLonger.N"``); a bare name shared by several actions (``"N"``)
    is the first of ``ACTIONS`` (the one-step move).

    Raises:
        ValueError: An unknown name, or a code that is no NetHack action.
    """
    from nle import nethack

    by_name: dict[str, int] = {}
    for action in nethack.ACTIONS:
        by_name.setdefault(action.name, int(action))
        by_name[f"{type(action).__name__}.{action.name}"] = int(action)
    codes = {int(a) for a in nethack.ACTIONS}
    out = []
    for action in actions:
        if isinstance(action, str):
            if action not in by_name:
                raise ValueError(
                    f"Unknown NetHack action {action!r}; names are those of nle.nethack.ACTIONS, "
                    "e.g. N, E, S, W, NE, EAT, PICKUP, WEAR, WIELD, APPLY."
                )
            out.append(by_name[action])
        elif isinstance(action, bool) or not isinstance(action, int | np.integer):
            raise ValueError(f"A NetHack action is a name or a key code, got {action!r}.")
        elif int(action) not in codes:
            raise ValueError(f"{int(action)} is not the key code of a NetHack action.")
        else:
            out.append(int(action))
    if len(set(out)) != len(out):
        raise ValueError(f"actions {list(actions)} name the same NetHack action twice.")
    return tuple(out)


class NetHackConventions(gym.Wrapper[Any, Any, Any, Any]):
    """Gymnasium's seeding and SB3's ``is_success`` for an NLE / MiniHack env.

    Args:
        env: An NLE-based env (MiniHack's, or NLE's own).
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self._seeds: np.random.Generator | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset; a seed fixes NetHack's generators for this and the following episodes."""
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
        if self._seeds is not None:
            core, disp = (int(s) for s in self._seeds.integers(0, _MAX_SEED, 2))
            # NLE's own seed method, beyond gymnasium.Env's API.
            self.env.unwrapped.seed(core, disp, reseed=False)  # type: ignore[attr-defined]
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step; at an episode's end ``info["is_success"]`` says whether the task was done."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = dict(info)
            status = info.get("end_status")
            # MiniHack's StepStatus enum, beyond gymnasium.Env's API (MiniHack is untyped).
            done_ok = self.env.unwrapped.StepStatus.TASK_SUCCESSFUL  # type: ignore[attr-defined]
            info["is_success"] = bool(status is not None and int(status) == int(done_ok))
        return obs, reward, terminated, truncated, info


def make_minihack_env(
    env_id: str,
    *,
    actions: Sequence[int | str] | None = None,
    render_mode: str | None = None,
    **kwargs: Any,
) -> gym.Env[Any, Any]:
    """A MiniHack env with :class:`NetHackConventions`.

    Args:
        env_id: A MiniHack id (``"MiniHack-Eat-v0"``), optionally ``minihack:`` first.
        actions: The action set, as names or key codes (:func:`action_codes`);
            MiniHack's task default when None.
        render_mode: MiniHack's (``"human"``, ``"ansi"``); it draws text, so
            ``"rgb_array"`` is refused.
        **kwargs: MiniHack arguments (``observation_keys``, ``max_episode_steps``, ...).

    Raises:
        ImportError: nle or minihack is missing (the message names the extra).
        ValueError: An unknown action name, or ``render_mode="rgb_array"``.
    """
    _import_minihack()
    if render_mode == "rgb_array":
        raise ValueError(
            f"{env_id} draws NetHack's screen as text, not frames; set gif_episodes: 0 "
            "(or render with 'ansi')."
        )
    if actions is not None:
        kwargs["actions"] = action_codes(actions)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if "observation_keys" in kwargs:
        kwargs["observation_keys"] = tuple(kwargs["observation_keys"])
    env = gym.make(env_id.split(":")[-1], **kwargs)
    return NetHackConventions(env)


__all__ = ["NetHackConventions", "action_codes", "is_minihack", "make_minihack_env"]
