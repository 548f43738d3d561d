"""Review of the shard writer's trace conversion (gen.shards._traces_array, _with_shared_traces with
`_untraced` messages): the C helpers it reaches through ctypes are its own (it neither changes
`ctypes.pythonapi`'s shared function objects nor trusts what another library sets on them), a Python
without ctypes converts through Arrow, and a batch is what `RecordBatch.from_pylist` makes, or refused
as it refuses, for any row shape."""

from __future__ import annotations

import ctypes
import sys

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gen.shards as shards
from gen.shards import WITHOUT_PANDAS, _conversion_pool, _schemas, _to_batch, _traces_array


@pytest.fixture
def fresh_helpers():
    shards._str_bytes.cache_clear()
    yield
    shards._str_bytes.cache_clear()


def test_the_writer_leaves_ctypes_pythonapi_as_it_found_it(fresh_helpers) -> None:
    shared = ctypes.pythonapi.PyUnicode_AsUTF8AndSize  # the object every user of ctypes.pythonapi gets
    before = (shared.restype, shared.argtypes)
    assert shards._str_bytes() is not None
    _traces_array(["a trace"], _conversion_pool())
    assert (shared.restype, shared.argtypes) == before


def test_what_another_library_sets_on_pythonapi_does_not_reach_the_copy(
    fresh_helpers, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shards._str_bytes() is not None  # the writer's helpers are made first ...
    # ... then another library asks the same C function for bytes (NUL-terminated, a copy):
    monkeypatch.setattr(ctypes.pythonapi.PyUnicode_AsUTF8AndSize, "restype", ctypes.c_char_p)
    traces = ["a\x00" + "b" * 300, "plain"]  # an embedded NUL: a C string of it is 1 byte long
    got = _traces_array(traces, _conversion_pool())
    got.validate(full=True)
    assert got.equals(pa.array(traces, type=pa.string()))


def test_without_ctypes_traces_go_through_arrow(fresh_helpers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python built without _ctypes (libffi missing at build time): `import ctypes` fails."""
    monkeypatch.setitem(sys.modules, "ctypes", None)
    assert shards._str_bytes() is None
    traces = ["we reason. " * 50, None, ""]
    assert _traces_array(traces, _conversion_pool()).equals(pa.array(traces, type=pa.string()))


class _Sub(str):
    pass


_TEXT = st.one_of(
    st.text(alphabet=st.characters(codec="ascii"), max_size=20),
    st.text(max_size=8),
    st.text(alphabet="ab\x00 ", min_size=1, max_size=4).map(lambda s: s * 40),
)
_TRACE = st.one_of(st.none(), st.just(""), _TEXT, _TEXT.map(_Sub), st.just(3))


@st.composite
def _row(draw: st.DrawFn) -> dict:
    trace = draw(_TRACE)
    messages: list = []
    for _ in range(draw(st.integers(0, 3))):
        m: dict = {}
        if draw(st.booleans()):
            m["role"] = draw(st.sampled_from(["user", "assistant", None, 3]))
        if draw(st.booleans()):
            m["content"] = draw(st.one_of(st.none(), _TEXT))
        kind = draw(st.sampled_from(["absent", "none", "trace", "equal", "other", "int", "empty"]))
        if kind != "absent":
            equal = str(trace) + "" if isinstance(trace, str) else trace  # equal, maybe not the same object
            m["reasoning_content"] = {
                "none": None,
                "trace": trace,
                "equal": equal,
                "int": 7,
                "empty": "",
            }.get(kind, draw(_TEXT))
        if draw(st.booleans()):
            m[draw(st.sampled_from(["extra", "tool_calls"]))] = draw(st.sampled_from([1, "x", None]))
        messages.append(m)
    if draw(st.booleans()) and isinstance(trace, str):  # as gen makes it in `field` format
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": trace},
        ]
        if draw(st.booleans()):  # a non-last message with a trace of its own, or extra keys
            messages[0]["reasoning_content"] = draw(st.sampled_from([None, "", 5, "x"]))
        if draw(st.booleans()):
            messages[-1]["extra"] = 1
    row: dict = {"reasoning": trace}
    shape = draw(st.sampled_from(["list", "none", "absent", "with_str", "tuple"]))
    if shape != "absent":
        row["messages"] = {
            "list": messages,
            "none": None,
            "with_str": [*messages, "x"],
            "tuple": tuple(messages),
        }[shape]
    if draw(st.booleans()):
        row["reasoning_tokens"] = draw(st.sampled_from([None, 5, "5"]))
    return row


def _outcome(make) -> object:  # noqa: ANN001
    try:
        batch = make()
    except Exception:  # Arrow's ways of refusing a row vary; that both refuse is what counts
        return "refused"
    batch.validate(full=True)
    return batch


_T = "a trace"
_FIELD = {"reasoning": _T, "messages": [{"role": "assistant", "content": "a", "reasoning_content": _T}]}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_row(), min_size=1, max_size=6), st.sampled_from(["train", "eval", "rejects"]))
@example([_FIELD], "rejects")  # a schema without `messages`: the row's messages are not converted
@example([{"reasoning": None, "messages": []}, _FIELD], "train")  # no message to hold a trace
def test_a_batch_is_what_from_pylist_makes_of_any_rows(rows: list[dict], split: str) -> None:
    schema = _schemas()[split]
    ours = _outcome(lambda: _to_batch(rows, split))
    with WITHOUT_PANDAS:
        theirs = _outcome(lambda: pa.RecordBatch.from_pylist(rows, schema=schema))
    if theirs == "refused":
        assert ours == "refused"
    else:
        assert ours != "refused" and ours.schema == theirs.schema and ours.equals(theirs)
