"""The header every report starts with, and the prose it carries: where the figures come from
(model, data, flavor, backend, device, decode path, library versions) and the notes a reader must
see (how the images were decoded on a GPU, how ONNX Runtime ran the INT8 models, how the evaluation
images relate to the calibration images). Reports are written from values, so this module knows no
command and no configuration."""

from __future__ import annotations

import platform
from pathlib import Path

from calib.placement import Placement
from calib.report.schema import EvalSection, ReportHeader

DECODE_NOTES = {
    "pil": ("images decoded, cropped and resized by Pillow in worker processes (the CPU path's preprocessing), "
            "normalised on the GPU: the CPU path's pixels bit for bit"),
    "nvjpeg": ("images decoded by nvJPEG and resized on the GPU (Pillow's resampling bit for bit; nvJPEG's pixels "
               "differ from Pillow's by about one level; --gpu-decode pil gives the CPU path's pixels)"),
}


def versions() -> dict:
    """Library versions a report records (what produced these figures)."""
    import numpy
    import onnx
    import onnxruntime

    from calib import __version__

    return {"calib": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def header(*, model: str, dataset: str, demo: bool, backend: str, flavor: str, notes: list[str],
           model_sha256: str, placement: Placement, decoder: str, decode_path: str,
           int8_models: dict[str, Path] | None = None) -> ReportHeader:
    """The header: the data plan's `notes`, then how a GPU decoded the images, then how ONNX Runtime
    ran `int8_models` (the INT8 models whose figures the report shows, as ONNX files)."""
    notes = list(notes)
    if placement.on_gpu:
        notes.append(DECODE_NOTES["pil" if decoder == "pil" else "nvjpeg"])
    if int8_models and backend == "ort":
        note = exact_note(int8_models, placement.first)
        if note:
            notes.append(note)
    return ReportHeader(model=model, dataset=dataset, demo=demo, backend=backend, qdq_flavor=flavor, notes=notes,
                        versions=versions(), model_sha256=model_sha256, device=str(placement),
                        decode_path=decode_path)


def exact_note(int8_models: dict[str, Path], device: str) -> str | None:
    """What the report says about how ONNX Runtime ran the INT8 models on `device`: decided by
    the runner's own rule on each model (calib.backends.ort.runs_integer_exact), so a model the
    runner left as written (subgraphs, past 2 GB, ONNX Runtime's own integer kernels) gets no claim."""
    from calib.backends.ort import runs_integer_exact

    exact = [name for name, path in int8_models.items() if runs_integer_exact(Path(path), device)]
    if not exact:
        return None
    which = "the INT8 model" if len(int8_models) == 1 else (
        "every INT8 model" if len(exact) == len(int8_models) else "INT8 models " + ", ".join(exact))
    # The same figures on the CPU only where the CPU runs the exact graph too (not the ort flavor).
    cpu_kernels = [name for name in exact if not runs_integer_exact(Path(int8_models[name]), "cpu")]
    same = ("; on the CPU ONNX Runtime runs " + ("it" if len(int8_models) == 1 else ", ".join(cpu_kernels)) +
            " with its own integer kernels instead") if cpu_kernels else ": the CPU and the GPU compute the same INT8 figures"
    return (f"ONNX Runtime ran {which} as its integer-exact graph (int8 products summed exactly, then the float "
            f"rescale and bias, as an integer kernel computes them; calib.quantize.exact){same}")


def eval_section(ev, calibration, evaluation, notes: list[str]) -> EvalSection:
    """The "eval" entry of a report: how many images were evaluated and skipped, and whether they
    overlap the calibration images, computed from the files (calib.data.overlap), never assumed.
    An overlap also goes into `notes`, since it makes every accuracy figure optimistic."""
    from calib.data.overlap import overlap

    o = overlap(calibration, evaluation)
    if not o.disjoint:
        notes.append(f"{o.describe()}: the accuracy figures are optimistic (evaluate on images calibration "
                     "never saw, e.g. --eval-data-dir with another folder)")
    unlabeled = len(getattr(evaluation, "unlabeled", []) or [])
    return EvalSection(samples=len(ev.keys), skipped=len(ev.skipped), skipped_files=ev.skipped,
                       disjoint_from_calibration=o.disjoint, overlap=o.to_dict(), overlap_text=o.describe(),
                       unlabeled=unlabeled, seconds=round(ev.seconds, 3))
