"""calib.passes.evaluation.all_outputs: every output of a runner over a decoded set, by name, in
image order, the same arrays a whole-set session run gives; its first output is `logits`'."""

from __future__ import annotations

import numpy as np

from calib.backends.ort import OrtRunner
from calib.onnx_io import ort_session
from calib.passes import Images, all_outputs, logits
from tests.quantize.head_models import SsdHead, build, export


def test_every_output_is_kept_by_name_in_image_order():
    model = export(build(SsdHead), outputs=("boxes", "scores"))
    x = np.random.default_rng(0).random((7, 3, 64, 64)).astype(np.float32)
    images = Images(x, np.zeros(7, np.int64), [str(i) for i in range(7)])
    kept = all_outputs(OrtRunner(model, exact=False), images, batch_size=3)   # 3 + 3 + 1: a short last batch
    boxes, scores = ort_session(model, "all").run(None, {"images": x})
    assert list(kept) == ["boxes", "scores"]
    np.testing.assert_allclose(kept["boxes"], boxes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kept["scores"], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits(OrtRunner(model, exact=False), images, 3), kept["boxes"])
