"""calib under torchrun (calib.passes.distributed), on the CPU: two node ranks of torchrun on this
machine over gloo, CPU runners; the cache and the run bit-identical to one process's; a failing
rank ends every rank with a non-zero exit and one line, within a bounded time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calib.errors import CalibError
from calib.placement import Launch, Placement
from tests.conftest import make_classifier, make_image_folder

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_SECONDS = 180   # each node's torchrun; a hang fails the test instead of the suite


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           **extra}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")   # both "nodes" are this machine
    return env


# -- torchrun's variables ------------------------------------------------------------------------

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_torchrun_variables_make_a_launch():
    assert Launch.from_env({}) is None
    assert Launch.from_env({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}) is None
    assert Launch.from_env({**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}) is None   # one process is one process
    assert Launch.from_env(TORCHRUN) == Launch(rank=0, world=2, local_rank=0, local_world=1)
    assert Launch.from_env({**TORCHRUN, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                            "LOCAL_WORLD_SIZE": "2"}) == Launch(3, 4, 1, 2)
    for bad in ({"RANK": "x"}, {"RANK": "2"}, {"LOCAL_RANK": "1"}):
        with pytest.raises(CalibError, match="torchrun"):
            Launch.from_env({**TORCHRUN, **bad})


def test_a_placement_under_torchrun_is_one_device_per_process():
    rank0 = Launch(0, 4, 0, 2)
    cpu = Placement.parse("cpu", rank0)
    assert cpu.world == 4 and cpu.sharded and not cpu.several and cpu.devices == ("cpu",)
    assert str(cpu) == "torchrun: 4 processes, the CPU each"
    gpu = Placement.parse("cuda", Launch(0, 4, 1, 2))
    assert gpu.devices == ("cuda:1",) and gpu.sharded and not gpu.several
    for spec in ("cuda:0,1", "cuda:1", "cuda:0"):
        with pytest.raises(CalibError, match="--device cuda"):
            Placement.parse(spec, rank0)
    assert Placement((0,)).within(rank0) == Placement((0,), world=4)
    assert Placement.parse("cpu") == Placement() and not Placement.parse("cuda:0,1").world > 1


def test_the_collective_timeout_is_read_once():
    from calib.passes.distributed import DEFAULT_TIMEOUT, collective_timeout

    assert collective_timeout({}) == DEFAULT_TIMEOUT and collective_timeout({"CALIB_DIST_TIMEOUT": "12.5"}) == 12.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(CalibError, match="CALIB_DIST_TIMEOUT"):
            collective_timeout({"CALIB_DIST_TIMEOUT": bad})


# -- two torchrun nodes on this machine ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, cwd: Path, cwds: dict[int, Path] | None = None, env: dict | None = None):
    """Both node ranks of `torchrun --nnodes 2 --nproc-per-node 1 -m calib.cli ARGS`, each in its
    own process group (so that a hang is ended whole); returns [(returncode, stdout, stderr)] by
    node rank, and the seconds until both ended."""
    port = _free_port()
    start = time.perf_counter()
    procs = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "calib.cli", *map(str, args)]
        procs.append(subprocess.Popen(command, cwd=(cwds or {}).get(node, cwd), env=_env(**(env or {})),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, TORCHRUN_SECONDS - (time.perf_counter() - start)))
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    return results, time.perf_counter() - start


def calib_errors(stderr: str) -> list[str]:
    """calib's own error lines (torchrun adds its failure summary around them)."""
    return [line for line in stderr.splitlines() if line.startswith("calib: error:")]


def _single(args: list, cwd: Path):
    proc = subprocess.run([sys.executable, "-m", "calib.cli", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=TORCHRUN_SECONDS)
    assert proc.returncode == 0, proc.stderr
    return proc


def _without(report: dict, *keys) -> dict:
    return {k: v for k, v in report.items() if k not in keys}


def test_two_torchrun_nodes_write_one_process_cache(tmp_path):
    """Two node ranks of torchrun on gloo, CPU runners: rank 0 writes the cache a single process
    writes, byte for byte (the sidecar too, but its timing and date); rank 1 writes nothing."""
    model = make_classifier(tmp_path / "tiny.onnx")
    make_image_folder(tmp_path / "val")
    # entropy: the histograms decide; 20 images in batches of 3: ranks of 4 and 3 batches, one short
    args = ["calibrate", "--model", model, "--data-dir", "val", "--samples", 20, "--calib-batch-size", 3,
            "--calibrator", "entropy"]
    one = _single([*args, "--cache-dir", "single"], tmp_path)
    (rc0, out0, err0), (rc1, out1, err1) = torchrun([*args, "--cache-dir", "dist"], tmp_path)[0]
    assert rc0 == 0 and rc1 == 0, err0 + err1
    cache = Path(out0.strip().splitlines()[-1])
    assert cache.name == Path(one.stdout.strip().splitlines()[-1]).name and (tmp_path / "dist" / cache.name).is_file()
    assert out1 == "" and not calib_errors(err1)
    single, dist = tmp_path / "single" / cache.name, tmp_path / "dist" / cache.name
    assert dist.read_bytes() == single.read_bytes()
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (single, dist))
    assert a["channel_means"] and _without(a, "seconds", "created") == _without(b, "seconds", "created")


@pytest.mark.slow
def test_two_torchrun_nodes_run_like_one_process(tmp_path):
    """`calib run` under torchrun: the calibration and the evaluation passes shared over the
    process group; the INT8 model and every figure of the report are one process's."""
    model = make_classifier(tmp_path / "tiny.onnx")
    make_image_folder(tmp_path / "val")
    args = ["run", "--model", model, "--data-dir", "val", "--samples", 12, "--calib-batch-size", 3,
            "--batch-size", 4, "--no-html", "--speed-seconds", 0]
    _single([*args, "--cache-dir", "c1", "--out", "one"], tmp_path)
    (rc0, _, err0), (rc1, out1, err1) = torchrun([*args, "--cache-dir", "c2", "--out", "two"], tmp_path)[0]
    assert rc0 == 0 and rc1 == 0, err0 + err1
    assert out1 == "" and not calib_errors(err1)
    assert (tmp_path / "two" / "int8.onnx").read_bytes() == (tmp_path / "one" / "int8.onnx").read_bytes()
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert b["device"] == "torchrun: 2 processes, the CPU each" and b["eval"]["samples"] == 15
    for r in (a, b):   # the timings and the output paths aside
        r["calibration"].pop("seconds"), r["calibration"].pop("cache"), r["eval"].pop("seconds")
    assert _without(a, "device", "int8_model") == _without(b, "device", "int8_model")


def test_a_rank_that_cannot_see_the_images_ends_both(tmp_path):
    """Rank 1 started where the relative --data-dir is not (a node without the data): rank 1 says
    so, rank 0 names rank 1, both exit non-zero in one calib line each, and no cache is written."""
    model = make_classifier(tmp_path / "tiny.onnx")
    make_image_folder(tmp_path / "val")
    (tmp_path / "elsewhere").mkdir()
    args = ["calibrate", "--model", model, "--data-dir", "val", "--samples", 20, "--calib-batch-size", 3,
            "--cache-dir", tmp_path / "dist"]
    results, seconds = torchrun(args, tmp_path, cwds={1: tmp_path / "elsewhere"})
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc0 != 0 and rc1 != 0
    assert len(calib_errors(err0)) == 1 and len(calib_errors(err1)) == 1, err0 + err1
    assert "rank 1 (cpu on" in calib_errors(err0)[0] and "not here" in calib_errors(err0)[0]
    assert "not here" in calib_errors(err1)[0]
    assert not (tmp_path / "dist").exists() and seconds < TORCHRUN_SECONDS


def test_rank_0_failing_ends_the_other_ranks(tmp_path):
    """Rank 0 fails before any pass (its data folder does not exist): rank 1, waiting for its
    first task, ends too, non-zero, its line naming rank 0's error."""
    model = make_classifier(tmp_path / "tiny.onnx")
    args = ["calibrate", "--model", model, "--data-dir", "missing", "--cache-dir", tmp_path / "dist"]
    (rc0, _, err0), (rc1, _, err1) = torchrun(args, tmp_path)[0]
    assert rc0 != 0 and rc1 != 0
    assert calib_errors(err0) == ["calib: error: data folder not found: missing (how to get ImageNet: "
                                  "datasets/imagenet-val.md)"]
    assert len(calib_errors(err1)) == 1 and "rank 0 failed: data folder not found" in calib_errors(err1)[0]
