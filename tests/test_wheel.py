"""gen as a user gets it from a wheel: built, installed in a fresh venv, run from outside the checkout.

No network: the wheel is built with the setuptools already installed (`--no-build-isolation`, the
`[test]` extra pins one new enough) and installed with `--no-deps` into a venv that sees the system's
site-packages for the dependencies. The editable install of the checkout stays out of the way: its
finder is appended to `sys.meta_path`, after the path finder that finds the venv's copy first, and
PYTHONPATH is cleared; the test checks where `gen` was imported from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_major() -> int:
    try:
        return int(version("setuptools").split(".")[0])
    except Exception:
        return 0


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.skipif(
    _setuptools_major() < 77, reason="building the wheel offline needs setuptools>=77 (the [test] extra)"
)
def test_the_wheel_installs_and_runs_the_quickstart_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    # A copy of the sources only, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "gen"):
        p = ROOT / name
        if p.is_dir():
            subprocess.run(["cp", "-r", str(p), str(src / name)], check=True)
        elif p.exists():
            (src / name).write_bytes(p.read_bytes())
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=src,
        env=env,
    )
    (wheel,) = wheels.glob("gen-*.whl")
    # Package discovery (`gen*`) must pick up every subpackage: the quickstart needs gen.sim.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for module in (
        "gen/sim/server.py",
        "gen/sim/dialects.py",
        "gen/sim/instances.py",
        "gen/launchers/vllm.py",
    ):
        assert module in names, f"{module} is missing from {wheel.name}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    # Run from a venv (pip install -e in a venv, as the README allows), the dependencies are in that venv's
    # site-packages, which --system-site-packages does not see (it means the base interpreter's): a .pth
    # line puts them on the new venv's path, after its own site-packages. Their .pth files (the editable
    # gen's finder among them) are not run, since the directory is added as a path, not as a site dir.
    if sys.prefix != sys.base_prefix:
        own = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        ask = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site_dir = Path(_run([str(py), "-c", ask], cwd=tmp_path, env=env).stdout.strip())
        (site_dir / "_parent_venv.pth").write_text("".join(f"{d}\n" for d in own))
    # --ignore-installed: the editable gen in the system site-packages would otherwise "satisfy" it.
    _run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
        cwd=tmp_path,
        env=env,
    )

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(py), "-c", "import gen; print(gen.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"gen was imported from {where}, not from the wheel"

    out = work / "qs"
    done = _run(
        [str(venv / "bin" / "gen"), "run", str(ROOT / "prompts" / "quickstart.toml"), "--output", str(out)]
        + ["--no-progress"],
        cwd=work,
        env=env,
    )
    assert "240 rows" in done.stderr + done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
