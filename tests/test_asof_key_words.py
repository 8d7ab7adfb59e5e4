"""The ASOF string-key encoder keeps keys of up to 8 bytes as words in its hash table: keys that
share a word (trailing NUL bytes) or a hash (a 7-byte key and an 8-byte key ending in 'x' hash
alike) stay distinct, and every key of a long column gets the code of its first row."""
import numpy as np
import pyarrow as pa
import pytest

from sabot.fintech.asof import _key_dictionary

TRICKY = ["abcdefg", "abcdefgx", "ab", "ab\x00", "ab\x00\x00\x00\x00\x00\x00", "", "\x00",
          "abcdefgh", "abcdefghi", "abcdefghx", "BTC/USD", "DOGE/USD", None]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_words_that_collide_stay_distinct(string_type):
    rng = np.random.default_rng(3)
    values = [TRICKY[i] for i in rng.integers(0, len(TRICKY), 5000)]
    arr = pa.array(values, string_type).slice(3)
    codes, dictionary = _key_dictionary(arr, "left", "k")
    assert len(dictionary) == len({v for v in values[3:] if v is not None})
    decoded = [None if c == len(dictionary) else dictionary[int(c)].as_py() for c in codes]
    assert decoded == values[3:]


def test_last_key_at_the_end_of_the_data_buffer():
    """A short key whose 8-byte read would run past the data buffer is read byte by byte."""
    arr = pa.array(["xyz", "abcdefgh", "q"])
    codes, dictionary = _key_dictionary(arr, "left", "k")
    assert dictionary.to_pylist() == ["xyz", "abcdefgh", "q"] and codes.tolist() == [0, 1, 2]
