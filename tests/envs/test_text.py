"""Instruction words: any script is read, ASCII exactly as before."""

from __future__ import annotations

import re
import string

import numpy as np

from envs.core.text import tokenize
from mbm_agent.training.adapter import HashedWords


def test_words_of_any_script_are_read() -> None:
    assert tokenize("Café crème, à GAUCHE!") == ["café", "crème", "à", "gauche"]
    assert tokenize("向左 走") == ["向左", "走"]
    # combining marks stay inside their word (Devanagari vowel signs, Thai vowels)
    assert tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]
    assert tokenize("สวัสดี") == ["สวัสดี"]
    assert tokenize("Straße \uff12 go_to") == ["strasse", "2", "go", "to"]  # NFKC + casefold


def test_ascii_text_splits_as_it_always_has() -> None:
    """Saved vocabularies of ASCII games keep their ids: same tokens as [a-z0-9]+."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.printable))
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
        assert tokenize(text) == re.findall(r"[a-z0-9]+", text.lower()), repr(text)


def test_hashed_words_tell_non_ascii_instructions_apart() -> None:
    """Unseen words of another script get ids of their own (they were all dropped)."""
    codec = HashedWords(table_size=1024, max_len=4)
    left, right = ([codec.word_id(w) for w in tokenize(t)] for t in ("向左", "向右"))
    assert len(left) == len(right) == 1 and left != right
