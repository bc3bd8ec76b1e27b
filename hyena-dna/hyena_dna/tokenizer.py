"""HyenaDNA character tokenizer: DNA strings to the public token ids, vectorised with a byte table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The exact ids of the public HyenaDNA vocabulary (CharacterTokenizer with characters "ACGTN").
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = 0, 1, 2, 3, 4, 5, 6
VOCAB: dict[str, int] = {
    "[CLS]": CLS_ID,
    "[SEP]": SEP_ID,
    "[BOS]": BOS_ID,
    "[MASK]": MASK_ID,
    "[PAD]": PAD_ID,
    "[RESERVED]": RESERVED_ID,
    "[UNK]": UNK_ID,
    "A": 7,
    "C": 8,
    "G": 9,
    "T": 10,
    "N": 11,
}
VOCAB_SIZE = len(VOCAB)

# IUPAC ambiguity codes (and U for RNA-style reads) that real 16S data contains; HyenaDNA only knows N.
_AMBIGUOUS = "RYSWKMBDHVN"
_INVALID = 255

_TABLE = np.full(256, _INVALID, dtype=np.uint8)
for _base in "ACGT":
    _TABLE[ord(_base)] = _TABLE[ord(_base.lower())] = VOCAB[_base]
_TABLE[ord("U")] = _TABLE[ord("u")] = VOCAB["T"]
for _code in _AMBIGUOUS:
    _TABLE[ord(_code)] = _TABLE[ord(_code.lower())] = VOCAB["N"]


class InvalidSequenceError(ValueError):
    """A sequence holds a character that is not a nucleotide or IUPAC code."""


def encode(sequence: str | bytes, name: str | None = None) -> np.ndarray:
    """Token ids (uint8) of one DNA string; case-insensitive, IUPAC ambiguity codes become N."""
    raw = sequence.encode("latin-1", errors="replace") if isinstance(sequence, str) else bytes(sequence)
    ids = _TABLE[np.frombuffer(raw, dtype=np.uint8)]
    bad = np.flatnonzero(ids == _INVALID)
    if bad.size:
        pos = int(bad[0])
        char = sequence[pos] if isinstance(sequence, str) else chr(raw[pos])
        where = f"sequence {name!r}" if name is not None else "a sequence"
        raise InvalidSequenceError(
            f"{where} has the character {char!r} at position {pos} ({bad.size} invalid in total); "
            f"allowed are A, C, G, T, U and the IUPAC codes {', '.join(_AMBIGUOUS)} (any case). "
            "Remove or replace it (e.g. with N)."
        )
    return ids


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """The string of token ids; special tokens are written by name (for debugging and tests)."""
    names = {v: k for k, v in VOCAB.items()}
    return "".join(names.get(int(i), "[UNK]") for i in ids)


def join(reads: Sequence[np.ndarray], sep_id: int = SEP_ID) -> np.ndarray:
    """Concatenate tokenised reads with one [SEP] between consecutive reads."""
    if not reads:
        return np.zeros(0, dtype=np.uint8)
    parts: list[np.ndarray] = []
    sep = np.array([sep_id], dtype=np.uint8)
    for i, read in enumerate(reads):
        if i:
            parts.append(sep)
        parts.append(np.asarray(read, dtype=np.uint8))
    return np.concatenate(parts)


def truncate(ids: np.ndarray, max_length: int) -> np.ndarray:
    """Keep the last ``max_length`` tokens: the model is causal, so the end carries the most context."""
    return ids[-max_length:] if len(ids) > max_length else ids


def pad_left(
    sequences: Sequence[np.ndarray], length: int | None = None, pad_id: int = PAD_ID
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad (and left-truncate) token arrays to one length: (ids int64 (B, L), mask bool (B, L))."""
    if length is None:
        length = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=bool)
    for row, seq in enumerate(sequences):
        seq = truncate(np.asarray(seq), length)
        if len(seq):
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = True
    return ids, mask
