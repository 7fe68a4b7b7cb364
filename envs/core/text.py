"""Instruction tokenisation: a small word-level vocabulary that travels as JSON.

Token id 0 is padding and id 1 is the unknown word, so any instruction a user
types (or a MiniGrid mission string) maps to ids without a crash.
:func:`instruction_table` encodes every instruction a game can say once, so
games look token ids up instead of tokenising each episode.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1

#: A word of ASCII text: a run of letters and digits (``_`` and punctuation split words).
_WORD_RE = re.compile(r"[a-z0-9]+")
_FORMAT = "mbm-agent/vocabulary"
_FORMAT_VERSION = 1


def _word_chars(text: str) -> list[str]:
    """Words of non-ASCII text: runs of letters and digits.

    A combining mark inside a word stays in it (Devanagari vowel signs, Thai vowels,
    a dot above).
    """
    words: list[str] = []
    word: list[str] = []
    for ch in text:
        if ch.isalnum() or (word and unicodedata.category(ch).startswith("M")):
            word.append(ch)
        elif word:
            words.append("".join(word))
            word = []
    if word:
        words.append("".join(word))
    return words


def tokenize(text: str) -> list[str]:
    """Split an instruction into lower-case word tokens (punctuation is dropped).

    Words of any script count (``"café"``, ``"à"``, ``"向左"``), after Unicode NFKC
    normalisation and case folding; for ASCII text the tokens are the runs of
    ``[a-z0-9]`` of the lower-cased text, as they have always been.
    """
    if text.isascii():
        return _WORD_RE.findall(text.lower())
    return _word_chars(unicodedata.normalize("NFKC", text).casefold())


class Vocabulary:
    """Word-level vocabulary with fixed-length encoding.

    Args:
        words: The known words, in id order after ``<pad>`` (0) and ``<unk>`` (1).
            Duplicates are dropped, keeping the first occurrence.
        max_len: Length of every encoded instruction; longer ones are cut with a
            warning and shorter ones padded with 0.
    """

    def __init__(self, words: Iterable[str], max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}.")
        self.max_len = int(max_len)
        tokens = [PAD_TOKEN, UNK_TOKEN]
        seen = set(tokens)
        for word in words:
            if not isinstance(word, str) or not word:
                raise ValueError(f"Vocabulary words must be non-empty strings, got {word!r}.")
            if word not in seen:
                seen.add(word)
                tokens.append(word)
        self.tokens: list[str] = tokens
        self._index: dict[str, int] = {w: i for i, w in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_len: int | None = None) -> Vocabulary:
        """Build a vocabulary from example instructions (words in first-seen order)."""
        texts = list(texts)
        words: list[str] = []
        longest = 1
        for text in texts:
            toks = tokenize(text)
            longest = max(longest, len(toks))
            words.extend(toks)
        return cls(words, max_len if max_len is not None else longest)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.tokens == other.tokens
            and self.max_len == other.max_len
        )

    def __hash__(self) -> int:
        return hash((tuple(self.tokens), self.max_len))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, max_len={self.max_len})"

    def word_id(self, word: str) -> int:
        """Id of one word, ``UNK_ID`` if unknown."""
        return self._index.get(word, UNK_ID)

    def encode(self, text: str, *, warn: bool = True) -> NDArray[np.int64]:
        """Encode an instruction into ``max_len`` token ids (0-padded).

        Unknown words map to ``UNK_ID``. An instruction longer than ``max_len``
        words is cut, with a warning unless ``warn`` is False.
        """
        toks = tokenize(text)
        if len(toks) > self.max_len:
            if warn:
                warnings.warn(
                    f"Instruction {text!r} has {len(toks)} words; cut to max_len="
                    f"{self.max_len}. Build the Vocabulary with a larger max_len to keep it.",
                    stacklevel=2,
                )
            toks = toks[: self.max_len]
        out = np.zeros(self.max_len, dtype=np.int64)
        out[: len(toks)] = [self._index.get(t, UNK_ID) for t in toks]
        return out

    def encode_batch(self, texts: Sequence[str], *, warn: bool = True) -> NDArray[np.int64]:
        """Encode several instructions into an ``(N, max_len)`` array."""
        out = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for i, text in enumerate(texts):
            out[i] = self.encode(text, warn=warn)
        return out

    def decode(self, ids: Iterable[int] | NDArray[np.integer[Any]]) -> str:
        """Turn token ids back into text, skipping padding."""
        words = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == PAD_ID:
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK_TOKEN)
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the vocabulary."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "max_len": self.max_len,
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_dict` output, checking its format."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(
                "Not an mbm-agent vocabulary (expected a JSON object with "
                f'"format": "{_FORMAT}"); was the file written by Vocabulary.save()?'
            )
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"Vocabulary format version {data.get('version')!r} is not supported "
                f"(this mbm-agent reads version {_FORMAT_VERSION}); upgrade mbm-agent."
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or tokens[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(
                f'Vocabulary "tokens" must be a list starting with "{PAD_TOKEN}", "{UNK_TOKEN}".'
            )
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(
                f"Vocabulary tokens repeat {dup}; the file is corrupt (ids would shift)."
            )
        max_len = data.get("max_len")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f'Vocabulary "max_len" must be an integer >= 1, got {max_len!r}.')
        return cls(tokens[2:], max_len)

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """Parse a JSON string written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Vocabulary JSON is corrupt: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | PathLike[str]) -> None:
        """Write the vocabulary to a JSON file."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Vocabulary:
        """Read a vocabulary JSON file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Vocabulary file {p} does not exist.")
        return cls.from_json(p.read_text(encoding="utf-8"))


def instruction_table(
    templates: tuple[str, ...], fields: dict[str, tuple[str, ...]], max_len: int
) -> tuple[Vocabulary, NDArray[np.int64], NDArray[np.object_]]:
    """Every instruction a game can say, encoded once.

    Args:
        templates: Format strings with a ``{field}`` for each key of ``fields``.
        fields: The values each field takes, in index order.
        max_len: Token length of every encoded instruction.

    Returns:
        The vocabulary of all the instructions, their token ids
        ``(len(templates), *field sizes, max_len)`` and their texts
        ``(len(templates), *field sizes)``, both indexed ``[template, *field indices]``.
    """
    names = list(fields)
    shape = (len(templates), *(len(fields[f]) for f in names))
    texts = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        values = {f: fields[f][i] for f, i in zip(names, index[1:], strict=True)}
        texts[index] = templates[index[0]].format(**values)
    vocab = Vocabulary.from_texts(texts.reshape(-1).tolist(), max_len=max_len)
    ids = vocab.encode_batch(texts.reshape(-1).tolist()).reshape(*shape, max_len)
    return vocab, ids, texts
