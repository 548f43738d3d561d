"""The JSON of a teacher's 2xx reply, read as orjson reads it, at twice its speed for long replies.

A reply that carries a reasoning trace is tens of kilobytes, nearly all of it one string, which orjson
builds at ~3 GB/s (13 us for a 38 kB reply, more than the rest of the client's work on it); simdjson
(pysimdjson) reads the same reply in 7. So a reply of FAST_MIN to FAST_MAX bytes that opens an object is
read by simdjson, and everything else, and everything simdjson refuses, by orjson, whose answer stands:

- what simdjson refuses (NaN, Infinity, a lone surrogate, invalid UTF-8, bad syntax, trailing bytes,
  nesting too deep, an integer past 64 bits, a bad escape...) is read again by orjson, which refuses it
  too or reads it its own way (an integer past 64 bits as a float, which the strict reply models refuse);
- what simdjson takes that orjson refuses is kept from it: it skips a byte-order mark, which orjson
  refuses, and that is why only a body whose first byte is `{` goes to it;
- what both read, they read alike: the same dict (the last of duplicate keys wins, in the first one's
  place), str, int, float, bool and None values. tests/teachers/test_reply_json.py holds both to it, case
  by case and on mutated replies.

Short replies stay with orjson (simdjson is slower below ~2 kB), so answers without a trace pay nothing
new, and simdjson is imported with the first long reply. Its parser keeps the buffers of the longest
document it has read (about 5 bytes a byte), hence FAST_MAX.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

FAST_MIN = 4 * 1024
FAST_MAX = 1024 * 1024  # keeps the parser's buffers under ~6 MB; longer replies go to orjson
_parser: Any = None  # None: not loaded yet; False: simdjson cannot be imported here
# One parser, for one document at a time: a second caller (another thread, or a finalizer run by the
# collector mid-parse) that finds it busy reads with orjson instead.
_busy = threading.Lock()


def loads(raw: bytes) -> Any:
    """A reply's JSON as orjson.loads reads it; raises orjson.JSONDecodeError where orjson does."""
    if (
        FAST_MIN <= len(raw) <= FAST_MAX
        and raw[:1] == b"{"
        and _parser is not False
        and _busy.acquire(blocking=False)
    ):
        try:
            return _fast(raw)
        except Exception:  # any refusal: orjson reads it again, and its answer stands
            pass
        finally:
            _busy.release()
    return orjson.loads(raw)


def _fast(raw: bytes) -> Any:
    """simdjson's reading of `raw` (to plain dicts and lists), or its refusal as an exception."""
    global _parser
    if _parser is None:
        try:
            import simdjson  # not with gen: a run whose replies are short never needs it
        except ImportError:
            # Not installed, or its extension does not load here: orjson reads every reply from now on
            # (a failed import searches sys.path again each time, ~30 us, more than simdjson saves).
            _parser = False
            raise
        _parser = simdjson.Parser()
    return _parser.parse(raw, True)
