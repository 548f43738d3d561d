"""gen's allocator settings (gen/__init__.py: MIMALLOC_ALLOW_THP=0, JE_ARROW_MALLOC_CONF) are for gen's
own process, not for the vLLM server it launches. MIMALLOC_ALLOW_THP=0 is not an Arrow-pool setting:
mimalloc calls prctl(PR_SET_THP_DISABLE) for the whole process as pyarrow loads, and that flag is
inherited across fork and exec, so every child started afterwards (vLLM included) ran without
transparent huge pages, and inherited gen's variables besides. A real `gen run` process with the fake
`vllm` (tests/fakes/vllm) launched by gen, the child's state read as it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
STATUS = Path("/proc/self/status")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "THP_enabled:" not in STATUS.read_text(),
    reason="needs Linux's THP_enabled in /proc/self/status",
)

# A fresh process as a user's shell would start it (THP on: undo what this test process inherited),
# that imports gen and pyarrow, as a run does before it launches its teacher, then launches the fake.
LAUNCH = """
import asyncio, ctypes, json, sys
ctypes.CDLL(None).prctl(41, 0, 0, 0, 0)  # PR_SET_THP_DISABLE off
import gen
from gen import shards
shards._pyarrow()
own = [l.split()[1] for l in open("/proc/self/status") if l.startswith("THP_enabled:")][0]
from gen.launchers.vllm import VLLMServer, VLLMSettings

async def main():
    srv = VLLMServer(VLLMSettings(model="org/fake-model-7b", startup_timeout_s=20.0), progress=None,
                     poll_interval_s=0.05)
    async with srv:
        pass

asyncio.run(main())
print(own)
"""


def _launch(tmp_path: Path, **env: str) -> tuple[str, dict]:
    start = tmp_path / "start.json"
    base = {k: v for k, v in os.environ.items() if k not in ("MIMALLOC_ALLOW_THP", "JE_ARROW_MALLOC_CONF")}
    environ = {
        **base,
        "PATH": os.pathsep.join([str(FAKES), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp_path),
        "FAKE_VLLM_START_FILE": str(start),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH], capture_output=True, text=True, env=environ, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip(), json.loads(start.read_text())


def test_the_launched_vllm_gets_neither_gens_thp_setting_nor_its_variables(tmp_path: Path) -> None:
    own, child = _launch(tmp_path)
    if own != "0":
        pytest.skip("this pyarrow's mimalloc does not disable THP for the process (MIMALLOC_ALLOW_THP)")
    assert child["thp"] == "1", "vLLM was started with transparent huge pages disabled (gen's setting)"
    assert child["env"] == {"MIMALLOC_ALLOW_THP": None, "JE_ARROW_MALLOC_CONF": None}


def test_a_users_own_setting_reaches_vllm(tmp_path: Path) -> None:
    """MIMALLOC_ALLOW_THP=1 set by the user (not gen's default) is passed on as it is."""
    _, child = _launch(tmp_path, MIMALLOC_ALLOW_THP="1", JE_ARROW_MALLOC_CONF="narenas:2")
    assert child["thp"] == "1"
    assert child["env"] == {"MIMALLOC_ALLOW_THP": "1", "JE_ARROW_MALLOC_CONF": "narenas:2"}
