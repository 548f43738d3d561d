"""Linux's prctl(2) through ctypes, for what gen's child processes set up about their parent: a vLLM
server (gen.launchers.vllm, between fork and exec) and a verifier's child (gen.verify_child); and
glibc's mallopt(3), for gen's own allocator settings (gen.cli, gen.near_dedup). Imports only the
standard library: a verifier's child imports it and starts with what its `load` imports."""

from __future__ import annotations

import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: a signal when the thread that forked this process ends
PR_SET_THP_DISABLE = 41  # transparent huge pages off (1) or back on (0); inherited through fork and exec
M_MMAP_THRESHOLD = -3  # <malloc.h>: allocations of at least this many bytes are served by mmap
M_ARENA_MAX = -8  # <malloc.h>: the most malloc arenas


def mallopt(param: int, value: int) -> None:
    """glibc's mallopt(3); nothing where there is none (another libc, or a Python without _ctypes)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (ImportError, OSError, AttributeError):  # ImportError: a Python without _ctypes
        pass


def load_prctl() -> Callable[..., int] | None:
    """libc's prctl, or None where there is none (not Linux). Load it before a fork: the child, between
    fork and exec, must not dlopen or allocate much."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (ImportError, OSError, AttributeError):  # ImportError: a Python without _ctypes
        return None
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]
