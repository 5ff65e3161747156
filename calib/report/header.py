"""The header every report starts with, and the prose it carries: where the figures come from
(model, data, flavor, backend, device, decode path, library versions) and the notes a reader must
see (how the images were decoded on a GPU, how ONNX Runtime ran the INT8 models, how the evaluation
images relate to the calibration images). Reports are written from values, so this module knows no
command and no configuration."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from calib.placement import Placement
from calib.report.schema import EvalSection, ReportHeader

DECODE_NOTES = {
    "pil": ("images decoded, cropped and resized by Pillow in worker processes (the CPU path's preprocessing), "
            "normalised on the GPU: the CPU path's pixels bit for bit"),
    "nvjpeg": ("images decoded by nvJPEG and resized on the GPU (Pillow's resampling bit for bit; nvJPEG's pixels "
               "differ from Pillow's by about one level; --gpu-decode pil gives the CPU path's pixels)"),
    "arrays": "named arrays read on the host and copied to the GPU as they are (nothing decoded)",
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
           int8_models: dict[str, Path] | None = None, model_file: str | Path | None = None,
           calibration=None, evaluation=None) -> ReportHeader:
    """The header: the data plan's `notes` (each a warning: they question the figures), then how a
    GPU decoded the images, then how ONNX Runtime ran `int8_models` (the INT8 models whose figures
    the report shows, as ONNX files). `model_file` is the FP32 file the user's --model named;
    `calibration` and `evaluation` the datasets the figures come from (`data_origin`)."""
    warnings = list(notes)
    notes = list(notes)
    if placement.on_gpu:
        notes.append(DECODE_NOTES[decoder if decoder in ("pil", "arrays") else "nvjpeg"])
    if int8_models and backend == "ort":
        note = exact_note(int8_models, placement.first)
        if note:
            notes.append(note)
    return ReportHeader(model=model, dataset=dataset, demo=demo, backend=backend, qdq_flavor=flavor, notes=notes,
                        versions=versions(), model_sha256=model_sha256, device=str(placement),
                        decode_path=decode_path, model_file=os.path.abspath(model_file) if model_file else "",
                        calibration_data=data_origin(calibration) if calibration is not None else {},
                        evaluation_data=data_origin(evaluation) if evaluation is not None else None,
                        warnings=warnings)


def data_origin(dataset) -> dict:
    """Where a dataset's images come from, as a report names them: the source (`imagenet-val`,
    `demo`, an hf: name), its folder (absolute; None for images that are not files in one folder)
    and the source's own description. Read from the dataset itself, so `--eval-data-dir B` is
    named as B, never as the `--data-dir` beside it."""
    source = dataset.source
    root = getattr(source, "root", None)
    return {"source": source.id, "folder": os.path.abspath(root) if root else None,
            "description": source.description}


def origin_text(origin: dict | None) -> str:
    """One line for a report: the description, with the folder where the description lacks it."""
    if not origin:
        return "–"
    text = origin.get("description") or origin.get("source") or "–"
    folder = origin.get("folder")
    return text if not folder or folder in text else f"{text} ({folder})"


def chance_warning(top1: float, n: int, classes: int) -> str | None:
    """The warning for an FP32 top-1 no better than guessing (`calib.stats.accuracy.above_chance`):
    the usual sign of the wrong preprocessing (--preprocess) or labels that are not the model's
    classes; every INT8 figure beside it is then meaningless. None when FP32 beats chance."""
    from calib.stats.accuracy import above_chance

    if n < 1 or classes < 1 or above_chance(round(top1 * n), n, classes):
        return None
    return (f"FP32 top-1 is {100 * top1:.2f}% on {n} image{'' if n == 1 else 's'}, no better than chance "
            f"(1 in {classes}): the model's preprocessing (--preprocess) or the labels are probably wrong, "
            "and the INT8 figures say nothing")


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


def eval_section(ev, calibration, evaluation, header: ReportHeader) -> EvalSection:
    """The "eval" entry of a report: how many images were evaluated and skipped, and whether they
    overlap the calibration images, computed from the files (calib.data.overlap), never assumed.
    An overlap is also a warning of the `header`, since it makes every accuracy figure optimistic;
    so are images left out for lack of a label."""
    from calib.data.overlap import overlap

    o = overlap(calibration, evaluation)
    if not o.disjoint:
        header.warn(f"{o.describe()}: the accuracy figures are optimistic (evaluate on images calibration "
                    "never saw, e.g. --eval-data-dir with another folder)")
    unlabeled = len(getattr(evaluation, "unlabeled", []) or [])
    for what, dataset in (("evaluation", evaluation), ("calibration", calibration)):
        if what == "calibration" and getattr(calibration, "source", None) is getattr(evaluation, "source", None):
            continue  # one folder split in two: its unlabelled images are counted once
        n = len(getattr(dataset, "unlabeled", []) or [])
        if n:
            header.warn(f"{n} image{' has' if n == 1 else 's have'} no label in the {what} folder and "
                        f"{'was' if n == 1 else 'were'} left out")
    return EvalSection(samples=len(ev.keys), skipped=len(ev.skipped), skipped_files=ev.skipped,
                       disjoint_from_calibration=o.disjoint, overlap=o.to_dict(), overlap_text=o.describe(),
                       unlabeled=unlabeled, seconds=round(ev.seconds, 3))


def origin_rows(r: dict) -> list[tuple[str, str]]:
    """(what, value) rows every report shows, in markdown and HTML: the model file the user named,
    the calibration and the evaluation data, where the passes ran and how images were decoded
    (a report of an older calib, without these keys, shows what it has)."""
    rows = []
    if r.get("model_file"):
        rows.append(("model file", r["model_file"]))
    if r.get("calibration_data"):
        rows.append(("calibration data", origin_text(r["calibration_data"])))
    if r.get("evaluation_data"):
        rows.append(("evaluation data", origin_text(r["evaluation_data"])))
    rows.append(("device", str(r.get("device", "cpu"))))
    rows.append(("decode path", str(r.get("decode_path", "pil"))))
    return rows


def evaluation_text(r: dict) -> str:
    """What the evaluation images were, in a few words: the evaluation data's own description
    (never the --data-dir label when --eval-data-dir named another folder)."""
    return origin_text(r["evaluation_data"]) if r.get("evaluation_data") else str(r.get("dataset", ""))


def note_lines(r: dict) -> list[str]:
    """The report's notes for report.md, each "warning: ..." where it questions the figures."""
    warnings = set(r.get("warnings") or [])
    return [f"- {'warning' if n in warnings else 'note'}: {n}" for n in r.get("notes", [])]
