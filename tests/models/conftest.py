"""Tiny torch classifiers exported once per test session, both exporters (torch_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch_models


@pytest.fixture(scope="session")
def export_model(tmp_path_factory):
    """export_model(arch, exporter, **kw) -> path of the exported .onnx (made once per session)."""
    made: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def get(arch: str, exporter: str, **kw) -> Path:
        key = (arch, exporter, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")  # the dynamo exporter builds its graphs with it
        if key not in made:
            folder = root / f"{arch}-{exporter}-{len(made)}"
            folder.mkdir()
            made[key] = torch_models.export(arch, folder / f"{arch}.onnx", exporter == "dynamo", **kw)
        return made[key]

    return get
