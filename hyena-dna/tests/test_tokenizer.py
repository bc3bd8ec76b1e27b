"""Tokenizer: exact public ids, IUPAC handling, clear errors, join/truncate/pad helpers."""

import numpy as np
import pytest

from hyena_dna import tokenizer as tok


def test_public_ids_are_exact():
    assert tok.VOCAB == {
        "[CLS]": 0,
        "[SEP]": 1,
        "[BOS]": 2,
        "[MASK]": 3,
        "[PAD]": 4,
        "[RESERVED]": 5,
        "[UNK]": 6,
        "A": 7,
        "C": 8,
        "G": 9,
        "T": 10,
        "N": 11,
    }


def test_encode_is_case_insensitive_and_maps_iupac_to_n():
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert tok.encode("acgtn").tolist() == [7, 8, 9, 10, 11]
    assert tok.encode("RYSWKMBDHV").tolist() == [11] * 10
    assert tok.encode(b"GATTACA").tolist() == [9, 7, 10, 10, 7, 8, 7]
    assert tok.encode("").dtype == np.uint8 and len(tok.encode("")) == 0


@pytest.mark.parametrize("bad, char, pos", [("ACGX", "X", 3), ("AC GT", " ", 2), ("ACG-T", "-", 3), ("ACé", "é", 2)])
def test_encode_rejects_other_characters_naming_sequence_and_char(bad, char, pos):
    with pytest.raises(tok.InvalidSequenceError) as err:
        tok.encode(bad, name="read_17")
    msg = str(err.value)
    assert "read_17" in msg and repr(char) in msg and f"position {pos}" in msg


def test_join_truncate_pad():
    a, b = tok.encode("AC"), tok.encode("GTT")
    joined = tok.join([a, b])
    assert joined.tolist() == [7, 8, tok.SEP_ID, 9, 10, 10]
    assert tok.join([]).tolist() == []
    assert tok.truncate(joined, 4).tolist() == [tok.SEP_ID, 9, 10, 10]  # keeps the end
    ids, mask = tok.pad_left([a, joined], length=5)
    assert ids.tolist() == [[4, 4, 4, 7, 8], [8, tok.SEP_ID, 9, 10, 10]]
    assert mask.tolist() == [[False, False, False, True, True], [True] * 5]
    ids, mask = tok.pad_left([a, b])
    assert ids.shape == (2, 3) and ids[0, 0] == tok.PAD_ID and mask.sum() == 5


def test_decode_roundtrip():
    assert tok.decode(tok.join([tok.encode("acg"), tok.encode("T")])) == "ACG[SEP]T"
