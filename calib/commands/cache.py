"""`calib cache`: list, show, verify, diff, import and export calibration caches, as library calls.

These were written inline in the CLI (loading, validating against a model, assembling the JSON
view); they live here so that the CLI only parses options and prints, as for every other command
(the split Polygraphy makes between its argument groups, which parse, and its library,
`polygraphy.backend` and `polygraphy.comparator`, which works). The caches' own logic stays in
`calib.cache`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from calib.cache import CacheEntry, CacheStore, load_cache, validate_entry
from calib.cache.inspect import diff, scale_table
from calib.cache.interop import ExportResult, ImportResult, export_cache, import_cache
from calib.errors import CalibError

if TYPE_CHECKING:
    from calib.models import Model
    from calib.session.config import RunConfig

# list, show, diff and export read caches only: the model side (onnx, about a second to import) is
# imported by verify and import, which need it.

# A cache written by TensorRT (or for it) holds scales for the tensors the TensorRT flavor quantizes.
CACHE_FLAVOR = "tensorrt"


def list_caches(cache_dir: str | Path) -> list[dict]:
    """One row per cache in `cache_dir` (calib.cache.CacheStore.entries: index or not, with validity)."""
    return CacheStore(cache_dir).entries()


@dataclass
class CacheView:
    """A cache as `calib cache show` shows it: the entry, its scale table (largest first, outliers
    flagged) and its problems (shown, not fatal: show is how one looks at a bad cache)."""
    entry: CacheEntry
    scales: list[dict]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        meta = json.loads(self.entry.metadata.to_json()) if self.entry.metadata else None
        return {"header": self.entry.cache.header, "metadata": meta, "scales": self.scales,
                "problems": self.problems}


def show_cache(path: str | Path) -> CacheView:
    entry = load_cache(path)
    return CacheView(entry, scale_table(entry), validate_entry(entry).problems())


def resolved_model(config: RunConfig) -> Model:
    """The model `config` names (--model, --preprocess and its normalisation, --input-size,
    --input-shape): images for a model with one image input, else named arrays."""
    from calib.session.config import config_model

    return config_model(config)


def verify_cache(config: RunConfig, cache: str | Path, flavor: str = CACHE_FLAVOR) -> Model:
    """Check that `cache` is valid for `config`'s model and the tensors `flavor` quantizes; a
    one-line CalibError naming the problems if not. Returns the model."""
    from calib.commands.build import check_cache
    from calib.models import prepared_model

    model = resolved_model(config)
    _, report = check_cache(model, prepared_model(model), Path(cache), flavor)
    if not report.ok:
        raise CalibError(f"{cache} is not valid for {model.name}: " + "; ".join(report.problems()))
    return model


def diff_caches(a: str | Path, b: str | Path) -> dict:
    """Per-tensor scale ratio b/a, largest change first (calib.cache.inspect.diff)."""
    return diff(load_cache(a), load_cache(b))


def import_trt_cache(config: RunConfig, file: str | Path, force: bool = False) -> ImportResult:
    """Attach metadata for `config`'s model to a cache TensorRT wrote and add it to
    `config.cache_dir`; `force` imports one that lacks scales for some quantized tensors."""
    from calib.models import prepared_model
    from calib.quantize import required_tensors

    model = resolved_model(config)
    return import_cache(Path(file), model, CacheStore(config.cache_dir),
                        required=required_tensors(prepared_model(model), CACHE_FLAVOR), force=force)


def export_trt_cache(cache: str | Path, trt_version: str, out: str | Path, assume_version: bool = False,
                     overwrite: bool = False, config: RunConfig | None = None,
                     flavor: str = CACHE_FLAVOR) -> ExportResult:
    """Write `cache` with the header TensorRT `trt_version` expects (calib.cache.interop.export_cache);
    with `config`, after validating it against that model and the tensors `flavor` quantizes,
    exactly as `verify_cache` does."""
    requirements = None
    if config is not None:
        from calib.commands.build import cache_requirements
        from calib.models import prepared_model

        model = resolved_model(config)
        requirements = cache_requirements(model, prepared_model(model), flavor)
    return export_cache(Path(cache), trt_version, Path(out), assume=assume_version, overwrite=overwrite,
                        model=requirements)
