"""gen starts on a Python built without _ctypes (libffi missing at build time), where `import ctypes`
raises ImportError: the malloc-arena limit is an optimisation, not a requirement."""

import subprocess
import sys


def test_gen_starts_where_ctypes_cannot_be_imported() -> None:
    code = (
        "import sys\n"
        "sys.modules['ctypes'] = None  # `import ctypes` now raises ImportError, as without _ctypes\n"
        "from gen.cli import main\n"
        "sys.exit(main(['--version']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip()
