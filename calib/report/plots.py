"""Figures for the reports, rendered off-screen (Agg) to PNG bytes that the HTML embeds."""

from __future__ import annotations

import io
import math

import numpy as np

# One colour per calibrator, stable across figures (matplotlib's tab10 order).
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


def colors(names: list[str]) -> dict[str, str]:
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _subplots(figsize: tuple[float, float]):
    """A figure outside pyplot: no GUI backend is touched and no global state changes (a
    notebook that draws its own inline plots keeps its backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def rebin(counts: np.ndarray, edges: np.ndarray, bins: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Merge neighbouring bins so a 4096-bin histogram draws legibly (sums are kept)."""
    counts = np.asarray(counts)
    edges = np.asarray(edges, np.float64)
    if counts.size <= bins:
        return counts, edges
    factor = math.ceil(counts.size / bins)
    pad = (-counts.size) % factor
    merged = np.concatenate([counts, np.zeros(pad, counts.dtype)]).reshape(-1, factor).sum(1)
    new_edges = np.concatenate([edges[:-1:factor], edges[-1:]])
    return merged, new_edges


def histogram(tensor: str, counts: np.ndarray, edges: np.ndarray, thresholds: dict[str, float],
              chosen: str | None = None, palette: dict[str, str] | None = None, note: str = "") -> bytes:
    """|x| histogram (log count) with each calibrator's threshold (amax) as a vertical line."""
    palette = palette or colors(list(thresholds))
    fig, ax = _subplots((6.4, 3.0))
    c, e = rebin(counts, edges)
    if c.size:
        ax.stairs(np.where(c > 0, c, np.nan), e, fill=True, color="#9ab", alpha=0.9, label="|x| count")
        ax.set_yscale("log")
    top = float(e[-1]) if len(e) else 1.0
    right = max([top] + [a for a in thresholds.values() if math.isfinite(a)])
    # Lines that land on the same spot (e.g. minmax = max|x|) are drawn with a slight dash offset.
    for i, (name, amax) in enumerate(sorted(thresholds.items(), key=lambda kv: kv[1])):
        width = 2.4 if name == chosen else 1.4
        ax.axvline(amax, color=palette.get(name, "k"), lw=width, ls=(0, (4, 2)) if i % 2 else "-",
                   label=f"{name}{' (chosen)' if name == chosen else ''}: {amax:.3g}")
    ax.set_xlim(0, right * 1.03 if right > 0 else 1)
    ax.set_xlabel("|x|")
    ax.set_ylabel("count (log)")
    ax.set_title(_short(tensor, 70) + (f"\n{note}" if note else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.85)
    ax.grid(alpha=0.25)
    return _png(fig)


SQNR_CAP = 80.0  # dB: float32 round-off territory; higher values are drawn at the cap


def sqnr_lines(tensors: list[str], sqnr: dict[str, dict[str, float | None]], chosen: str | None = None,
               palette: dict[str, str] | None = None) -> bytes:
    """Per-tensor SQNR (dB) in graph order, one line per calibrator."""
    palette = palette or colors(list(sqnr))
    fig, ax = _subplots((11, 3.6))
    x = np.arange(len(tensors))
    finite = [v for series in sqnr.values() for v in series.values() if v is not None]
    # Tensors left in float (a fallback) or without error read 100+ dB: draw them at the cap.
    cap = min(max(finite) + 5, SQNR_CAP) if finite else SQNR_CAP
    for name, series in sqnr.items():
        y = np.array([min(series[t], cap) if series.get(t) is not None else cap for t in tensors], np.float64)
        ax.plot(x, y, marker="o", ms=3 if name == chosen else 2, lw=2.2 if name == chosen else 1.1,
                color=palette.get(name), label=f"{name}{' (chosen)' if name == chosen else ''}",
                zorder=3 if name == chosen else 2)
    ax.set_xlabel("quantized tensor, in graph order (input → logits)")
    ax.set_ylabel("SQNR (dB), higher is better")
    step = max(1, len(tensors) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(i) for i in x[::step]], fontsize=8)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, ncol=min(4, len(sqnr)), loc="lower left")
    return _png(fig)


def sensitivity_bars(rows: list[dict], top: int = 30, key: str = "logits_sqnr_db", label: str = "logits SQNR") -> bytes:
    """Horizontal bars: the SQNR (`key`: a classifier's logits SQNR, a task model's lowest output
    SQNR) when only that layer is quantized, most damaging on top; agreement beside it where the
    rows have it (a classifier's)."""
    total = len(rows)
    rows = rows[:top]
    finite = [r[key] for r in rows if r[key] is not None]
    cap = (max(finite) + 5) if finite else 60.0
    values = [r[key] if r[key] is not None else cap for r in rows]
    fig, ax = _subplots((9, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    lo = min(values + [0.0])
    ax.barh(y, [v - lo for v in values], left=lo,
            color=["#d62728" if i < 5 else ("#1f77b4" if r["weighted"] else "#8c9") for i, r in enumerate(rows)])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{i + 1}. {_short(r['layer'], 44)} ({r['op_type']})" for i, r in enumerate(rows)], fontsize=7)
    ax.invert_yaxis()
    for yi, v, r in zip(y, values, rows):
        beside = f", agr {100 * r['agreement']:.1f}%" if "agreement" in r else f", {_short(r['worst_output'], 24)}"
        ax.text(v, yi, f" {v:.1f} dB{beside}", va="center", fontsize=7)
    ax.set_xlabel(f"{label} vs FP32 with only this layer quantized (dB, lower = more damage)")
    ax.set_title(f"the {len(rows)} most damaging layers" + (f" of {total}" if total > len(rows) else "")
                 + " (red: top 5; blue: weighted ops; green: ops without weights)", fontsize=9)
    ax.set_xlim(lo, max(values) * 1.18 if max(values) > 0 else 1)
    ax.grid(axis="x", alpha=0.25)
    return _png(fig)


def accuracy_bars(names: list[str], top1: list[float], agreement: list[float], fp32_top1: float,
                  chosen: str | None = None) -> bytes:
    """Top-1 and agreement per calibrator, FP32 top-1 as a reference line."""
    fig, ax = _subplots((6.4, 2.8))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [100 * v for v in top1], 0.4, label="INT8 top-1", color="#1f77b4")
    ax.bar(x + 0.2, [100 * v for v in agreement], 0.4, label="agreement with FP32", color="#2ca02c")
    ax.axhline(100 * fp32_top1, color="k", ls="--", lw=1, label=f"FP32 top-1 {100 * fp32_top1:.1f}%")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\n(chosen)" if n == chosen else n for n in names], fontsize=8)
    lo = min([100 * v for v in top1 + agreement] + [100 * fp32_top1])
    ax.set_ylim(max(0.0, lo - 5), 100.5)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.25)
    return _png(fig)


def histogram_figures(stats, tensors: list[str], thresholds: dict[str, dict[str, float]],
                      chosen: str | None) -> list[dict]:
    """[{tensor, png, thresholds}] for the report, from statistics with histograms (a
    calib.calibrators.TensorStatistics)."""
    palette = colors(list(thresholds))
    out = []
    for t in tensors:
        if t not in stats:
            continue
        counts, edges = stats.histogram(t)
        th = {cal: a[t] for cal, a in thresholds.items() if t in a}
        s = stats.summary(t)
        out.append({"tensor": t, "thresholds": th, "max_abs": s.peak,
                    "png": histogram(t, counts, edges, th, chosen, palette)})
    return out
