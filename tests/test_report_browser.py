"""`gen report`'s page as a person sees it: rendered by headless Chromium (Debian's `chromium` package),
which runs the page's own check (every figure an SVG laid out at a non-zero size) and dumps the DOM.

Skipped, with the reason, where Chromium is not installed; `.ci/run` installs it when it can (README,
"Looking at the data"). The README's screenshot (docs/report.png) is taken by `screenshot()` below.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gen.report import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (apt-get install chromium; see README 'Looking at the data')",
)


def chromium(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local file: no network, no sandbox (CI runs as root), its own profile."""
    return subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--window-size=1100,1700", *flags, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def screenshot(page: Path, png: Path, profile: Path) -> None:
    """The README's screenshot: the top of the page as a 1100x1700 PNG."""
    done = chromium(page, profile, f"--screenshot={png}")
    assert png.exists(), done.stderr[-2000:]


def rendered(page: Path, profile: Path) -> str:
    done = chromium(page, profile, "--dump-dom")
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "quickstart"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (("run", str(ROOT / "prompts" / "quickstart.toml"), "--output", str(out), "--no-progress"),
                 ("report", str(out))):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "gen", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return out / "report.html"


def test_every_section_and_every_figure_renders_in_chromium(page: Path, tmp_path: Path) -> None:
    dom = rendered(page, tmp_path / "profile")
    for section in SECTIONS:
        assert re.search(rf'<section id="{section}"', dom), section
    body = re.search(r"<body[^>]*>", dom).group(0)
    figures = int(re.search(r'data-figures="(\d+)"', body).group(1))
    assert figures == page.read_text().count('<figure class="plot">') >= 7
    assert 'data-figures-failed="0"' in body
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_a_figure_that_does_not_render_is_caught(page: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    text = page.read_text()
    start = text.index("<svg")
    end = text.index("</svg>", start) + len("</svg>")
    broken.write_text(text[:start] + "<svg></svg>" + text[end:])  # an empty figure
    dom = rendered(broken, tmp_path / "profile")
    assert 'data-figures-failed="1"' in dom and 'class="plot failed"' in dom
