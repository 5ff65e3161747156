"""entropy: TensorRT's EntropyCalibration2 (minimum KL divergence threshold)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from . import _histogram as H
from .base import Calibrator, bool_param, int_param
from .registry import register


@register
class EntropyCalibrator(Calibrator):
    """Chooses the threshold whose INT8 version of the distribution loses the least information,
    as TensorRT's IInt8EntropyCalibrator2 does (cache header "EntropyCalibration2"; algorithm
    from Szymon Migacz, "8-bit Inference with TensorRT", GTC 2017, cross-checked against
    NVIDIA pytorch-quantization / TensorRT-Model-Optimizer `_compute_amax_entropy`). The
    histogram of |x| over [0, max|x|] is brought to `num_bins` (2048) equal bins by linear
    interpolation of the cumulative count (our statistics keep 2049..4096 finer power-of-two
    bins over that range, so this only merges). For each candidate i in [start_bin, num_bins]:
    P = the first i bins with everything above folded into bin i-1; Q = those i bins merged
    into `num_quant_bins` (128) levels and spread back evenly over the bins that were non-empty;
    amax = the upper edge of bin i-1 for the i minimising KL(P||Q), the largest i on ties. As in
    pytorch-quantization, bin 0 is first set to bin 1 (`flatten_zero_bin`), so the spike of
    exact zeros after ReLU does not drive the choice. Consequence of the method: amax is never
    below start_bin/num_bins * max|x| (max/16 by default).
    """

    name = "entropy"
    trt_algorithm = "EntropyCalibration2"
    needs_histogram = True
    defaults = {"num_bins": 2048, "start_bin": 128, "num_quant_bins": 128, "flatten_zero_bin": True}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        num_bins = int_param("entropy", "num_bins", params["num_bins"], 2, 1 << 16)
        num_quant = int_param("entropy", "num_quant_bins", params["num_quant_bins"], 1, num_bins)
        start = int_param("entropy", "start_bin", params["start_bin"], num_quant, num_bins)
        flatten = bool_param("entropy", "flatten_zero_bin", params["flatten_zero_bin"])
        return {"num_bins": num_bins, "start_bin": start, "num_quant_bins": num_quant, "flatten_zero_bin": flatten}

    def compute_amax(self, counts: np.ndarray | None, edges: np.ndarray | None, lo: float, hi: float) -> float:
        p = H.resample(counts, edges, self._params["num_bins"])
        if self._params["flatten_zero_bin"]:
            p[0] = p[1]
        p /= p.sum()
        start = self._params["start_bin"]
        kl = kl_divergences(p, start, self._params["num_quant_bins"])
        best = kl.size - 1 - int(np.argmin(kl[::-1]))  # last minimum: the largest threshold
        return float(edges[-1]) * ((start + best) / p.size)  # no overflow near float max


def kl_divergences(p: np.ndarray, start_bin: int, num_quant_bins: int) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i = start_bin .. len(p), all at once.

    `p` is a normalised histogram (sum 1). Instead of building P and Q per candidate, expand
    KL = sum P log P - sum P log Q + log(1 - o) (Q is normalised by 1 - o, o = outlier mass):
      * sum P log P: prefix sum of p log p over bins < i-1, plus the folded last bin;
      * sum P log Q: within quantized chunk c every non-empty bin has Q = S_c / n_c (chunk mass
        over its non-empty bins), so the bins < i give sum_c S_c log(S_c / n_c); the outliers
        folded into bin i-1 add o log Q_{i-1}.
    S_c and n_c come from prefix sums gathered at the chunk boundaries of every candidate:
    O(candidates x num_quant_bins) work instead of O(candidates x bins) per tensor.
    Candidate i gets +inf when its last bin is empty but outliers exist (Q = 0 where P > 0).
    """
    nbins = p.size
    cand = np.arange(start_bin, nbins + 1)
    nonzero = p > 0
    cum = np.concatenate(([0.0], np.cumsum(p)))
    cum_nonzero = np.concatenate(([0.0], np.cumsum(nonzero, dtype=np.float64)))
    plogp = np.zeros_like(p)
    np.log(p, out=plogp, where=nonzero)
    plogp *= p
    cum_plogp = np.concatenate(([0.0], np.cumsum(plogp)))
    # Outlier mass from a suffix sum: no cancellation when it is tiny.
    tail = np.concatenate((np.cumsum(p[::-1])[::-1], [0.0]))
    outliers = tail[cand]

    bounds = _chunk_bounds(nbins, start_bin, num_quant_bins)
    at = np.take(cum, bounds)
    mass = at[:, 1:] - at[:, :-1]
    at = np.take(cum_nonzero, bounds)
    filled = at[:, 1:] - at[:, :-1]
    # Empty chunks (and round-off of prefix-sum differences) get mass `tiny`: their term
    # tiny * log(tiny) is ~1e-305, i.e. no contribution, and no log(0) is ever taken.
    np.maximum(mass, np.finfo(np.float64).tiny, out=mass)
    density = mass / np.maximum(filled, 1.0)
    q_last = density[:, -1].copy()
    np.log(density, out=density)
    p_log_q = np.einsum("ij,ij->i", mass, density)

    last = p[cand - 1]
    folded = last + outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_p = cum_plogp[cand - 1] + np.where(folded > 0, folded * np.log(np.where(folded > 0, folded, 1.0)), 0.0)
        p_log_q = p_log_q + np.where((outliers > 0) & (last > 0), outliers * np.log(q_last), 0.0)
        kl = p_log_p - p_log_q + np.log1p(-np.minimum(outliers, 1.0))
    kl[(last <= 0) & (outliers > 0)] = np.inf
    return kl


@lru_cache(maxsize=4)
def _chunk_bounds(nbins: int, start_bin: int, num_quant_bins: int) -> np.ndarray:
    """Chunk boundaries per candidate, shape (candidates, nq + 1); data independent.

    Chunk c of candidate i holds bins j with c*i/nq <= j < (c+1)*i/nq, as np.digitize over
    linspace(0, i, nq+1) assigns them in the reference implementation: bounds are ceil(c*i/nq).
    """
    cand = np.arange(start_bin, nbins + 1)
    levels = np.arange(num_quant_bins + 1)
    bounds = -((-cand[:, None] * levels[None, :]) // num_quant_bins)
    bounds.setflags(write=False)
    return bounds
