"""The pass layer: the only code that walks data through models (`walk`), with its sources,
consumers and the two passes every command uses (calibration statistics, evaluation), on the
CPU, one GPU or several (`shard`)."""

from calib.passes.calibration import CollectResult, exposed_runner, observe_pass
from calib.passes.evaluation import all_outputs, evaluate, logits, padded_batch
from calib.passes.expose import expose
from calib.passes.source import Images, batches, load_images
from calib.passes.walk import Step, Walked, walk

__all__ = ["CollectResult", "Images", "Step", "Walked", "all_outputs", "batches", "evaluate", "expose",
           "exposed_runner", "load_images", "logits", "observe_pass", "padded_batch", "walk"]
