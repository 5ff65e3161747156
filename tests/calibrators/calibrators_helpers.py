"""Test helpers: data generators and slow, literal oracles (one candidate at a time)."""

from __future__ import annotations

import numpy as np


def kl_reference(hist: np.ndarray, start_bin: int = 128, nq: int = 128) -> np.ndarray:
    """KL(P||Q) per candidate i, built exactly as the TensorRT / Migacz description says."""
    hist = np.asarray(hist, dtype=np.float64)
    out = []
    for i in range(start_bin, hist.size + 1):
        P = hist[:i].copy()
        P[i - 1] += hist[i:].sum()
        chunk = np.floor(np.arange(i) * nq / i).astype(int)  # bin j -> level floor(j*nq/i)
        Q = np.zeros(i)
        for c in range(nq):
            members = (chunk == c) & (hist[:i] > 0)
            if members.any():
                Q[members] = hist[:i][chunk == c].sum() / members.sum()
        P = P / P.sum()
        if Q.sum() == 0:
            out.append(np.inf)
            continue
        Q = Q / Q.sum()
        if np.any((P > 0) & (Q == 0)):
            out.append(np.inf)
            continue
        m = P > 0
        out.append(float(np.sum(P[m] * np.log(P[m] / Q[m]))))
    return np.array(out)


def fake_quant_mse(values: np.ndarray, amax: float) -> float:
    """Mean squared error of symmetric INT8 fake quantization of `values` at `amax`."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    scale = amax / 127.0
    q = np.minimum(np.round(v / scale), 127.0) * scale
    return float(np.mean((v - q) ** 2))


def gaussian_with_outliers(rng: np.random.Generator, n: int, sigma: float = 1.0, outlier: float = 40.0,
                           n_outliers: int = 4) -> np.ndarray:
    x = rng.standard_normal(n).astype(np.float32) * sigma
    pos = rng.choice(n, size=n_outliers, replace=False)
    x[pos] = outlier * np.where(np.arange(n_outliers) % 2 == 0, 1.0, -1.0)
    return x


def feed(stats_or_cal, name: str, data: np.ndarray, batch: int) -> None:
    """Observe `data` (first axis = images) in batches of `batch`."""
    for start in range(0, data.shape[0], batch):
        stats_or_cal.observe(name, data[start : start + batch])


def mse_reference(p: np.ndarray, thresholds, levels: int = 127) -> np.ndarray:
    """Expected squared error of symmetric fake quantization with `levels` steps each side of zero
    for |x| with density p[j] spread uniformly over [j, j + 1) (bin widths as the unit), at each
    threshold t (step t / levels). Integrated exactly, piece by piece: the axis is cut at every
    bin edge and every rounding boundary (k + 1/2) * step; on each piece the density and the
    quantized value q are constant, and (v - q)^2 integrates to ((b - q)^3 - (a - q)^3) / 3."""
    p = np.asarray(p, dtype=np.float64)
    out = []
    for t in thresholds:
        step = t / levels
        cuts = (np.arange(levels) + 0.5) * step
        points = np.unique(np.concatenate([np.arange(p.size + 1, dtype=np.float64), cuts[cuts < p.size]]))
        a, b = points[:-1], points[1:]
        mid = 0.5 * (a + b)
        q = np.minimum(np.floor(mid / step + 0.5), levels) * step  # beyond t: clipped to t
        out.append(float(np.sum(p[np.floor(mid).astype(int)] * ((b - q) ** 3 - (a - q) ** 3) / 3.0)))
    return np.array(out)
