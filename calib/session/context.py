"""What a command that touches a model and images sets up from its configuration: the model, the
Q/DQ flavor, the calibration and evaluation data, the prepared FP32 graph and the output folder
(named and checked here, written through calib.fsutil.staged_dir); and the header its report
starts with (the prose itself is calib.report.header's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from calib.data.classes import class_count
from calib.data.plan import DataPlan, is_arrays, plan_data
from calib.errors import CalibError
from calib.models import Model, check_classes, fixed_batch, prepared_model
from calib.placement import CPU, Placement
from calib.report.schema import ReportHeader
from calib.session.config import RunConfig, check_config, check_labels_option, config_model, default_out


def default_flavor(backend: str) -> str:
    """The Q/DQ flavor a backend builds (TensorRT: symmetric int8; ONNX Runtime: its own layout)."""
    from calib.backends import backend_class

    return backend_class(backend).qdq_flavor


@dataclass
class RunSetup:
    model: Model
    flavor: str
    data: DataPlan
    prepared: onnx.ModelProto
    out: Path
    placement: Placement = CPU


def setup(config: RunConfig, out: str | Path | None = None, kind: str | None = None,
          calibrators: list[str] | None = None) -> RunSetup:
    """What run, compare and sensitivity share: the model, the Q/DQ flavor, the calibration and
    evaluation data, the prepared FP32 graph and the output folder. `calibrators`: those the
    command uses, when not `config.calibrator` alone (compare)."""
    out = Path(out) if out else default_out(config, kind)
    placement = check_config(config, calibrators, out)
    model = config_model(config, is_arrays(config.dataset))
    check_labels_option(config, model.task)   # --task auto resolved: labels for a classifier or a generic model
    if model.arrays and (kind is not None or config.max_drop is not None or config.min_agreement is not None):
        what = f"calib {kind}" if kind else "a fallback budget (--max-drop, --min-agreement)"
        raise CalibError(f"{model.name} is fed named arrays (--dataset {config.dataset}): {what} needs images so far; "
                         f"`calib run --task {model.task}` judges it output by output against FP32")
    if model.task != "classify" and kind not in (None, "sensitivity"):   # compare still reads top-1
        raise CalibError(f"{model.name} is a {model.task} model: calib {kind} needs a classifier so far; `calib run "
                         f"--task {model.task}` judges it output by output against FP32")
    check_decoder(config, model, placement)
    flavor = config.qdq_flavor or default_flavor(config.backend)
    fit_to_memory(config, model, placement)            # before the prepared model, whose probe runs it
    data = plan_data(config.dataset, config.data_dir, model.preprocess, config.samples, config.seed,
                     config.eval_data_dir, config.eval_samples)
    prepared = prepared_model(model)
    run_at_fixed_batch(config, model, prepared)
    if model.task == "classify" and not model.arrays:   # scored against labels: the class counts must agree
        check_model_classes(model, data.calibration, prepared)
    return RunSetup(model, flavor, data, prepared, out, placement)


def check_decoder(config: RunConfig, model: Model, placement: Placement) -> None:
    """The GPU's nvJPEG path resizes with the crop arithmetic of calib.data.resize_plan, which has
    no letterbox: a letterboxed model on a GPU decodes with the Pillow workers (the CPU path's
    pixels), refused in one line otherwise rather than failing mid-pass."""
    if model.arrays:
        return   # nothing to decode
    if placement.on_gpu and config.gpu_decode == "nvjpeg" and model.preprocess.crop == "letterbox":
        raise CalibError("--preprocess letterbox is decoded on a GPU by the Pillow workers: add --gpu-decode pil")


def fit_to_memory(config: RunConfig, model: Model, placement: Placement) -> None:
    """The calibration and evaluation batches must fit in the machine's memory (estimated from the
    model's graph at its input size when it was read: `Model.need`, calib.models.memory): a batch
    too large is lowered to one that fits, said in one warning line (results do not depend on the
    batch size, only speed does); a model that does not fit even one image (--input-size 4000) is
    refused in one line, before the kernel's OOM killer ends the run with no message."""
    import warnings

    from calib.models.memory import fit_batch

    batches = config.pass_batch_sizes()
    on_host = not placement.on_gpu   # on a GPU the activations are the GPU's: the host holds the images
    for field, batch, what in zip(("calib_batch_size", "batch_size"), batches,
                                  ("the calibration pass", "the evaluation")):
        fits, note = fit_batch(model.need, batch, f"{model.name}: {what}", activations=on_host)
        if note is None:
            continue
        if placement.on_gpu and fits == getattr(RunConfig, field) and fits > 1:
            fits -= 1   # the default's value would read as "not set" and grow again on a GPU (pass_batch_sizes)
            note = note.rsplit(" ", 1)[0] + f" {fits}"
        setattr(config, field, fits)
        warnings.warn(note, stacklevel=2)


def run_at_fixed_batch(config: RunConfig, model: Model, prepared: onnx.ModelProto) -> None:
    """A model whose prepared graph runs at one batch size only (a batch axis declared dynamic that
    ONNX Runtime cannot run at 2: calib.models.prepare) is calibrated and evaluated at that batch,
    said once in one warning line; the report's speed figures, which time batch 32, are skipped."""
    import warnings

    batch = fixed_batch(prepared)
    if batch is None:
        return
    config.batch_size = config.calib_batch_size = batch
    skipped = config.speed_seconds > 0
    config.speed_seconds = 0
    if model.arrays and isinstance(model.inputs[0].batch, int):   # fixed in the file: a batch-1 export
        warnings.warn(f"{model.path.name} fixes its batch size at {batch}: calibrating and evaluating it at batch "
                      f"{batch}" + ("; speed figures skipped" if skipped else ""), stacklevel=2)
        return
    warnings.warn(f"{model.path.name} declares a dynamic batch axis but runs only at batch {batch} (its graph "
                  f"fixes a shape, an exporter defect): calibrating and evaluating it at batch {batch}"
                  + ("; speed figures skipped" if skipped else ""), stacklevel=2)


def check_model_classes(model: Model, dataset, prepared: onnx.ModelProto) -> None:
    """A classifier whose class count is not the dataset's label count would score 0% top-1 and
    say nothing: refused in one line before any calibration."""
    check_classes(model, class_count(dataset), dataset.source.description, prepared=prepared)


def report_header(config: RunConfig, setup: RunSetup, placement: Placement = CPU,
                  int8_models: dict[str, Path] | None = None) -> ReportHeader:
    """The header every report shares (`calib.report.header.header`) for this configuration: it
    names the model file and the calibration and evaluation data the setup really used."""
    from calib.data.decoders import decode_for
    from calib.report.header import header

    return header(model=setup.model.name, dataset=config.dataset_label(), demo=setup.data.demo,
                  backend=config.backend, flavor=setup.flavor, notes=setup.data.notes, model_sha256=setup.model.sha256,
                  placement=placement, decoder="arrays" if getattr(setup.model, "arrays", False) else config.gpu_decode,
                  decode_path=decode_for(setup.model.preprocess, placement, config.gpu_decode), int8_models=int8_models,
                  model_file=getattr(setup.model, "path", None), calibration=getattr(setup.data, "calibration", None),
                  evaluation=getattr(setup.data, "evaluation", None))
