"""A long reply's JSON (gen.teachers.replyjson): simdjson reads it, orjson's reading stands.

Every strictness of orjson's parse that the reply checks rely on is pinned here against the fast path,
case by case with hostile bodies long enough to take it, on mutated replies, and end to end through a
real client."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import Scripted, answer, read_request

from gen.errors import TeacherError
from gen.teachers import replyjson
from gen.teachers.openai import OpenAIChat

MESSAGES = [{"role": "user", "content": "hi"}]
PAD = b"x" * replyjson.FAST_MIN  # a trace's worth of text: the body takes the fast path


def reply(value: bytes, *, trace: bytes = PAD) -> bytes:
    """A long chat completion whose usage.completion_tokens is `value`, as the server wrote it."""
    return (
        b'{"choices": [{"message": {"content": "42", "reasoning_content": "%s"}, "finish_reason": "stop"}],'
        b' "usage": {"prompt_tokens": 1, "completion_tokens": %s}}' % (trace, value)
    )


# Each a value, or a body of its own (a bytes starting other than with b"{" or ending other than "}").
VALUES = {
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus_infinity": b"-Infinity",
    "float_overflow": b"1e400",
    "float_underflow": b"1e-400",
    "int_past_u64": b"18446744073709551616",
    "u64_max": b"18446744073709551615",
    "i64_min": b"-9223372036854775808",
    "int_below_i64": b"-9223372036854775809",
    "int_of_30_digits": b"123456789012345678901234567890",
    "long_mantissa": b"3.14159265358979323846264338327950288419716939937510582097494459",
    "minus_zero": b"-0",
    "minus_zero_float": b"-0.0",
    "exponent_int": b"1E2",
    "leading_zero": b"01",
    "plus_sign": b"+1",
    "bare_point": b"1.",
    "lone_high_surrogate": b'"\\ud800"',
    "lone_low_surrogate": b'"\\udc00"',
    "two_high_surrogates": b'"\\ud800\\ud800"',
    "surrogate_pair": b'"\\ud83d\\ude00"',
    "surrogate_encoded_in_utf8": b'"\xed\xa0\x80"',
    "invalid_utf8": b'"\xff"',
    "overlong_utf8": b'"\xc0\xaf"',
    "past_u10ffff": b'"\xf4\x90\x80\x80"',
    "truncated_utf8": b'"\xe2\x82"',
    "raw_control_character": b'"\x01"',
    "raw_nul": b'"\x00"',
    "escapes": b'"\\/\\b\\f\\n\\r\\t\\"\\\\\\u0000\\u00e9"',
    "bad_escape": b'"\\x41"',
    "short_unicode_escape": b'"\\u12"',
    "unicode_text": '"é 😀 中文 \u2028 \uffff"'.encode(),
    "duplicate_keys": b'{"a": 1, "a": 2, "\\u0061": 3, "b": [1, 2.5, true, false, null]}',
    "nested_1000": b"[" * 1000 + b"]" * 1000,
    "trailing_comma": b"[1, 2,]",
    "single_quotes": b"'x'",
    "comment": b"1 /* no */",
    "truncated_literal": b"tru",
    "unclosed_string": b'"x',
}
BODIES = {
    "byte_order_mark": b"\xef\xbb\xbf" + reply(b"1"),
    "leading_whitespace": b" \r\n\t" + reply(b"1"),
    "trailing_whitespace": reply(b"1") + b" \r\n\t",
    "trailing_bytes": reply(b"1") + b" x",
    "two_documents": reply(b"1") + reply(b"1"),
    "trailing_nul": reply(b"1") + b"\x00",
    "not_an_object": b'["%s"]' % PAD,
    "a_string": b'"%s"' % PAD,
    "objects_1023_deep": b'{"a":' * 1023 + b'"' + PAD + b'"' + b"}" * 1023,
    "objects_1024_deep": b'{"a":' * 1024 + b'"' + PAD + b'"' + b"}" * 1024,
    "objects_1025_deep": b'{"a":' * 1025 + b'"' + PAD + b'"' + b"}" * 1025,
    "arrays_1024_deep": b'{"p": "%s", "a": ' % PAD + b"[" * 1023 + b"]" * 1023 + b"}",
    "arrays_1025_deep": b'{"p": "%s", "a": ' % PAD + b"[" * 1024 + b"]" * 1024 + b"}",
    "unclosed_object": reply(b"1")[:-1],
    "empty_key": b'{"": "%s"}' % PAD,
    "non_ascii_trace": reply(b"1", trace=("é 😀 中文 " * 1000).encode()),
    "escaped_trace": reply(b"1", trace=b'a\\nb\\tc\\"d\\u00e9\\ud83d\\ude00' * 300),
}
CASES = {name: reply(value) for name, value in VALUES.items()} | BODIES


def outcome(read, raw: bytes) -> tuple[str, list[object]]:
    """("ok", the value spelt out) or ("refused", [])."""
    try:
        value = read(raw)
    except Exception:  # the parsers' ways of refusing differ; that they refuse is what counts
        return "refused", []
    return "ok", spelt(value)


def spelt(value: object) -> list[object]:
    """The value as a flat list of typed tokens, walked without recursion (values nest 1,024 deep): ==
    alone would take 1 for 1.0 and True, and nan for nothing, so types and float bits are spelt out."""
    out: list[object] = []
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            out.append(("dict", len(v)))
            for k, item in reversed(v.items()):
                todo += [item, k]
        elif isinstance(v, list):
            out.append(("list", len(v)))
            todo += reversed(v)
        elif isinstance(v, float):
            out.append(("float", v.hex() if math.isfinite(v) else repr(v)))
        else:
            out.append((type(v).__name__, v))
    return out


def test_every_case_takes_the_fast_path_where_its_shape_allows() -> None:
    long_objects = [raw for raw in CASES.values() if raw[:1] == b"{"]
    assert len(long_objects) >= len(CASES) - 5
    assert all(replyjson.FAST_MIN <= len(raw) <= replyjson.FAST_MAX for raw in long_objects)


@pytest.mark.parametrize("name", CASES)
def test_a_long_reply_is_read_as_orjson_reads_it(name: str) -> None:
    raw = CASES[name]
    assert outcome(replyjson.loads, raw) == outcome(orjson.loads, raw)
    if outcome(orjson.loads, raw)[0] == "refused":  # refused the way parse_reply expects
        with pytest.raises(orjson.JSONDecodeError):
            replyjson.loads(raw)


@pytest.mark.parametrize("name", sorted(set(CASES) - {"byte_order_mark"}))
def test_simdjson_refuses_or_reads_alike(name: str) -> None:
    # The fast parser on its own, gate aside: it never takes what orjson refuses, never reads otherwise.
    raw = CASES[name]
    fast = outcome(replyjson._fast, raw)
    assert fast[0] == "refused" or fast == outcome(orjson.loads, raw)


def test_a_byte_order_mark_is_why_only_an_object_goes_to_simdjson() -> None:
    raw = CASES["byte_order_mark"]
    assert outcome(replyjson._fast, raw)[0] == "ok"  # simdjson skips it ...
    with pytest.raises(orjson.JSONDecodeError):  # ... orjson refuses it, and so does loads
        replyjson.loads(raw)


def test_the_expected_refusals_hold() -> None:
    # The strictness the reply checks build on, said outright (not only "as orjson does").
    for name in ("nan", "infinity", "float_overflow", "lone_high_surrogate", "lone_low_surrogate",
                 "surrogate_encoded_in_utf8", "invalid_utf8", "raw_control_character", "trailing_bytes",
                 "byte_order_mark", "objects_1025_deep", "arrays_1025_deep", "bad_escape"):  # fmt: skip
        with pytest.raises(orjson.JSONDecodeError):
            replyjson.loads(CASES[name])
    # An integer past 64 bits comes back a float, which the strict reply models refuse as a count.
    assert isinstance(replyjson.loads(CASES["int_past_u64"])["usage"]["completion_tokens"], float)
    assert replyjson.loads(CASES["duplicate_keys"])["usage"]["completion_tokens"] == {
        "a": 3,
        "b": [1, 2.5, True, False, None],
    }


TOKENS = [b'"', b"\\", b"\\u", b"d800", b"dc00", b"\xff", b"\xed\xa0\x80", b"\xc3", b"\xef\xbb\xbf", b"NaN",
          b"Infinity", b"1e999", b"-", b"0", b"1.5", b"99999999999999999999", b"{", b"}", b"[", b"]", b",",
          b":", b" ", b"\x00", b"\x1f", b"\n", b"true", b"null", b'"a":', b"\\n", b"/*"]  # fmt: skip


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), st.sampled_from(TOKENS)), max_size=4))
def test_mutated_replies_are_read_as_orjson_reads_them(edits: list[tuple[int, int, bytes]]) -> None:
    raw = reply(b"7", trace=b"step one, then two" * 300)
    for at, cut, token in edits:  # at a position of the reply: cut a few bytes, put a token in
        at %= len(raw) + 1
        raw = raw[:at] + token + raw[at + cut :]
    assert outcome(replyjson.loads, raw) == outcome(orjson.loads, raw)
    if raw[:1] == b"{":  # what the gate lets through to simdjson
        fast = outcome(replyjson._fast, raw)
        assert fast[0] == "refused" or fast == outcome(orjson.loads, raw)


def test_the_parser_is_let_go_after_every_reading_and_a_busy_one_is_not_waited_for() -> None:
    for name in ("non_ascii_trace", "nan", "trailing_bytes", "int_past_u64"):  # read, refused, re-read
        outcome(replyjson.loads, CASES[name])
        assert replyjson._busy.acquire(blocking=False)  # free again
        replyjson._busy.release()
    raw = CASES["non_ascii_trace"]
    with replyjson._busy:  # another reader holds it: orjson reads this one (a wait would never end)
        assert outcome(replyjson.loads, raw) == outcome(orjson.loads, raw)


def test_short_replies_never_load_simdjson() -> None:
    # Answers without a trace pay nothing new: gen and its short replies run without simdjson.
    code = (
        "import sys, gen.cli; from gen.teachers import replyjson\n"
        'replyjson.loads(b\'{"choices": [{"message": {"content": "x"}}]}\')\n'
        "print('simdjson' in sys.modules, 'csimdjson' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


async def ask(body: bytes):
    """What OpenAIChat makes of a 200 with this body, served over a real connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(body))
        await writer.drain()

    async with Scripted(handler) as s:
        client = OpenAIChat(s.url, "m")
        try:
            return await client.complete(MESSAGES, seed=1, sampling={"max_tokens": 10_000})
        except TeacherError as e:
            return e
        finally:
            await client.close()


@pytest.mark.parametrize(
    "name",
    ["nan", "infinity", "float_overflow", "lone_high_surrogate", "lone_low_surrogate", "invalid_utf8",
     "surrogate_encoded_in_utf8", "raw_control_character", "trailing_bytes", "byte_order_mark",
     "objects_1025_deep"],
)  # fmt: skip
async def test_a_hostile_long_reply_is_unreadable(name: str) -> None:
    error = await ask(CASES[name])
    assert isinstance(error, TeacherError) and error.retryable and "unreadable" in str(error), error


@pytest.mark.parametrize("name", ["int_past_u64", "int_below_i64", "minus_zero_float", "duplicate_keys"])
async def test_a_long_reply_with_a_wrong_count_is_malformed(name: str) -> None:
    error = await ask(CASES[name])
    assert isinstance(error, TeacherError) and error.retryable
    assert str(error).startswith("malformed reply: usage.completion_tokens"), error


@pytest.mark.parametrize("name", ["non_ascii_trace", "escaped_trace"])
async def test_a_long_trace_arrives_whole(name: str) -> None:
    raw = CASES[name]
    done = await ask(raw)
    assert done.reasoning == orjson.loads(raw)["choices"][0]["message"]["reasoning_content"]
    assert done.text == "42" and done.completion_tokens == 1 and done.prompt_tokens == 1


async def test_the_last_of_duplicate_fields_is_the_one_kept() -> None:
    raw = reply(b"5").replace(b'"reasoning_content"', b'"reasoning_content": "first", "reasoning_content"')
    done = await ask(raw)
    assert done.reasoning == PAD.decode() and done.completion_tokens == 5
