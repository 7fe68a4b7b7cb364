"""ModalityProbe: a one-step question whose answer only one sense carries."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.audio import TIMBRE_NAMES, shared_bank
from envs.core.env import GameEnv, GameVectorEnv
from envs.core.game import BatchedGame, Obs, check_int_arg, frame_size_arg
from envs.core.text import Vocabulary

CUES = ("image", "text", "audio")
ANSWER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
TEMPLATES = ("the answer is {w}", "{w} is the answer", "pick {w}", "choose {w} now")
TONES = (250.0, 500.0, 800.0, 1200.0, 1700.0, 2300.0, 2900.0, 3500.0)
MAX_LEN = 6
_NOISE_FRAMES = 16


class ModalityProbeGame(BatchedGame):
    """ModalityProbe: a one-step question answered by one chosen sense.

    ## Description
    A unit test for encoders. Each episode is one step: the agent sees, reads and
    hears, then answers with one of ``n_answers`` actions. The answer is carried
    by exactly one modality, chosen by ``cue``; the other two are pure noise.

    * ``cue="image"``: a bright block in the answer's vertical stripe of a noisy frame.
    * ``cue="text"``: "the answer is three" (four phrasings); otherwise random words.
    * ``cue="audio"``: a pure tone whose pitch is the answer, in noise; otherwise noise only.

    An agent without the cued sense scores ``1 / n_answers``.

    ## Observation Space
    A ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | `image` | `Box(0, 255, (H, W, 3), uint8)` | noisy RGB frame, with the answer block when `cue="image"` |
    | `text` | `Box(0, V - 1, (6,), int64)` | token ids of the sentence (or of random words), 0 = padding |
    | `audio` | `Box(-13.82, 12.0, (2, 32, 8), float32)` | stereo log-mel of noise, plus the answer tone when `cue="audio"` |

    ## Action Space
    ``Discrete(n_answers)``: the answer.

    ## Rewards
    1 for the right answer, 0 otherwise (the episode has a single step).

    ## Starting State
    A uniformly random answer; noise levels drawn each step.

    ## Episode End
    Termination: after the single answer. Truncation: never
    (``env.spec.max_episode_steps`` is 1).
    ``info["success"]`` and ``info["is_success"]`` (the same bool; ``is_success`` is the
    key SB3's ``Monitor`` and RL Zoo read) are True on the winning step, so at the
    episode's end they say whether it succeeded; ``info["instruction"]`` holds the
    instruction as text. Once the episode has ended, ``step()`` raises
    ``gymnasium.error.ResetNeeded`` until ``reset()`` (the vector env resets finished
    worlds itself).

    ## Arguments
    ``cue`` ("image", "text" or "audio"; default "image"), ``n_answers`` (4, in
    [2, 8]), ``frame_size`` (64).

    ## Version History
    * v0: initial version. Since added without changing any episode: ``info["is_success"]``,
      ``spec.max_episode_steps``, ``render()`` returns None without a ``render_mode``, and
      ``step()`` after the episode's end raises instead of replaying the last step.
    """

    modalities = ("image", "text", "audio")
    action_names: ClassVar[tuple[str, ...]] = ANSWER_WORDS
    vocabulary: Vocabulary  # set in __init__ (BatchedGame's may be None)

    def __init__(
        self,
        num_worlds: int,
        *,
        cue: str = "image",
        n_answers: int = 4,
        frame_size: int | tuple[int, int] = 64,
    ) -> None:
        if cue not in CUES:
            raise ValueError(f"cue must be one of {CUES}, got {cue!r}.")
        self.n_answers = check_int_arg("n_answers", n_answers, 2, len(ANSWER_WORDS))
        # The one game whose actions depend on its arguments: BatchedGame declares
        # action_names a ClassVar (every other game's is), so this instance's narrows it.
        self.action_names = ANSWER_WORDS[: self.n_answers]  # type: ignore[misc]
        super().__init__(num_worlds, max_steps=1)
        self.cue = cue
        self.chance_level = 1.0 / self.n_answers
        h, w = frame_size_arg(frame_size, 2 * self.n_answers)
        self.frame_size = (h, w)
        texts = [t.format(w=a) for t in TEMPLATES for a in ANSWER_WORDS]
        self.vocabulary = Vocabulary.from_texts(texts, max_len=MAX_LEN)
        self._answer_ids = np.array([self.vocabulary.word_id(a) for a in ANSWER_WORDS])
        self._template_ids = [self.vocabulary.encode(t.format(w="zero")) for t in TEMPLATES]
        self._slot = [
            int(np.flatnonzero(ids == self.vocabulary.word_id("zero"))[0])
            for ids in self._template_ids
        ]
        self.bank = shared_bank(self.audio_cfg, TONES)
        cfg = self.audio_cfg
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "text": spaces.Box(0, len(self.vocabulary) - 1, (MAX_LEN,), np.int64),
                "audio": spaces.Box(cfg.low, cfg.high, (2, cfg.n_mels, cfg.n_frames), np.float32),
            }
        )
        self.action_space = spaces.Discrete(self.n_answers)
        noise_rng = np.random.default_rng(4321)
        self._noise = noise_rng.integers(0, 110, (_NOISE_FRAMES, h, w, 3), dtype=np.uint8)
        n = self.num_worlds
        self.answer = np.zeros(n, dtype=np.int64)
        self.text = np.zeros((n, MAX_LEN), dtype=np.int64)
        self.block_row = np.zeros(n, dtype=np.int64)

    def _generate(self, idx: NDArray[np.intp]) -> None:
        m = len(idx)
        u = self.rand.integers(idx, 1 << 30, 3)
        answer = u[:, 0] % self.n_answers
        self.answer[idx] = answer
        h, _ = self.frame_size
        self.block_row[idx] = u[:, 2] % (h - h // 4 + 1)
        if self.cue == "text":
            template = u[:, 1] % len(TEMPLATES)
            table = np.stack(self._template_ids)[template]
            table[np.arange(m), np.array(self._slot)[template]] = self._answer_ids[answer]
            self.text[idx] = table
            self.instruction[idx] = [
                TEMPLATES[t].format(w=ANSWER_WORDS[a])
                for t, a in zip(template, answer, strict=True)
            ]
        else:
            words = self.rand.integers(idx, len(self.vocabulary) - 2, MAX_LEN) + 2
            self.text[idx] = words
            self.instruction[idx] = [self.vocabulary.decode(w) for w in words]

    def _transition(
        self, actions: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        self.success = actions == self.answer
        return self.success.astype(np.float32), np.ones(self.num_worlds, dtype=bool)

    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Noisy image, text and audio of worlds ``idx``; one of them carries the answer."""
        sel = slice(None) if idx is None else idx
        answer = self.answer[sel]
        m = len(answer)
        u = self.rand.uniform(sel, 4)
        noise_frame = (u[:, 0] * _NOISE_FRAMES).astype(np.int64)
        image = self._noise[noise_frame]
        if self.cue == "image":
            h, w = self.frame_size
            bh, bw = h // 4, w // self.n_answers
            rows = self.block_row[sel, None] + np.arange(bh)[None, :]
            cols = answer[:, None] * bw + np.arange(bw)[None, :]
            image[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]] = 255
        loud = (0.3 + 0.7 * u[:, 1]) * (self.cue == "audio")
        audio = self.bank.mix_features(
            (len(TIMBRE_NAMES) + answer)[:, None],
            (u[:, 2] * self.audio_cfg.variants).astype(np.int64),
            np.repeat(loud[:, None, None], 2, axis=2).astype(np.float32),
            (0.05 + 0.15 * u[:, 3]).astype(np.float32),
        )
        return {"image": image, "text": self.text[sel].copy(), "audio": audio}

    def expert_actions(self) -> NDArray[np.int64]:
        """The answer."""
        return self.answer.copy()


class ModalityProbeEnv(GameEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = ModalityProbeGame.__doc__
    game_class = ModalityProbeGame


class ModalityProbeVectorEnv(GameVectorEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = ModalityProbeGame.__doc__
    game_class = ModalityProbeGame
