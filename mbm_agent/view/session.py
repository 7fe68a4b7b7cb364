"""One run's agent on its own env, stepped one action at a time, with what the page shows.

:class:`LoadedRun` loads a run (or a policy folder) once and checks that its env
can be made; :class:`Panel` plays episodes of it and, after every step,
computes from one batched forward pass of the policy (no SB3 on that path):

- the action probabilities and the value estimate;
- per sense (observation key), the change in the action probabilities when that
  sense is masked (the encoder's learned "missing" embedding replaces it, as
  ``mbm-agent eval --drop-modality`` does), measured as the total variation
  distance ``0.5 * sum |p - p_masked|`` (0: no effect, 1: a different action for sure);
- per instruction word, the same distance when that one word is replaced by
  padding (occlusion), the "words the policy relies on";
- for ``gated`` fusion the gates, for ``attention`` fusion the summary token's
  attention over the modality tokens, read with a forward pre-hook on the fusion.

A :class:`Session` holds one panel per run on the same seed; a person can take
over (the same action goes to every panel) and mask senses live.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from torch import Tensor

from envs.core.audio import AudioConfig
from envs.core.text import PAD_ID, Vocabulary, tokenize
from mbm_agent.deploy.network import PolicyNetwork, UnsupportedPolicyError
from mbm_agent.encoding.fusion import AttentionFusion, GatedFusion
from mbm_agent.training.adapter import ObservationAdapter, TextTransform, WaveformTransform
from mbm_agent.training.agent import Agent, load_agent
from mbm_agent.training.config import ConfigError
from mbm_agent.training.envs import evaluation_env_kwargs, make_single_env
from mbm_agent.training.storage import ModelFileError
from mbm_agent.view.sound import PLAYBACK_SECONDS, Sound, features_sound, game_sound, loop

#: Keys a person can press in take-over mode, by action name (our games, MiniGrid).
ACTION_KEYS: dict[str, list[str]] = {
    "left": ["ArrowLeft", "a"],
    "right": ["ArrowRight", "d"],
    "forward": ["ArrowUp", "w"],
    "pickup": ["p"],
    "drop": ["o"],
    "toggle": ["t"],
    "done": ["Enter"],
}


class ViewError(ValueError):
    """A run that cannot be shown, or a server that cannot start (the message says why)."""


def png_data_uri(frame: NDArray[Any]) -> str:
    """A ``data:image/png`` URI of an ``H x W x C`` (C in 1, 3, 4) uint8 frame."""
    from PIL import Image

    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def raw_text(value: Any) -> str | None:
    """A raw instruction as text: a string, or UTF-8 bytes (an array cut at the first NUL)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", "replace")
    arr = np.asarray(value)
    if arr.dtype == np.uint8 and arr.ndim == 1:
        return arr.tobytes().split(b"\0", 1)[0].decode("utf-8", "replace")
    return None


def _is_frame(value: NDArray[Any]) -> bool:
    return value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (1, 3, 4)


def action_names(env: gym.Env[Any, Any]) -> list[str]:
    """Names of the env's discrete actions (``"0"``, ``"1"``, ... when it names none)."""
    space = env.action_space
    if not isinstance(space, spaces.Discrete):
        raise ViewError(f"mbm-agent view shows Discrete action spaces; this env has {space}.")
    n = int(space.n)
    unwrapped = env.unwrapped
    game = getattr(unwrapped, "game", None)
    names = getattr(game, "action_names", None) or getattr(unwrapped, "action_names", None)
    if names is None and hasattr(unwrapped, "actions"):  # MiniGrid's Actions enum
        try:
            names = [a.name for a in unwrapped.actions]
        except TypeError:
            names = None
    if names is None or len(names) != n:
        return [str(i) for i in range(n)]
    return [str(x) for x in names]


@dataclass
class LoadedRun:
    """A run's agent, its plain-torch network and how to make its env (checked once).

    Attributes:
        name: The folder's name (what the page shows).
        path: The run (or policy) folder.
        agent: The loaded agent.
        network: Its :class:`PolicyNetwork` (the forward pass the panels use).
        env_id: The env it was trained on.
        env_kwargs: The env's arguments, as its evaluations use them (Atari: full games).
    """

    name: str
    path: Path
    agent: Agent
    network: PolicyNetwork
    env_id: str
    env_kwargs: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> LoadedRun:
        """Load a run folder (its ``best/`` policy, else ``final/``) or a policy folder.

        Raises:
            ViewError: A missing or unreadable folder, a policy the viewer cannot
                express, or an env that cannot be made (not installed, unknown id).
        """
        p = Path(path)
        if not p.is_dir():
            what = "does not exist" if not p.exists() else "is not a folder"
            raise ViewError(f"{p} {what}: pass a run folder (runs/NAME) or a policy folder.")
        try:
            agent = load_agent(p, "best")
        except (FileNotFoundError, ModelFileError, PermissionError, OSError) as exc:
            raise ViewError(f"cannot load the agent of {p}: {exc}") from exc
        try:
            network = PolicyNetwork.from_agent(agent)
        except UnsupportedPolicyError as exc:
            raise ViewError(f"{p}: the viewer cannot show this policy: {exc}") from exc
        env_id = str(agent.spec["env_id"])
        run = cls(
            name=p.resolve().name,
            path=p.resolve(),
            agent=agent,
            network=network,
            env_id=env_id,
            env_kwargs=evaluation_env_kwargs(env_id, agent.spec.get("env_kwargs", {})),
        )
        env = run.make_env()  # fail now, not in the page, when the env cannot be made
        try:
            action_names(env)
        finally:
            env.close()
        return run

    def make_env(self) -> gym.Env[Any, Any]:
        """A fresh env as the agent was trained on, rendering RGB frames.

        The env is made *without* the run's observation adapter: a :class:`Panel`
        adapts each observation itself and keeps the raw text and sound.

        Raises:
            ViewError: The env cannot be made (its package is missing, or the id is unknown).
        """
        try:
            env, _ = make_single_env(
                self.env_id,
                self.env_kwargs,
                self.agent.vocabulary,
                "rgb_array",
                adapter=ObservationAdapter(),
            )
        except (ConfigError, ImportError, gym.error.Error) as exc:
            raise ViewError(
                f"{self.path}: its env {self.env_id!r} cannot be made here: {exc} "
                "(install the package that provides it, e.g. pip install 'mbm-agent[minigrid]' "
                "for MiniGrid / BabyAI)."
            ) from exc
        return env


@dataclass
class Analysis:
    """What one forward pass says about the current observation.

    Attributes:
        probs: Action probabilities (softmax of the Q-values for a Q-network).
        value: The value estimate (``max Q`` for a Q-network).
        without: Per sense, the probabilities with it masked.
        words: Per text key, per token position, the probabilities with that word
            replaced by padding (None for padding positions).
        fusion: Per sense, its gate or attention weight (None when the mode has none).
        next_state: A policy with memory: its ``(1, memory)`` state after this
            observation (the decision's, with the senses the person masked), which
            the next step starts from; None without memory.
    """

    probs: NDArray[np.float64]
    value: float
    without: dict[str, NDArray[np.float64]]
    words: dict[str, list[NDArray[np.float64] | None]]
    fusion: dict[str, float] | None
    next_state: Tensor | None = None


def _tv(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    return float(0.5 * np.abs(p - q).sum())


class _FusionProbe:
    """Reads the fusion's gates or attention weights with a forward pre-hook on it."""

    def __init__(self, network: PolicyNetwork) -> None:
        self.fusion = network.encoder.fusion
        self.captured: tuple[dict[str, Tensor], Tensor | None] | None = None

    @property
    def kind(self) -> str | None:
        if isinstance(self.fusion, GatedFusion):
            return "gate"
        if isinstance(self.fusion, AttentionFusion):
            return "attention"
        return None

    @contextmanager
    def listening(self) -> Iterator[None]:
        if self.kind is None:
            yield
            return

        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            self.captured = (dict(args[0]), args[1])

        handle = self.fusion.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def weights(self, row: int = 0) -> dict[str, float] | None:
        """The weights of batch row ``row`` from the last captured call."""
        if self.captured is None or self.kind is None:
            return None
        embeddings, present = self.captured
        keys = self.fusion.keys
        with torch.no_grad():
            if isinstance(self.fusion, GatedFusion):
                cat = torch.cat([embeddings[k][row : row + 1] for k in keys], dim=1)
                gates = torch.sigmoid(self.fusion.gate(cat))[0]
                if present is not None:
                    gates = gates * present[row].to(gates.dtype)
                return {k: float(gates[i]) for i, k in enumerate(keys)}
            assert isinstance(self.fusion, AttentionFusion)
            fusion = self.fusion
            tokens = torch.stack([fusion.proj[k](embeddings[k][row : row + 1]) for k in keys], 1)
            tokens = torch.cat([fusion.summary, tokens + fusion.modality], dim=1)
            ignore = None
            if present is not None:
                ignore = ~torch.cat([torch.ones(1, 1, dtype=torch.bool), present[row : row + 1]], 1)
            layer = fusion.layer
            x = layer.norm1(tokens) if layer.norm_first else tokens
            _, attn = layer.self_attn(
                x, x, x, key_padding_mask=ignore, need_weights=True, average_attn_weights=True
            )
            summary = attn[0, 0]  # the summary token's attention: [itself, key 1, key 2, ...]
            return {k: float(summary[i + 1]) for i, k in enumerate(keys)}


def _obs_batch(obs: Mapping[str, Any], keys: Sequence[str], n: int) -> dict[str, Tensor]:
    out = {}
    for key in keys:
        arr = np.asarray(obs[key])
        out[key] = torch.as_tensor(np.repeat(arr[None], n, axis=0))
    return out


def analyse(
    network: PolicyNetwork,
    obs: Mapping[str, Any],
    masked: set[str],
    text_keys: Sequence[str],
    probe: _FusionProbe | None = None,
    state: Tensor | None = None,
) -> Analysis:
    """One batched forward pass: the current decision, each sense masked, each word occluded.

    A policy with memory reads every row from the same state, the one its episode
    carried to this step: a sense masked or a word occluded is so at this step only.

    Args:
        network: The policy.
        obs: One observation (no batch axis), already in the policy's format.
        masked: Keys the person switched off: missing in every row.
        text_keys: Keys holding token ids (words are occluded one at a time).
        probe: Reads fusion weights, if given.
        state: A policy with memory: its ``(1, memory)`` state before this step
            (None: an episode's first step).
    """
    keys = list(network.keys)
    rows: list[tuple[str, str, int]] = [("base", "", -1)]
    rows += [("sense", k, -1) for k in keys]
    for key in text_keys:
        ids = np.asarray(obs[key]).reshape(-1)
        rows += [("word", key, i) for i in range(len(ids)) if int(ids[i]) != PAD_ID]
    n = len(rows)
    batch = _obs_batch(obs, keys, n)
    present = {k: torch.full((n,), k not in masked, dtype=torch.bool) for k in keys}
    for r, (kind, key, pos) in enumerate(rows):
        if kind == "sense":
            present[key][r] = False
        elif kind == "word":
            batch[key][r, pos] = PAD_ID
    with torch.no_grad(), one_thread(), probe.listening() if probe else _nothing():
        features = network.encoder(batch, mask=present)
        next_state = None
        if network.memory:
            before = network.initial_state(1) if state is None else state
            latent = network.remember(features, before.expand(n, -1))
            _, logits, value = network.heads(latent)
            next_state = latent[:1].clone()
        else:
            critic_in = (
                None
                if network.critic_encoder is None
                else network.critic_encoder(batch, mask=present)
            )
            _, logits, value = network.heads(features, critic_in)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    without: dict[str, NDArray[np.float64]] = {}
    words: dict[str, list[NDArray[np.float64] | None]] = {
        k: [None] * int(np.asarray(obs[k]).size) for k in text_keys
    }
    for r, (kind, key, pos) in enumerate(rows):
        if kind == "sense":
            without[key] = probs[r]
        elif kind == "word":
            words[key][pos] = probs[r]
    fusion = probe.weights(0) if probe is not None else None
    return Analysis(probs[0], float(value[0]), without, words, fusion, next_state)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    A batch of a dozen small observations runs 10-20x faster on one thread than on
    an OpenMP pool that competes with other work for the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class EpisodeLog:
    """The running episode: its seed, step count, return and outcome."""

    seed: int
    steps: int = 0
    ret: float = 0.0
    done: bool = False
    success: bool | None = None
    actions: list[int] = field(default_factory=list)


class Panel:
    """Episodes of one run's agent, stepped by :meth:`step`; :meth:`state` is what the page draws.

    Args:
        run: The loaded run.
        seed: Seed of the first episode; each next episode takes the next seed.
    """

    def __init__(self, run: LoadedRun, seed: int) -> None:
        self.run = run
        self.env = run.make_env()
        self.adapter = run.agent.adapter
        self.adapter_state = self.adapter.new_state(1)
        self.actions = action_names(self.env)
        self.network = run.network
        self.modalities = dict(self.network.encoder.modalities)
        self.text_keys = [k for k, m in self.modalities.items() if m == "text"]
        self.probe = _FusionProbe(self.network)
        self.masked: set[str] = set()
        self.sample = False
        self.rng = np.random.default_rng(seed)
        self.episodes = 0
        self.last_action: tuple[int, str] | None = None
        self.reset(seed)

    # ---------------------------------------------------------------- episode
    def reset(self, seed: int) -> None:
        """Start an episode on ``seed`` (a policy with memory starts from a zero state)."""
        raw, self.info = self.env.reset(seed=int(seed))
        self.adapter_state.reset()
        # A policy with memory: its state before the current observation (None: zeros).
        self.memory_state: Tensor | None = None
        self._observe(raw)
        self.log = EpisodeLog(seed=int(seed))
        self.last_action = None
        self._refresh()

    def _observe(self, raw: Any) -> None:
        """Keep the raw observation and convert it as the policy was trained to take it."""
        self.raw = raw
        self.obs = self.adapter.adapt(raw, self.adapter_state)

    def _refresh(self) -> None:
        self.analysis = analyse(
            self.network, self.obs, self.masked, self.text_keys, self.probe, self.memory_state
        )

    def policy_action(self) -> int:
        """The agent's action for the current observation (greedy, or sampled when set)."""
        probs = self.analysis.probs
        if self.sample and self.network.kind != "q":
            return int(self.rng.choice(len(probs), p=probs / probs.sum()))
        return int(np.argmax(probs))

    def step(self, action: int | None = None) -> None:
        """One step: ``action`` (a person's) or the agent's; a finished episode restarts first.

        Raises:
            ValueError: ``action`` is not one of the env's actions.
        """
        if self.log.done:
            self.episodes += 1
            self.reset(self.log.seed + 1)
            return
        who = "agent"
        if action is None:
            action = self.policy_action()
        else:
            if not 0 <= int(action) < len(self.actions):
                raise ValueError(
                    f"action {action!r} is not one of 0..{len(self.actions) - 1} ({self.actions})."
                )
            who = "person"
        raw, reward, terminated, truncated, self.info = self.env.step(int(action))
        # The episode goes on from the state this step's observation left (whoever acted).
        self.memory_state = self.analysis.next_state
        self._observe(raw)
        self.log.steps += 1
        self.log.ret += float(reward)
        self.log.actions.append(int(action))
        self.last_action = (int(action), who)
        if terminated or truncated:
            self.log.done = True
            success = self.info.get("is_success")
            self.log.success = None if success is None else bool(success)
        self._refresh()

    def set_mask(self, key: str, masked: bool) -> None:
        """Switch a sense off (``masked``) or back on; the agent acts without it.

        Raises:
            ValueError: ``key`` is not one of the policy's observation keys.
        """
        if key not in self.modalities:
            raise ValueError(f"unknown sense {key!r}; this policy reads {list(self.modalities)}.")
        (self.masked.add if masked else self.masked.discard)(key)
        self._refresh()

    # ---------------------------------------------------------------- drawing
    def game(self) -> Any:
        """Our game behind the env (None for other envs)."""
        return getattr(self.env.unwrapped, "game", None)

    def audio_config(self, key: str) -> AudioConfig | None:
        """Mel settings of an audio key: our game's, or the run's waveform adapter's."""
        transform = self.run.agent.adapter.transforms.get(key)
        if isinstance(transform, WaveformTransform):
            return transform.audio
        game = self.game()
        return getattr(game, "audio_cfg", None) if game is not None else None

    def sound(self, key: str, seconds: float = PLAYBACK_SECONDS) -> Sound | None:
        """The sound behind an audio key.

        Exact for our navigation games (the game renders it) and for a raw waveform the
        run converts (the window of samples its features were computed from, looped);
        else resynthesised from the features.
        """
        transform = self.adapter.transforms.get(key)
        if isinstance(transform, WaveformTransform):
            window = self.adapter_state.buffers[key][0]  # (channels, n_samples) in [-1, 1]
            rate = transform.audio.sample_rate
            return Sound(loop(window, rate, seconds), rate, exact=True)
        exact = game_sound(self.game(), 0, seconds) if key == "audio" else None
        if exact is not None:
            return exact
        return features_sound(np.asarray(self.obs[key]), self.audio_config(key), seconds)

    def raw_words(self, key: str) -> list[str] | None:
        """The words of a raw-string key as the run's text conversion splits them."""
        transform = self.adapter.transforms.get(key)
        if not isinstance(transform, TextTransform) or not isinstance(self.raw, Mapping):
            return None
        text = raw_text(self.raw.get(key))
        return None if text is None else tokenize(text)

    def words(self, key: str) -> list[dict[str, Any]]:
        """The tokens of a text key with each one's occlusion score."""
        ids = np.asarray(self.obs[key]).reshape(-1)
        vocab: Vocabulary | None = self.run.agent.vocabulary or getattr(
            self.env.unwrapped, "vocabulary", None
        )
        raw = self.raw_words(key)
        out = []
        base = self.analysis.probs
        for pos, tid in enumerate(ids.tolist()):
            if tid == PAD_ID:
                continue
            occluded = self.analysis.words[key][pos]
            if raw is not None and pos < len(raw):
                word = raw[pos]  # hashed ids do not decode; the raw text does
            elif vocab is not None and 0 <= tid < len(vocab):
                word = vocab.tokens[tid]
            else:
                word = f"#{tid}"
            out.append(
                {
                    "pos": pos,
                    "id": int(tid),
                    "word": word,
                    "score": round(_tv(base, occluded), 4) if occluded is not None else 0.0,
                }
            )
        return out

    def pose(self) -> dict[str, int] | None:
        """The agent's cell and heading in our navigation games (None elsewhere)."""
        game = self.game()
        if game is None or not hasattr(game, "agent_pos") or not hasattr(game, "heading"):
            return None
        row, col = (int(v) for v in game.agent_pos[0])
        return {"row": row, "col": col, "heading": int(game.heading[0])}

    def state(self) -> dict[str, Any]:
        """Everything the page draws for this panel, JSON-ready."""
        a = self.analysis
        senses = []
        for key, modality in self.modalities.items():
            without = a.without[key]
            senses.append(
                {
                    "key": key,
                    "modality": modality,
                    "masked": key in self.masked,
                    "shift": round(_tv(a.probs, without), 4),
                    "probs_without": [round(float(p), 4) for p in without],
                    "weight": None if a.fusion is None else round(a.fusion.get(key, 0.0), 4),
                }
            )
        frames: dict[str, str] = {}
        for key, modality in self.modalities.items():
            value = np.asarray(self.obs[key])
            if modality == "image" and _is_frame(value):
                frames[key] = png_data_uri(value)
        try:
            rendered: Any = self.env.render()
        except (NotImplementedError, gym.error.Error, TypeError, ValueError):
            rendered = None  # an env that cannot draw itself: the observed frame only
        topdown = (
            png_data_uri(rendered)
            if isinstance(rendered, np.ndarray) and _is_frame(rendered)
            else None
        )
        audio = {}
        for key, modality in self.modalities.items():
            if modality != "audio":
                continue
            feats = np.asarray(self.obs[key], dtype=np.float32)
            if feats.ndim == 2:
                feats = feats[None]
            sound = self.sound(key)
            audio[key] = {
                "mel": np.round(feats, 3).tolist() if feats.ndim == 3 else None,
                "sound": sound.to_json() if sound is not None else None,
            }
        text = {key: self.words(key) for key in self.text_keys}
        instruction = self.info.get("instruction") or getattr(self.env.unwrapped, "mission", None)
        if instruction is None and isinstance(self.raw, Mapping):
            texts = (raw_text(self.raw.get(k)) for k in self.text_keys)
            instruction = next((t for t in texts if t), None)
        greedy = int(np.argmax(a.probs))
        return {
            "run": self.run.name,
            "env_id": self.run.env_id,
            "fusion": self.network.encoder.config.fusion,
            "fusion_weights": self.probe.kind,
            "kind": self.network.kind,
            "episode": self.episodes,
            "seed": self.log.seed,
            "t": self.log.steps,
            "return": round(self.log.ret, 4),
            "done": self.log.done,
            "success": self.log.success,
            "actions": self.actions,
            "probs": [round(float(p), 4) for p in a.probs],
            "value": round(a.value, 4),
            "next_action": greedy,
            "last_action": None
            if self.last_action is None
            else {"index": self.last_action[0], "by": self.last_action[1]},
            "senses": senses,
            "frames": frames,
            "topdown": topdown,
            "text": text,
            "instruction": None if instruction is None else str(instruction),
            "audio": audio,
            "pose": self.pose(),
            "masked": sorted(self.masked),
            "sample": self.sample,
        }

    def close(self) -> None:
        """Close the env."""
        self.env.close()


class Session:
    """One page's episodes: a panel per run, all on the same seed.

    Args:
        runs: The loaded runs (one or two).
        seed: Seed of the first episode.
    """

    def __init__(self, runs: Sequence[LoadedRun], seed: int = 0) -> None:
        self.seed = int(seed)
        self.panels = [Panel(run, self.seed) for run in runs]

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one message from the page and return the new state.

        Messages (``op``): ``state``; ``step`` (optional ``action``: a person's
        action for every panel whose env has the first panel's actions); ``reset`` (optional ``seed``); ``mask`` (``key``,
        ``masked``, optional ``panel``, default all); ``sample`` (``on``).

        Raises:
            ValueError: An unknown op or a bad argument.
        """
        op = message.get("op")
        if op == "step":
            action = message.get("action")
            first = self.panels[0].actions
            for panel in self.panels:
                # A person's action goes to every panel playing a game with the same
                # actions; a panel on another game keeps its agent.
                person = action is not None and panel.actions == first
                panel.step(int(action) if person and action is not None else None)
        elif op == "reset":
            seed = message.get("seed")
            self.seed = int(seed) if seed is not None else self.seed + 1000
            for panel in self.panels:
                panel.episodes = 0
                panel.reset(self.seed)
        elif op == "mask":
            which = message.get("panel")
            targets = self.panels if which is None else [self.panels[int(which)]]
            for panel in targets:
                if str(message.get("key")) in panel.modalities:
                    panel.set_mask(str(message.get("key")), bool(message.get("masked")))
        elif op == "sample":
            for panel in self.panels:
                panel.sample = bool(message.get("on"))
        elif op != "state":
            raise ValueError(f"unknown op {op!r}; expected state, step, reset, mask or sample.")
        return self.state()

    def state(self) -> dict[str, Any]:
        """The state of every panel."""
        return {"seed": self.seed, "panels": [p.state() for p in self.panels]}

    def close(self) -> None:
        """Close every panel's env."""
        for panel in self.panels:
            panel.close()
