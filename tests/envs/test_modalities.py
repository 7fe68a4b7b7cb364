"""The design's claims about which sense carries what, checked on the games' outputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

import envs
from envs.core.audio import TIMBRE_NAMES, TIMBRES, AudioConfig, mel_filterbank
from envs.core.grid import DIR_VEC
from envs.core.navigation import SPEAKER_TILE, NavigationGame
from envs.core.render import COLOUR_NAMES, COLOURS, SHAPES
from envs.core.text import Vocabulary
from envs.games.modality_probe import ANSWER_WORDS, TONES

P_MIN = 1e-3  # significance floor for the uniformity / independence tests (fixed seeds)


def tile_crop(
    image: np.ndarray, game: NavigationGame, i: int, pos: np.ndarray
) -> np.ndarray | None:
    """Pixels of world cell ``pos`` in world ``i``'s observed frame; None if out of view."""
    if game.view == "topdown":
        r = game.renderer
        top, left, t = r.top + pos[0] * r.tile, r.left + pos[1] * r.tile, r.tile
        return image[top : top + t, left : left + t]
    # Egocentric: the agent at the bottom centre facing up, its right to the right.
    d = np.asarray(pos) - game.agent_pos[i]
    ahead = int(d @ DIR_VEC[game.heading[i]])
    lateral = int(d @ DIR_VEC[(game.heading[i] + 1) % 4])
    v, e = game.view_size, game.ego
    if not (0 <= ahead < v and abs(lateral) <= v // 2):
        return None
    top, left, t = e.top + (v - 1 - ahead) * e.tile, e.left + (v // 2 + lateral) * e.tile, e.tile
    return image[top : top + t, left : left + t]


def energy(audio: np.ndarray) -> np.ndarray:
    """Linear mel energy per ear, ``(..., 2)``, from log-mel features."""
    return np.exp(audio.astype(np.float64)).sum(axis=(-2, -1))


# -- GoToObject ----------------------------------------------------------------------
def test_goto_target_is_uniform() -> None:
    n = 2000
    vec = envs.make_vec("mbm/GoToObject-v0", n, n_objects=3)
    vec.reset(seed=0)
    game = vec.unwrapped.game
    ar = np.arange(n)
    assert chisquare(np.bincount(game.target, minlength=3)).pvalue > P_MIN
    colour = game.obj_colour[ar, game.target]
    shape = game.obj_shape[ar, game.target]
    assert chisquare(np.bincount(colour, minlength=len(COLOUR_NAMES))).pvalue > P_MIN
    assert chisquare(np.bincount(shape, minlength=len(SHAPES))).pvalue > P_MIN


@pytest.mark.parametrize("view", ["egocentric", "topdown"])
@pytest.mark.parametrize("n_objects", [2, 3, 6])
def test_goto_instruction_names_the_target_and_only_it(n_objects: int, view: str) -> None:
    n = 300
    vec = envs.make_vec("mbm/GoToObject-v0", n, n_objects=n_objects, view=view)
    obs, info = vec.reset(seed=1)
    game = vec.unwrapped.game
    seen = 0
    for i in range(n):
        words = info["instruction"][i].split()
        colours = [w for w in words if w in COLOUR_NAMES]
        shapes = [w for w in words if w in SHAPES]
        assert len(colours) == 1 and len(shapes) == 1, info["instruction"][i]
        named = (COLOUR_NAMES.index(colours[0]), SHAPES.index(shapes[0]))
        looks = list(zip(game.obj_colour[i].tolist(), game.obj_shape[i].tolist(), strict=True))
        assert looks[game.target[i]] == named
        assert looks.count(named) == 1, "two objects match the instruction"
        # Distractors share exactly one attribute with the target, so both words matter.
        for j, (c, s) in enumerate(looks):
            if j != game.target[i]:
                assert (c == named[0]) != (s == named[1]), (looks, named)
        # The frame shows each object in view in its colour at its cell.
        for j, (c, _) in enumerate(looks):
            crop = tile_crop(obs["image"][i], game, i, game.obj_pos[i, j])
            if crop is None:
                continue
            seen += 1
            assert (crop == np.array(COLOURS[COLOUR_NAMES[c]], np.uint8)).all(-1).any()
    # Top-down every object is in view; egocentric, many are (the view is 7x7 of an 8x8 room).
    assert seen == n * n_objects if view == "topdown" else seen > n * n_objects // 4
    # Both kinds of distractor occur when there is room for both.
    if n_objects >= 3:
        same_colour = game.obj_colour == game.obj_colour[np.arange(n), game.target][:, None]
        assert (same_colour.sum(1) >= 2).all()


# -- FindSound -----------------------------------------------------------------------
@pytest.mark.parametrize("view", ["egocentric", "topdown"])
def test_findsound_objects_look_alike(view: str) -> None:
    vec = envs.make_vec("mbm/FindSound-v0", 50, n_objects=4, view=view)
    obs, _ = vec.reset(seed=2)
    game = vec.unwrapped.game
    renderer = game.renderer if view == "topdown" else game.ego
    reference = renderer.tiles[SPEAKER_TILE]
    assert (reference != reference[0, 0]).any(), "the object tile is blank"
    seen = 0
    for i in range(50):
        for j in range(4):
            crop = tile_crop(obs["image"][i], game, i, game.obj_pos[i, j])
            if crop is not None:
                seen += 1
                np.testing.assert_array_equal(crop, reference)
    assert seen == 200 if view == "topdown" else seen > 50
    # Only the target sounds.
    loud = game.loudness > 0
    np.testing.assert_array_equal(loud.argmax(1), game.target)
    assert (loud.sum(1) == 1).all()


def _lateral_heading(source: np.ndarray, agent: np.ndarray) -> tuple[int, float]:
    """Heading that puts the source most to the agent's right, and how lateral it is."""
    v = (source - agent).astype(float)
    v /= np.linalg.norm(v)
    lateral = [float(v @ DIR_VEC[(h + 1) % 4]) for h in range(4)]
    best = int(np.argmax(lateral))
    return best, lateral[best]


def test_findsound_louder_in_the_ear_facing_the_source() -> None:
    env = envs.make("mbm/FindSound-v0")
    game = env.game
    right_wins = left_wins = trials = 0
    for seed in range(120):
        env.reset(seed=seed)
        src = game.obj_pos[0, game.target[0]]
        heading, lateral = _lateral_heading(src, game.agent_pos[0])
        if lateral < 0.7:
            continue
        trials += 1
        game.heading[0] = heading  # source on the right
        e = energy(game.observe()["audio"][0])
        right_wins += e[1] > e[0]
        game.heading[0] = (heading + 2) % 4  # turned around: source on the left
        e = energy(game.observe()["audio"][0])
        left_wins += e[0] > e[1]
    assert trials >= 60
    assert right_wins / trials >= 0.95, (right_wins, trials)
    assert left_wins / trials >= 0.95, (left_wins, trials)


def test_findsound_louder_when_closer() -> None:
    env = envs.make("mbm/FindSound-v0", grid_size=10)
    game = env.game
    g = game.grid_size
    closer = trials = 0
    for seed in range(150):
        env.reset(seed=seed)
        src = game.obj_pos[0, game.target[0]]
        for d in range(4):  # approach along heading d: agent at src - k * DIR_VEC[d]
            far_k = 4
            near, far = src - DIR_VEC[d], src - far_k * DIR_VEC[d]
            inside = all(1 <= c <= g - 2 for c in (*near, *far))
            if (
                not inside
                or (game.occupant[0][tuple(near)] >= 0)
                or game.occupant[0][tuple(far)] >= 0
            ):
                continue
            game.heading[0] = d
            e = {}
            for name, pos in (("near", near), ("far", far)):
                game.agent_pos[0] = pos
                e[name] = np.mean([energy(game.observe()["audio"][0]).sum() for _ in range(3)])
            trials += 1
            closer += e["near"] > e["far"]
            break
    assert trials >= 60
    assert closer / trials >= 0.95, (closer, trials)


# -- SoundMaze -----------------------------------------------------------------------
def test_soundmaze_timbres_distinct_and_named_by_the_instruction() -> None:
    n = 500
    vec = envs.make_vec("mbm/SoundMaze-v0", n, n_objects=6)
    _, info = vec.reset(seed=4)
    game = vec.unwrapped.game
    for i in range(n):
        assert len(set(game.src_id[i].tolist())) == 6, game.src_id[i]
        verb = TIMBRES[TIMBRE_NAMES[game.src_id[i, game.target[i]]]]
        assert verb in info["instruction"][i].split()
        others = {
            TIMBRES[TIMBRE_NAMES[s]] for j, s in enumerate(game.src_id[i]) if j != game.target[i]
        }
        assert not others & set(info["instruction"][i].split())
    assert (game.loudness == 1.0).all()
    # The target's timbre is uniform over the six.
    target_timbre = game.src_id[np.arange(n), game.target]
    assert chisquare(np.bincount(target_timbre, minlength=6)).pvalue > P_MIN


def test_soundmaze_timbres_are_audibly_distinct() -> None:
    """A nearest-centroid listener tells the six timbres apart from one clip each."""
    vec = envs.make_vec("mbm/SoundMaze-v0", 1)
    bank = vec.unwrapped.game.bank
    cfg = bank.cfg
    v = cfg.variants
    feats = np.stack(
        [
            bank.mix_features(
                np.full((v, 1), s),  # source s alone
                np.arange(v),  # each clip variant once
                np.full((v, 1, 2), 0.5, np.float32),
                np.full(v, 0.1, np.float32),
            )[:, 0].mean(-1)  # left ear, time-averaged mel profile
            for s in range(len(TIMBRE_NAMES))
        ]
    )  # (timbres, variants, mels)
    correct = 0
    for s in range(len(TIMBRE_NAMES)):
        for k in range(v):
            keep = np.arange(v) != k
            centroids = np.stack(
                [
                    feats[t, keep].mean(0) if t == s else feats[t].mean(0)
                    for t in range(len(TIMBRE_NAMES))
                ]
            )
            correct += np.argmin(((centroids - feats[s, k]) ** 2).sum(-1)) == s
    assert correct == len(TIMBRE_NAMES) * v


# -- ModalityProbe -------------------------------------------------------------------
def _tone_bands(n_answers: int) -> list[int]:
    cfg = AudioConfig()
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_freqs)
    return [int(np.argmax(fb[:, np.argmin(np.abs(freqs - f))])) for f in TONES[:n_answers]]


def image_oracle(image: np.ndarray, n_answers: int) -> np.ndarray:
    """The stripe holding the most pure-white pixels."""
    bw = image.shape[2] // n_answers
    white = (image == 255).all(-1).sum(1)  # (n, W)
    return np.stack([white[:, a * bw : (a + 1) * bw].sum(1) for a in range(n_answers)], 1).argmax(1)


def text_oracle(text: np.ndarray, vocab: Vocabulary, n_answers: int) -> np.ndarray:
    """The first answer word in the sentence (-1 if none)."""
    ids = [vocab.word_id(w) for w in ANSWER_WORDS[:n_answers]]
    return np.array([next((ids.index(t) for t in row if t in ids), -1) for row in text.tolist()])


def audio_oracle(audio: np.ndarray, n_answers: int) -> np.ndarray:
    """The candidate tone whose mel band holds the most energy."""
    per_band = np.exp(audio.astype(np.float64)).mean(axis=(1, 3))  # (n, mels)
    return per_band[:, _tone_bands(n_answers)].argmax(1)


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Held-out accuracy of a nearest-centroid classifier (a linear read-out)."""
    x = x.reshape(len(x), -1).astype(np.float32)
    half = len(x) // 2
    centroids = np.stack([x[:half][y[:half] == c].mean(0) for c in range(n_classes)])
    # |x - c|^2 up to the per-row constant |x|^2.
    d = (centroids**2).sum(-1)[None, :] - 2.0 * x[half:] @ centroids.T
    return float((d.argmin(1) == y[half:]).mean())


@pytest.mark.parametrize("n_answers", [4, 8])
@pytest.mark.parametrize("cue", ["image", "text", "audio"])
def test_probe_only_the_cued_sense_carries_the_answer(cue: str, n_answers: int) -> None:
    n = 1200
    vec = envs.make_vec("mbm/ModalityProbe-v0", n, cue=cue, n_answers=n_answers)
    obs, _ = vec.reset(seed=11)
    answer = vec.unwrapped.game.answer.copy()
    np.testing.assert_array_equal(vec.expert_actions(), answer)
    assert chisquare(np.bincount(answer, minlength=n_answers)).pvalue > P_MIN
    chance = 1.0 / n_answers
    guesses = {
        "image": image_oracle(obs["image"], n_answers),
        "text": text_oracle(obs["text"], vec.unwrapped.vocabulary, n_answers),
        "audio": audio_oracle(obs["audio"], n_answers),
    }
    for modality, guess in guesses.items():
        accuracy = float((guess == answer).mean())
        if modality == cue:
            assert accuracy >= 0.99, f"{modality} oracle {accuracy:.3f}"
        else:
            assert accuracy <= chance + 0.05, f"{modality} leaks the answer: {accuracy:.3f}"
            # A generic linear read-out does no better than chance either.
            nc = nearest_centroid_accuracy(obs[modality], answer, n_answers)
            assert nc <= chance + 0.06, f"{modality} linear read-out {nc:.3f}"


@pytest.mark.parametrize("cue", ["image", "audio"])
def test_probe_text_independent_of_answer_when_not_cued(cue: str) -> None:
    n, n_answers = 2000, 4
    vec = envs.make_vec("mbm/ModalityProbe-v0", n, cue=cue, n_answers=n_answers)
    obs, _ = vec.reset(seed=12)
    answer = vec.unwrapped.game.answer
    size = len(vec.unwrapped.vocabulary)
    for pos in range(obs["text"].shape[1]):
        table = np.zeros((n_answers, size))
        np.add.at(table, (answer, obs["text"][:, pos]), 1)
        table = table[:, table.sum(0) > 0]
        assert chi2_contingency(table).pvalue > P_MIN / 6, f"text position {pos}"


@pytest.mark.parametrize("cue", ["text", "audio"])
def test_probe_image_independent_of_answer_when_not_cued(cue: str) -> None:
    n, n_answers = 2000, 4
    vec = envs.make_vec("mbm/ModalityProbe-v0", n, cue=cue, n_answers=n_answers)
    obs, _ = vec.reset(seed=13)
    answer = vec.unwrapped.game.answer
    assert obs["image"].max() < 255, "a bright block is drawn although the cue is not image"
    # The image is one of a few noise frames; which one must not depend on the answer.
    ids: dict[bytes, int] = {}
    frame_id = np.array([ids.setdefault(img.tobytes(), len(ids)) for img in obs["image"]])
    assert len(ids) > 1
    table = np.zeros((n_answers, len(ids)))
    np.add.at(table, (answer, frame_id), 1)
    assert chi2_contingency(table).pvalue > P_MIN


@pytest.mark.parametrize("cue", ["image", "text"])
def test_probe_audio_is_noise_only_when_not_cued(cue: str) -> None:
    n, n_answers = 2000, 8
    vec = envs.make_vec("mbm/ModalityProbe-v0", n, cue=cue, n_answers=n_answers)
    obs, _ = vec.reset(seed=14)
    answer = vec.unwrapped.game.answer
    per_band = np.exp(obs["audio"].astype(np.float64)).mean(axis=(1, 3))
    bands = _tone_bands(n_answers)
    # Energy in each candidate tone band has the same mean whatever the answer.
    for a in range(n_answers):
        in_class = per_band[answer == a][:, bands[a]]
        out_class = per_band[answer != a][:, bands[a]]
        assert in_class.mean() < 1.3 * out_class.mean(), f"tone band {a} louder when answer={a}"
