"""Command-line options, each declared once (typer `Annotated` aliases) and reused by every
command that takes it, as Polygraphy declares its argument groups once. Defaults live in the
command signatures; `run_config()` turns the shared ones into a `calib.session.RunConfig`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Model = Annotated[str, typer.Option("--model", help="efficientnet_lite0/1/2 or a path to an ONNX classifier")]
Preprocess = Annotated[Optional[str], typer.Option(
    "--preprocess", help="preprocessing preset: efficientnet-lite or torchvision")]
Dataset = Annotated[str, typer.Option("--dataset", help="demo (embedded photos), imagenet-val, or hf:<name-or-path>")]
DataDir = Annotated[Optional[str], typer.Option(
    "--data-dir", help="dataset folder (imagenet-val; default $CALIB_IMAGENET_VAL)")]
Samples = Annotated[int, typer.Option("--samples", help="calibration images")]
EvalDataDir = Annotated[Optional[str], typer.Option("--eval-data-dir", help="separate evaluation folder")]
EvalSamples = Annotated[Optional[int], typer.Option("--eval-samples", min=1, help="limit evaluation images")]
InputSize = Annotated[Optional[str], typer.Option(
    "--input-size", help="height and width for a model with dynamic H/W: 224 or 256x256 (default: the "
                         "preprocessing preset's size)")]
Calibrator = Annotated[str, typer.Option(
    "--calibrator", help="minmax (default, as ModelOpt and ONNX Runtime), entropy (TensorRT EntropyCalibration2), "
                         "percentile, mse, or a plug-in")]
Percentile = Annotated[Optional[float], typer.Option(
    "--percentile", help="percentile calibrator: the percentile of |x| (default 99.99)")]
Backend = Annotated[str, typer.Option("--backend", help="ort (ONNX Runtime CPU), tensorrt or tensorrt-rtx")]
QdqFlavor = Annotated[Optional[str], typer.Option(
    "--qdq-flavor", help="tensorrt or ort (default: the one --backend builds)")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="images per evaluation batch")]
CalibBatchSize = Annotated[int, typer.Option(
    "--calib-batch-size", min=1,
    help="images per calibration batch (memory: ~30 MB of activations per image for EfficientNet-Lite0)")]
CacheDir = Annotated[str, typer.Option("--cache-dir", help="folder of calibration caches")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the calibration/evaluation split")]
Recalibrate = Annotated[bool, typer.Option("--recalibrate", help="ignore a matching cache and calibrate again")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="decoding processes (0: decode in this process); with --gpu-decode pil, per GPU")]
BiasCorrection = Annotated[bool, typer.Option(
    "--bias-correction/--no-bias-correction", help="correct biases for the mean shift weight quantization causes")]
Out = Annotated[Optional[str], typer.Option("--out", help="report folder (default runs/<time>-<model>-<what>)")]
TimingCache = Annotated[Optional[str], typer.Option(
    "--timing-cache", help="TensorRT timing cache file, reused across builds")]
ComputeCapability = Annotated[Optional[int], typer.Option(
    "--compute-capability", help="TensorRT-RTX: the GPU generation to build for: 86, 89 (default) or 120")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing output file calib did not write")]
Device = Annotated[str, typer.Option(
    "--device", help="cpu (default), cuda, cuda:N, cuda:0,1 (several GPUs) or auto: where the calibration pass and "
                     "the evaluation run (GPU: nvJPEG decode and ONNX Runtime's CUDA provider; pip install 'calib[gpu]')")]
GpuDecode = Annotated[str, typer.Option(
    "--gpu-decode", help="on a GPU: nvjpeg (default; nvJPEG decode and resize on the GPU, pixels about one level from "
                         "Pillow's) or pil (the CPU path's Pillow preprocessing in worker processes: its pixels bit for "
                         "bit, and its cache key)")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def calibrator_params(percentile: float | None) -> dict:
    return {} if percentile is None else {"percentile": percentile}


def run_config(**options):
    """A RunConfig from the shared options (`percentile` becomes calibrator_params)."""
    from calib.session import RunConfig

    percentile = options.pop("percentile", None)
    return RunConfig(calibrator_params=calibrator_params(percentile), **options)
