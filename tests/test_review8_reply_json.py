"""Review of the simdjson reading of long replies (gen.teachers.replyjson): where simdjson cannot be
imported every long reply must still be orjson's, and the failed import must not be paid again per
reply; and numbers and strings, drawn at random, read exactly as orjson reads them."""

from __future__ import annotations

import importlib.abc
import math
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.teachers import replyjson

PAD = "x" * replyjson.FAST_MIN  # long enough for the fast path


class _NotInstalled(importlib.abc.MetaPathFinder):
    """simdjson as if not installed (or its extension could not load): each import looked up fails."""

    def __init__(self) -> None:
        self.asked = 0

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name.split(".")[0] in ("simdjson", "csimdjson"):
            self.asked += 1
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


def test_without_simdjson_long_replies_are_orjsons_and_the_import_is_tried_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    finder = _NotInstalled()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in ("simdjson", "csimdjson"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(replyjson, "_parser", None)  # not loaded yet, as in a fresh process
    for i in range(5):
        raw = orjson.dumps({"choices": [{"message": {"reasoning_content": PAD, "content": str(i)}}]})
        assert replyjson.loads(raw) == orjson.loads(raw)
    with pytest.raises(orjson.JSONDecodeError):  # refusals stay orjson's
        replyjson.loads(b'{"p": "%s", "n": NaN}' % PAD.encode())
    # A failed import searches the whole sys.path again (~30 us, several times what simdjson saves):
    # it is tried once, then orjson reads every reply.
    assert finder.asked == 1


def _spelt(value: object) -> object:
    if isinstance(value, float):
        return ("float", value.hex() if math.isfinite(value) else repr(value))
    if isinstance(value, list):
        return [_spelt(v) for v in value]
    if isinstance(value, dict):
        return [(k, _spelt(v)) for k, v in value.items()]
    return (type(value).__name__, value)


def _outcome(read, raw: bytes) -> object:  # noqa: ANN001
    try:
        return _spelt(read(raw))
    except Exception:
        return "refused"


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=40)
_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.tuples(
        st.sampled_from(["", "-"]),
        _DIGITS,
        st.one_of(st.just(""), _DIGITS.map(lambda d: "." + d)),
        st.one_of(st.just(""), st.tuples(st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                                         st.integers(0, 400)).map(lambda t: f"{t[0]}{t[1]}{t[2]}")),
    ).map("".join),
)  # fmt: skip
_PIECES = [b"a", b"\\n", b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\u00e9", b"\\", b'\\"',
           b"\x00", b"\x1f", b"\xc3\xa9", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xf4\x90\x80\x80",
           b"\xe0\x80\xaf", b"\xef\xbb\xbf", b"\xff", b'"']  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_NUMBERS, min_size=1, max_size=20), st.lists(st.sampled_from(_PIECES), max_size=6))
def test_numbers_and_strings_read_as_orjson_reads_them(numbers: list[str], pieces: list[bytes]) -> None:
    raw = b'{"p": "%s", "v": [%s], "s": "%s"}' % (PAD.encode(), ",".join(numbers).encode(), b"".join(pieces))
    assert _outcome(replyjson.loads, raw) == _outcome(orjson.loads, raw)
    fast = _outcome(replyjson._fast, raw)  # the fast parser alone: refuses, or reads alike
    assert fast == "refused" or fast == _outcome(orjson.loads, raw)
