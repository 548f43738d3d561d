"""gen on a Python built without _ctypes (libffi missing at build time), where `import ctypes` raises
ImportError: everything gen does through ctypes is an optimisation (the malloc-arena limit, prctl for the
vLLM launcher and `verify`'s child, near dedup's mmap threshold), so each must tolerate its absence.
Each check runs in a child whose `sys.modules['ctypes']` is None, as on such a Python."""

import subprocess
import sys

WITHOUT_CTYPES = "import sys\nsys.modules['ctypes'] = None  # `import ctypes` now raises ImportError\n"


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_CTYPES + code], capture_output=True, text=True, timeout=60
    )


def test_gen_starts() -> None:
    done = _child("from gen.cli import main\nsys.exit(main(['--version']))\n")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip()


def test_prctl_vllm_launcher_and_near_dedup() -> None:
    """The arena limit was not the only place (found by review9): gen.prctl (loaded at import by the
    vLLM launcher, and by `verify`'s child) and near dedup's mmap threshold caught OSError and
    AttributeError but not the ImportError."""
    done = _child(
        "import gen.launchers.vllm  # loads prctl at import\n"
        "from gen.prctl import load_prctl\n"
        "from gen.near_dedup import _large_allocations_to_mmap\n"
        "assert load_prctl() is None\n"
        "_large_allocations_to_mmap()\n"
        "print('ok')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
