"""What a command that touches a model and images sets up from its configuration: the model, the
Q/DQ flavor, the calibration and evaluation data, the prepared FP32 graph and the output folder
(named and checked here, written through calib.fsutil.staged_dir); and the header its report
starts with (the prose itself is calib.report.header's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from calib.data.plan import DataPlan, plan_data
from calib.fsutil import check_output_dir
from calib.models import Model, check_classes, parse_input_size, prepared_model, resolve_model
from calib.placement import CPU, Placement
from calib.report.schema import ReportHeader
from calib.session.config import RunConfig, check_config, default_out


def default_flavor(backend: str) -> str:
    """The Q/DQ flavor a backend builds (TensorRT: symmetric int8; ONNX Runtime: its own layout)."""
    from calib.backends import backend_class

    return backend_class(backend).qdq_flavor


def class_names_of(dataset) -> "Callable[[int], str]":
    """Class index -> name for reports: the dataset's own names (an hf: dataset has them), else
    ImageNet's."""
    from calib.data.classes import class_name

    names = getattr(getattr(dataset, "source", None), "class_names", None)
    if names:
        return lambda i: names[i]
    return class_name


def bias_means(entry, enabled: bool = True) -> dict | None:
    """Channel means from the cache's sidecar, when bias correction is on and the cache has them
    (caches imported from TensorRT do not)."""
    return entry.metadata.channel_means if enabled and entry.metadata is not None else None


@dataclass
class RunSetup:
    model: Model
    flavor: str
    data: DataPlan
    prepared: onnx.ModelProto
    out: Path
    placement: Placement = CPU


def setup(config: RunConfig, out: str | Path | None = None, kind: str | None = None) -> RunSetup:
    """What run, compare and sensitivity share: the model, the Q/DQ flavor, the calibration and
    evaluation data, the prepared FP32 graph and the output folder."""
    placement = check_config(config)
    out = Path(out) if out else default_out(config, kind)
    check_output_dir(out, apart_from={"--cache-dir": config.cache_dir})  # before any model export or calibration
    store = config.cache_store()   # reusing a cache only reads: write access is asked for where one will be saved
    store.check(write=config.recalibrate or not store.holds_caches())
    model = resolve_model(config.model, config.preprocess, parse_input_size(config.input_size))
    flavor = config.qdq_flavor or default_flavor(config.backend)
    data = plan_data(config.dataset, config.data_dir, model.preprocess, config.samples, config.seed,
                     config.eval_data_dir, config.eval_samples)
    prepared = prepared_model(model)
    check_model_classes(model, data.calibration, prepared)
    return RunSetup(model, flavor, data, prepared, out, placement)


def check_model_classes(model: Model, dataset, prepared: onnx.ModelProto) -> None:
    """A classifier whose class count is not the dataset's label count would score 0% top-1 and
    say nothing: refused in one line before any calibration."""
    from calib.data.classes import imagenet_classes

    source = dataset.source
    labels = len(getattr(source, "class_names", None) or imagenet_classes())
    check_classes(model, labels, source.description, prepared=prepared)


def report_header(config: RunConfig, setup: RunSetup, placement: Placement = CPU,
                  int8_models: dict[str, Path] | None = None) -> ReportHeader:
    """The header every report shares (`calib.report.header.header`) for this configuration."""
    from calib.calibration import decode_for
    from calib.report.header import header

    return header(model=setup.model.name, dataset=config.dataset_label(), demo=setup.data.demo,
                  backend=config.backend, flavor=setup.flavor, notes=setup.data.notes, model_sha256=setup.model.sha256,
                  placement=placement, decoder=config.gpu_decode,
                  decode_path=decode_for(setup.model.preprocess, placement, config.gpu_decode), int8_models=int8_models)
