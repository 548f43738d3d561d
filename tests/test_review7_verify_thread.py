"""gen.verify_child's worker is thread-safe: a thread that started the child may end while another
thread still uses the worker. On Linux the child asks the kernel for SIGKILL when its parent ends
(PR_SET_PDEATHSIG), and the kernel's parent is the THREAD that forked it: the child died as that
thread ended, and the other thread's call in progress failed as the process's death (an answer
rejected as verification_failed). Real threads, a real child process."""

from __future__ import annotations

import threading
from pathlib import Path

from gen.verify_python import PythonWorker

SLOW = """
import time
def check(output, reference, row):
    time.sleep(float(reference))
    return output == "ok"
"""


def test_a_call_survives_the_end_of_the_thread_that_started_the_child(tmp_path: Path) -> None:
    path = tmp_path / "verify.py"
    path.write_text(SLOW)
    worker = PythonWorker(str(path), "check", timeout_s=60)
    try:
        first = threading.Thread(target=worker.call, args=("ok", "0", {}))  # starts the child
        first.start()
        first.join()
        pid = worker.pid
        assert pid is not None
        results: list[object] = []

        def second() -> None:
            try:
                results.append(worker.call("ok", "1.5", {}))
            except Exception as e:  # noqa: BLE001 - what the call raised is the finding
                results.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert results == [True]
        assert worker.pid == pid  # the same child, not one started again
    finally:
        worker.close()
