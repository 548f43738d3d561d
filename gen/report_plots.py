"""The figures of `gen report`, drawn with matplotlib's SVG backend and inlined in the page.

Why matplotlib: the best-kept plotting library in Python, whose SVG backend needs no browser, no
JavaScript and no CDN, so the page works offline and in a review attachment. It costs about 80 MB
installed (matplotlib 35 MB, fontTools 30 MB, pillow 7 MB, kiwisolver, contourpy, pyparsing) and
0.55 s to import, so it is an optional extra (`pip install 'gen[report]'`) imported here only, on the
first figure: `gen run` never loads it (tests/test_report.py checks). Text is written as SVG text
(`svg.fonttype: none`), not as glyph paths, which keeps a figure at a few kilobytes; `text.parse_math`
is off, since labels come from the teacher and a `$` must not be read as TeX.
"""

from __future__ import annotations

import functools
import io
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gen.errors import ConfigError

MAX_BINS = 40
COLOURS = {"train": "#3b6ea8", "eval": "#e08a2c", "bad": "#c0392b", "ok": "#3b8a57", "grey": "#8a8f98"}


@functools.cache
def _mpl() -> Any:
    """matplotlib's Figure class, configured for small, deterministic, inline SVG."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "gen report", "needs matplotlib: pip install 'gen[report]' (or pip install matplotlib)"
        ) from None
    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "gen-report",  # the same data gives the same page
            "text.parse_math": False,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 10,
            "figure.dpi": 72,
        }
    )
    from matplotlib.figure import Figure

    return Figure


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    # Inline in HTML: drop the XML prolog and DOCTYPE, keep the <svg> element.
    return text[text.index("<svg") :]


def _figure(width: float = 6.0, height: float = 2.6) -> tuple[Any, Any]:
    fig = _mpl()(figsize=(width, height))
    return fig, fig.add_subplot()


def bars(
    labels: Sequence[str], values: Sequence[float], *, title: str, colour: str = "train", xlabel: str = ""
) -> str:
    """A horizontal bar chart, each bar annotated with its value."""
    labels = [_short(x) for x in labels]
    fig, ax = _figure(height=0.35 * len(labels) + 0.9)
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=COLOURS.get(colour, colour))
    ax.set_yticks(y, labels)
    top = max(values, default=0) or 1
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, f"{v:,.0f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    return _svg(fig)


def histogram(counts: Counter[int], *, title: str, xlabel: str) -> str:
    """A histogram of integer values given as value -> rows, in at most MAX_BINS bins."""
    import numpy as np

    values = np.fromiter(counts.keys(), dtype=np.float64, count=len(counts))
    weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    lo, hi = (values.min(), values.max()) if len(values) else (0, 1)
    span = hi - lo
    bins = int(min(MAX_BINS, span + 1)) if span < MAX_BINS else MAX_BINS
    fig, ax = _figure()
    ax.hist(values, bins=max(bins, 1), range=(lo - 0.5, hi + 0.5), weights=weights, color=COLOURS["train"])
    total = weights.sum()
    if total:
        mean = float((values * weights).sum() / total)
        order = np.argsort(values)
        cum = np.cumsum(weights[order])
        p50 = float(values[order][np.searchsorted(cum, total * 0.5)])
        p99 = float(values[order][min(np.searchsorted(cum, total * 0.99), len(cum) - 1)])
        ax.set_title(
            f"{title} (mean {mean:,.1f}, median {p50:,.0f}, p99 {p99:,.0f}, max {hi:,.0f})", loc="left"
        )
    else:
        ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _svg(fig)


def grouped_shares(field: str, per_split: dict[str, Counter[str]], classes: list[str]) -> str:
    """The share of each class in train and in eval, side by side."""
    import numpy as np

    classes = classes[:30]
    fig, ax = _figure(width=6.0, height=max(1.6, 0.32 * len(classes) + 0.9))
    y = np.arange(len(classes))[::-1]
    splits = [s for s in ("train", "eval") if per_split.get(s)]
    h = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        counts = per_split[split]
        total = sum(counts.values()) or 1
        shares = [100 * counts.get(c, 0) / total for c in classes]
        ax.barh(
            y + (len(splits) / 2 - k - 0.5) * h,
            shares,
            height=h,
            color=COLOURS[split],
            label=f"{split} (n={total:,})",
        )
    ax.set_yticks(y, [_short(c) for c in classes])
    ax.set_xlabel("% of the split's rows")
    ax.set_title(field, loc="left")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return _svg(fig)


def rate_over_time(seconds: Counter[int]) -> str:
    """Rows per second over the run, from created_at, in at most 120 bins."""
    import numpy as np

    t = np.fromiter(seconds.keys(), dtype=np.float64, count=len(seconds))
    w = np.fromiter(seconds.values(), dtype=np.float64, count=len(seconds))
    t0 = t.min()
    span = t.max() - t0 + 1
    width = max(1.0, np.ceil(span / 120))
    edges = np.arange(0, span + width, width)
    sums, _ = np.histogram(t - t0, bins=edges, weights=w)
    fig, ax = _figure()
    minutes = span > 600
    x = edges[:-1] / (60 if minutes else 1)
    # Bars, not a line: a run inside one second is one bar, and a pause is a visible gap.
    ax.bar(x, sums / width, width=width / (60 if minutes else 1), align="edge", color=COLOURS["train"])
    ax.set_xlabel("minutes since the first row" if minutes else "seconds since the first row")
    ax.set_ylabel("rows / s")
    ax.set_title(f"rows written per second ({width:.0f} s bins; gaps are pauses or resumed runs)", loc="left")
    return _svg(fig)


def intervals(labels: Sequence[str], values: Sequence[float], lows: Sequence[float | None],
              highs: Sequence[float | None], *, title: str) -> str:  # fmt: skip
    """Point estimates with their intervals (an evaluation's agreement per field)."""
    fig, ax = _figure(height=0.35 * len(labels) + 0.9)
    y = list(range(len(labels)))[::-1]
    err_lo = [v - lo if lo is not None else 0 for v, lo in zip(values, lows, strict=True)]
    err_hi = [hi - v if hi is not None else 0 for v, hi in zip(values, highs, strict=True)]
    ax.errorbar(values, y, xerr=[err_lo, err_hi], fmt="o", color=COLOURS["train"], capsize=3)
    ax.set_yticks(y, [_short(x) for x in labels])
    ax.set_title(title, loc="left")
    return _svg(fig)


def confusion(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str) -> str:
    """A confusion matrix as a heat map, rows the reference, columns the prediction."""
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    fig, ax = _figure(width=min(1.0 + 0.5 * n, 7.0), height=min(1.0 + 0.45 * n, 6.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), [_short(x, 14) for x in labels], rotation=45, ha="right")
    ax.set_yticks(range(n), [_short(x, 14) for x in labels])
    top = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:,.0f}", ha="center", va="center", fontsize=7,
                    color="white" if top and m[i, j] > top / 2 else "black")  # fmt: skip
    ax.set_xlabel("student")
    ax.set_ylabel("teacher")
    ax.set_title(title, loc="left")
    return _svg(fig)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _short(text: Any, limit: int = 28) -> str:
    """A label as the axis shows it: no control characters (invalid in SVG), at most `limit` long."""
    s = _CONTROL.sub("?", str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"
