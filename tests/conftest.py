import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("CALIB_TEST_IMAGES", REPO.parent / "shared" / "data" / "imagenet-sample"))


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    if not (SAMPLE / "val").is_dir():
        pytest.skip(f"the shared ImageNet sample is not at {SAMPLE} (set CALIB_TEST_IMAGES)")
    return SAMPLE


@pytest.fixture()
def small_imagenet(tmp_path, imagenet_sample) -> Path:
    """A class-sorted folder with a few real images (some grayscale, one with a quote in its
    name), one file name with spaces, and one corrupt JPEG."""
    root = tmp_path / "val"
    val = imagenet_sample / "val"
    wnids = sorted(os.listdir(val))
    chosen = wnids[:6] + [w for w in wnids if any("'" in f for f in os.listdir(val / w))][:1]
    for wnid in chosen:
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for f in os.listdir(val / wnid):
            shutil.copy(val / wnid / f, root / wnid / f)
    first = sorted(os.listdir(root / chosen[0]))[0]
    shutil.copy(root / chosen[0] / first, root / chosen[0] / "with space and 'quote'.JPEG")
    (root / chosen[1] / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def make_classifier(path: Path, classes: int = 1000, size: int = 16, seed: int = 0) -> Path:
    """A small float ONNX image classifier with the structures the Q/DQ flavors care about:
    Conv -> Clip(0, 6) (ReLU6), a depthwise Conv, a residual Add, GlobalAveragePool, Reshape, Gemm."""
    rng = np.random.default_rng(seed)
    c = 8

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (c, 3, 3, 3)), init("b1", (c,), 0.1),
        init("w2", (c, 1, 3, 3)), init("b2", (c,), 0.1),
        init("w3", (c, c, 1, 1)), init("b3", (c,), 0.1),
        init("wf", (classes, c)), init("bf", (classes,), 0.1),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        numpy_helper.from_array(np.array([-1, c], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "r1"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["pool"]),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_image_folder(root: Path, count: int = 27) -> Path:
    """An ImageNet-layout folder (`imagenet-val`) of `count` small random JPEGs of 3 classes, of
    varied heights, at `root`."""
    from PIL import Image

    from calib.data.classes import wnid_to_index

    rng = np.random.default_rng(0)
    for i, wnid in enumerate((sorted(wnid_to_index())[:3] * count)[:count]):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(root / wnid / f"i{i}.JPEG")
    return root


@pytest.fixture()
def tiny_classifier(tmp_path) -> Path:
    return make_classifier(tmp_path / "tiny.onnx")


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path_factory, monkeypatch):
    # Exports of zoo models are shared across tests (slow to redo); everything else is per test.
    monkeypatch.setenv("CALIB_HOME", str(tmp_path_factory.getbasetemp() / "calib-home"))


def has_cuda_ort() -> bool:
    """A CUDA GPU that torch sees and ONNX Runtime's CUDA provider: what the GPU tests need."""
    try:
        import torch

        from calib.onnx_io import cuda_provider_available
    except ImportError:
        return False
    return torch.cuda.is_available() and cuda_provider_available()


def install_fake_plugin(root: Path, package: str, source: str, group: str, entries: dict[str, str]) -> None:
    """Write an installed-looking distribution under `root`: package `package` (its __init__ is
    `source`) and a dist-info whose entry points put `entries` (name -> "module:attr") in
    `group`. Prepend `root` to sys.path (monkeypatch.syspath_prepend) to install it."""
    import textwrap

    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
