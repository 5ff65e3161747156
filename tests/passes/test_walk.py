"""calib.passes.walk with the evaluation consumer: every batch at one shape with the padding's
outputs dropped, runners in threads or not, consumers on a thread of their own or not; batches
and runners are handed in (no GPU needed: torch CPU tensors stand in for device ones)."""

from __future__ import annotations

import numpy as np
import pytest

from calib.data.batch import Batch
from calib.passes.consumers import Predict
from calib.passes.evaluation import padded_batch
from calib.passes.walk import walk


class _Runner:
    """A linear 'model' on torch tensors that, like OrtRunner on CUDA, overwrites its output
    buffer on every call."""

    output_names = ["logits"]

    def __init__(self, torch, seed):
        self.torch = torch
        self.w = torch.from_numpy(np.random.default_rng(seed).standard_normal((12, 7)).astype(np.float32))
        self.shapes = []
        self.out = None

    def infer(self, x, outputs=None):
        self.shapes.append(tuple(x.shape))
        if self.out is None:
            self.out = self.torch.empty((x.shape[0], 7))
        self.out.copy_(x.flatten(1) @ self.w)
        return [self.out]


@pytest.mark.parametrize("concurrent", [True, False])
@pytest.mark.parametrize("background", [True, False])
def test_every_batch_runs_at_one_shape_and_the_padding_reaches_no_figure(concurrent, background):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    sizes = [5, 4, 5, 3]   # batch 5; one image skipped in the second batch; a short last batch
    images = [torch.from_numpy(rng.standard_normal((n, 3, 2, 2)).astype(np.float32)) for n in sizes]
    keys = [[f"b{b}i{i}" for i in range(n)] for b, n in enumerate(sizes)]
    batches = [Batch(x, rng.integers(0, 7, len(k)), k) for x, k in zip(images, keys)]
    runners = {"fp32": _Runner(torch, 1), "int8": _Runner(torch, 2)}
    predict = Predict(list(runners))
    walked = walk(iter(batches), runners, [predict], pad_to=5, concurrent=concurrent, background=background)
    ev, diffs = predict.result([], walked.seconds)
    assert all(s == (5, 3, 2, 2) for r in runners.values() for s in r.shapes)
    assert ev.keys == [k for ks in keys for k in ks] and walked.images == sum(sizes) and walked.batches == 4
    x = torch.cat(images).flatten(1)
    for name, r in runners.items():
        want = torch.topk(x @ r.w, 5, dim=1).indices.numpy()
        np.testing.assert_array_equal(ev.predictions[name].top5, want)
    ref, q = (x @ runners["fp32"].w).double(), (x @ runners["int8"].w).double()
    np.testing.assert_allclose(ev.signal, (ref * ref).sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ev.noise["int8"], ((ref - q) ** 2).sum(1).numpy(), rtol=1e-4)
    assert diffs["fp32/int8"] == pytest.approx(float((ref - q).abs().max()), rel=1e-5)


def test_host_and_device_arrays_give_the_same_figures():
    """One consumer for numpy and torch (calib.tensor): the same logits give the same top-5 and powers."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = {m: rng.standard_normal((6, 9)).astype(np.float32) for m in ("fp32", "int8")}

    class Fixed:
        output_names = ["y"]

        def __init__(self, value):
            self.value = value

        def infer(self, x, outputs=None):
            return [self.value]

    def figures(wrap):
        batch = Batch(np.zeros((6, 1)), np.arange(6), [str(i) for i in range(6)])
        predict = Predict(["fp32", "int8"])
        walk([batch], {m: Fixed(wrap(v)) for m, v in logits.items()}, [predict])
        return predict.result([], 0.0)

    (a, da), (b, db) = figures(lambda v: v), figures(torch.from_numpy)
    for m in logits:
        np.testing.assert_array_equal(a.predictions[m].top5, b.predictions[m].top5)
    # float64 sums in numpy's and torch's own order: equal to the last few bits
    np.testing.assert_allclose(a.signal, b.signal, rtol=1e-12)
    np.testing.assert_allclose(a.noise["int8"], b.noise["int8"], rtol=1e-12)
    assert da == pytest.approx(db)


def test_a_set_smaller_than_a_batch_runs_at_its_own_size():
    assert padded_batch(256, 3) == 3 and padded_batch(4, 10) == 4 and padded_batch(8, 0) == 1


def test_a_runner_error_ends_the_consumer_thread_and_propagates():
    import threading

    class Broken:
        output_names = ["y"]

        def infer(self, x, outputs=None):
            raise RuntimeError("model failed")

    batch = Batch(np.zeros((2, 1)), np.zeros(2), ["a", "b"])
    with pytest.raises(RuntimeError, match="model failed"):
        walk([batch], {"m": Broken()}, [Predict(["m"])], background=True)
    assert not [t for t in threading.enumerate() if t.name == "calib-consume"]
