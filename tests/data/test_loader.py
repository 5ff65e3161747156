"""The decoding workers: order, and that every way of stopping ends them (no worker left
running or defunct, no parent waiting forever)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from calib.data import Dataset, get_preset, iter_batches
from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError

REPO = Path(__file__).resolve().parents[2]
HANG = 120  # seconds after which a test calls a run hung (a guard, not a speed claim)


def image_dataset(folder: Path, count: int = 24, size: int = 16) -> Dataset:
    """`count` small seeded PNGs, labels 0..4, preprocessed by the torchvision preset at `size`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), i % 5))
    return Dataset.of(ImageSource(samples, "test-images"), get_preset("torchvision", size))


class SlowSource(ImageSource):
    """Each image takes 0.1 s to open: every worker is always in the middle of a task."""

    def open(self, sample):
        time.sleep(0.1)
        return super().open(sample)


def live_children() -> list[psutil.Process]:
    """Live child processes, except multiprocessing's resource tracker (started once by the first
    spawn-context process of the session, e.g. another test's, and kept on purpose)."""
    def tracker(c: psutil.Process) -> bool:
        try:
            return any("resource_tracker" in part for part in c.cmdline())
        except psutil.Error:
            return False
    return [c for c in psutil.Process().children(recursive=True) if c.is_running() and not tracker(c)]


def test_workers_give_the_same_batches_in_order(tmp_path):
    ds = image_dataset(tmp_path / "img", 23)
    one = list(iter_batches(ds, 2, workers=0))
    many = list(iter_batches(ds, 2, workers=3, prefetch=1))  # window 3: chunks come back out of order
    assert [b.keys for b in many] == [b.keys for b in one]
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert not live_children()


def test_a_consumer_error_ends_the_workers(tmp_path):
    ds = image_dataset(tmp_path / "img")
    with pytest.raises(RuntimeError, match="consumer failed"):
        with contextlib.closing(iter_batches(ds, 2, workers=2)) as batches:
            for i, _ in enumerate(batches):
                assert len(live_children()) == 2
                if i == 2:
                    raise RuntimeError("consumer failed")
    assert not live_children()  # ended and reaped: none running, none defunct


def test_a_killed_worker_is_an_error_not_a_hang(tmp_path):
    ds = image_dataset(tmp_path / "img", 40)
    ds = Dataset.of(SlowSource(ds.samples, "slow"), ds.preprocess)
    batches = iter_batches(ds, 1, workers=2)
    next(batches)
    os.kill(live_children()[0].pid, signal.SIGKILL)  # the image it was decoding never comes
    with pytest.raises(CalibError, match="image decoding process ended unexpectedly"):
        for _ in batches:
            pass
    assert not live_children()


def test_workers_ignore_ctrl_c_and_do_not_inherit_the_parents_sigterm_handler(tmp_path):
    ds = image_dataset(tmp_path / "img", 40)
    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # as `calib` installs one
    try:
        batches = iter_batches(ds, 1, workers=2)
        next(batches)
        first, second = live_children()
        first.send_signal(signal.SIGINT)  # Ctrl-C reaches the whole process group
        second.send_signal(signal.SIGTERM)
        second.wait(HANG)
        assert first.is_running() and first.status() != psutil.STATUS_ZOMBIE
        assert second.wait(0) == -signal.SIGTERM or not second.is_running()
        batches.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not live_children()


def run_watching_children(script: str, tmp_path: Path, send: int | None = None, after_children: int = 1,
                          delay: float = 0.0):
    """Run `script` in a fresh interpreter (this checkout's calib), remembering every process it
    starts; optionally send it signal `send` `delay` seconds after it has `after_children`
    children. Returns (exit code, stderr, every child it had)."""
    err_path = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    parent = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    sent, deadline, ready = False, time.monotonic() + HANG, None
    while proc.poll() is None:
        if time.monotonic() > deadline:
            for p in [parent, *seen.values()]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            pytest.fail(f"the run hung: {err_path.read_text()[-2000:]}")
        with contextlib.suppress(psutil.Error):
            for child in parent.children(recursive=True):
                seen.setdefault(child.pid, child)
        if ready is None and len(seen) >= after_children:
            ready = time.monotonic()
        if send is not None and not sent and ready is not None and time.monotonic() >= ready + delay:
            proc.send_signal(send)
            sent = True
        time.sleep(0.02)
    if send is not None:
        assert sent, "the script ended before it started its workers"
    return proc.returncode, err_path.read_text(), list(seen.values())


def still_running(procs: list[psutil.Process], wait: float = 0.0) -> list[psutil.Process]:
    """Those of `procs` still running (zombies count as ended) after up to `wait` seconds; they
    are killed before returning, so that a failing test leaves nothing behind either."""
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return alive


SLOW_CONSUMER = """
    import signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_loader import image_dataset
    from calib.data import iter_batches
    {handler}
    # Batches of 4 images at 224x224 (2.4 MB) overflow a pipe: a worker's result waits in it.
    for batch in iter_batches(image_dataset(Path({folder!r}), 60, size=224), 4, workers=2):
        time.sleep(0.2)
    """


def test_sigterm_handled_like_ctrl_c_ends_the_run_and_its_workers(tmp_path):
    # The handler `calib` installs: SIGTERM raises, the loader's finally ends the workers.
    handler = ("class Interrupted(Exception): pass\n    def stop(*a): raise Interrupted('interrupted')\n"
               "    signal.signal(signal.SIGTERM, stop)")
    code, err, children = run_watching_children(
        SLOW_CONSUMER.format(tests=str(Path(__file__).parent), handler=handler, folder=str(tmp_path / "img")),
        tmp_path, send=signal.SIGTERM, after_children=2, delay=1.0)
    assert "Interrupted: interrupted" in err
    assert code != 0 and len(children) == 2 and not still_running(children)


def test_a_parent_killed_outright_leaves_no_worker_behind(tmp_path):
    # Killed a second into the stream: results wait in the pipe that no one will read again.
    code, _, children = run_watching_children(
        SLOW_CONSUMER.format(tests=str(Path(__file__).parent), handler="", folder=str(tmp_path / "img")),
        tmp_path, send=signal.SIGKILL, after_children=2, delay=1.0)
    assert code == -signal.SIGKILL and len(children) == 2
    assert not still_running(children, wait=10)  # orphans notice within a poll interval (0.5 s)
