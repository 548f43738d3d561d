"""Review of commit 47908d7 (gen starts on a Python without _ctypes): the malloc-arena limit was not the
only place. gen.prctl (loaded at import by the vLLM launcher, and by `verify`'s child) and near-dedup's
mmap threshold also `import ctypes` and caught OSError and AttributeError but not its ImportError, so
on such a Python the vLLM launcher could not be imported, `verify` children and `[dedup] near` died."""

import subprocess
import sys


def test_prctl_vllm_launcher_and_near_dedup_without_ctypes() -> None:
    code = (
        "import sys\n"
        "sys.modules['ctypes'] = None  # `import ctypes` now raises ImportError, as without _ctypes\n"
        "import gen.launchers.vllm  # loads prctl at import\n"
        "from gen.prctl import load_prctl\n"
        "from gen.near_dedup import _large_allocations_to_mmap\n"
        "assert load_prctl() is None\n"
        "_large_allocations_to_mmap()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
