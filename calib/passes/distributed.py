"""A torchrun job's processes share calib's passes: the second transport of `calib.passes.shard`.

Launched by torchrun (https://pytorch.org/docs/stable/elastic/run.html: one process per device,
any number of hosts; `calib.placement.Launch` reads the variables it sets), every process joins
one torch.distributed process group (https://pytorch.org/docs/stable/distributed.html,
`init_process_group` with the `env://` method torchrun's variables are for). Rank 0 runs the
command itself, alone: it reads the options, plans the data, reuses or writes the cache and the
report. Every other rank only serves passes (`run`): for each sharded pass rank 0 sends the
tasks `calib.passes.shard` builds for either transport (the same deterministic split: batch i to
rank i mod world), each rank takes its own (`tasks[rank]`), runs the one walk on its device (the
CPU with `--device cpu`, `cuda:LOCAL_RANK` with `--device cuda`) and its payload is gathered to
rank 0, which merges them with the code the multiprocessing transport uses (`merge_collect`,
`merge_evaluate`). So the cache is the one a single process writes, bit for bit (the timing
aside), and only rank 0 writes anything: the others end with exit 0 and no output.

Why gloo, and the object collectives (`broadcast_object_list`, `all_gather_object`,
`gather_object`): what crosses is host objects only, pickled (statistics' state dicts with their
bin counts, channel-mean logs, top-5 indices, the model bytes, the dataset's sample list). A
GPU's activations are reduced on that GPU (`TensorStatistics` takes device tensors), so no device
tensor would ever cross; with NCCL the object collectives would copy each pickle onto the GPU and
back (torch.distributed's notes on them), and a CPU-only job, the test of this module, could not
run at all. Pickles are trusted here: they come from the job's own processes.

Failures end every rank, in one line each, and never hang:
- collectives of a pass wait at most CALIB_DIST_TIMEOUT seconds (`init_process_group(timeout=)`,
  default 1800, torch's own default for gloo);
- once its models are loaded, every rank all-gathers an ok/error flag before any rank walks; a
  rank that fails later sends its error instead of its payload; rank 0 raises naming the ranks
  that failed, then tells the others to stop (`abort`), and each exits non-zero with its line;
- a rank that dies outright (killed, out of memory) closes its connections: gloo raises on every
  peer at once ("Connection closed by peer"), which ends them with one line too;
- between passes the other ranks wait for rank 0's next message without a deadline (on a second
  group whose timeout is a week): rank 0 may write a report or rank layers for a long while.
"""

from __future__ import annotations

import os
import re
import socket
import time
from datetime import timedelta

from calib.errors import CalibError
from calib.placement import Launch

TIMEOUT_VARIABLE = "CALIB_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
IDLE_TIMEOUT = timedelta(days=7)   # the wait for rank 0's next message (see the module docstring)

_JOB: "Job | None" = None


def collective_timeout(environ=None) -> float:
    """Seconds a collective of a pass may wait (CALIB_DIST_TIMEOUT, default 1800)."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CalibError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds above 0")
    return value


class _Lost(CalibError):
    """The process group itself failed (a peer gone, a timeout): no further collective can run."""


class _PeerFailed(Exception):
    """Another rank reported a failure at the ready flags: every rank stops its share there."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(error: BaseException) -> str:
    return _one_line(error) if isinstance(error, CalibError) else _one_line(f"{type(error).__name__}: {error}")


def _transport_error(error: BaseException) -> str:
    """gloo's message without its source location and its advice: "Connection closed by peer
    [127.0.0.1]:11675", "Timed out waiting 1800000ms for recv operation to complete"."""
    text = _one_line(error)
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically", 1)[0].rstrip(".")


class Job:
    """This process's membership of the torchrun job: the default process group (the collectives of
    a pass, CALIB_DIST_TIMEOUT each) and a second one (`control`: rank 0's messages, no deadline)."""

    def __init__(self, launch: Launch, timeout: float | None = None):
        self.launch = launch
        self.rank = launch.rank
        self.host = socket.gethostname()
        self.timeout = collective_timeout() if timeout is None else timeout
        self.in_pass = False
        try:
            import torch.distributed as dist
        except ImportError:
            from calib.errors import MissingDependency

            raise MissingDependency("torch", "running under torchrun") from None
        if not dist.is_available() or not dist.is_gloo_available():
            raise CalibError("this torch has no torch.distributed with gloo: calib's torchrun jobs need it")
        self.dist = dist
        try:
            dist.init_process_group("gloo", init_method="env://", rank=launch.rank, world_size=launch.world,
                                    timeout=timedelta(seconds=self.timeout))
            self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        except Exception as e:  # a rendezvous that failed or timed out: torch's message, in one line
            raise CalibError(f"rank {self.rank} on {self.host} could not join the torchrun job's process group: "
                             f"{_describe(e)}") from None

    def where(self, device: str) -> str:
        return f"rank {self.rank} ({device} on {self.host})"

    def close(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:
            pass

    # ------------------------------------------------------------------ the collectives
    def _collective(self, what: str, call, *args, **kwargs):
        """Run one collective; the group's own failure (a peer gone, a timeout) becomes `_Lost`."""
        try:
            return call(*args, **kwargs)
        except Exception as e:
            why = _transport_error(e)
            hint = (f"a rank did not answer within {TIMEOUT_VARIABLE}={self.timeout:g} s" if "timed out" in why.lower()
                    else "the log of the rank that stopped says why")
            raise _Lost(f"rank {self.rank} on {self.host}: the torchrun job broke while {what} ({why}): {hint}") \
                from None

    def post(self, message: tuple) -> None:
        """Rank 0: send `message` to every other rank."""
        self._collective("sending the next task", self.dist.broadcast_object_list, [message], src=0,
                         group=self.control)

    def receive(self) -> tuple:
        """Another rank: rank 0's next message."""
        box = [None]
        self._collective("waiting for rank 0", self.dist.broadcast_object_list, box, src=0, group=self.control)
        return box[0]

    # ------------------------------------------------------------------ a pass
    def share(self, kind: str, tasks: list[dict], on_gpu: bool) -> "_Share":
        """This rank's share of a pass (`tasks[rank]`) on its device, and on rank 0 every rank's
        payload (in rank order) or every failure. Runs the same collectives on every rank,
        whatever fails where: the ready flags, then (when all were ready) the gather."""
        from calib.passes.ranks import RANK_WORK, decode_workers, use_device

        device = f"cuda:{self.launch.local_rank}" if on_gpu else "cpu"
        task = tasks[self.rank]
        task = dict(task, workers=decode_workers(task["workers"], on_gpu, self.launch.local_world))
        ready = _Ready(self, device)
        out = _Share()
        payload, error = None, None
        try:
            use_device(device)
            _check_files(task["dataset"])
            payload = RANK_WORK[kind](device, task, ready)
        except _Lost:
            raise
        except _PeerFailed:
            pass                     # another rank's failure, in ready.failures
        except Exception as e:
            error = _describe(e)
            out.own = CalibError(f"{self.where(device)}: {error}") if isinstance(e, CalibError) else e
            if not ready.passed:
                ready.fail(error)    # the flags the others are waiting in
        if ready.failures:           # every rank saw them: no results to gather
            out.failures = ready.failures
            return out
        gathered = [None] * self.launch.world if self.rank == 0 else None
        self._collective("gathering the results", self.dist.gather_object, (payload, error, self.where(device)),
                         gathered, dst=0)
        if self.rank == 0:
            out.seconds = time.perf_counter() - ready.at
            out.failures = [f"{where} failed: {err}" for _, err, where in gathered if err is not None]
            out.payloads = [p for p, _, _ in gathered]
        return out

    # ------------------------------------------------------------------ the two roles
    def lead(self, kind: str, tasks: list[dict], on_gpu: bool) -> tuple[list[dict], float]:
        """Rank 0: one pass shared with every rank; (payloads in rank order, seconds)."""
        self.in_pass = True
        self.post(("pass", kind, tasks, on_gpu))
        out = self.share(kind, tasks, on_gpu)
        self.in_pass = False
        if out.own is not None and not isinstance(out.own, CalibError):
            raise out.own            # a bug here: its traceback
        if out.failures:
            more = f" (and {len(out.failures) - 1} more)" if len(out.failures) > 1 else ""
            raise CalibError(f"{out.failures[0]}{more}")
        return out.payloads, out.seconds

    def serve(self) -> None:
        """Any other rank: do rank 0's passes until it says done (return) or stops (raise: this
        rank's own failure, or rank 0's word)."""
        own = None
        while True:
            message = self.receive()
            if message[0] == "pass":
                own = own or self.share(*message[1:]).own
            elif message[0] == "done" and own is None:
                return
            elif own is not None:
                raise own
            else:
                raise CalibError(f"rank {self.rank} on {self.host} stopped: rank 0 failed: {message[1]}")

    def finish(self, error: BaseException | None = None) -> None:
        """Rank 0, at the end of its command: tell every other rank to end, with exit 0 or, after
        `error`, with its line. In the middle of a pass they are in a collective of it instead:
        this process's exit closes its connections and ends them (see the module docstring)."""
        if self.in_pass:
            return
        try:
            self.post(("done",) if error is None else ("abort", _describe(error)))
        except _Lost:
            pass   # they are gone already


class _Share:
    """What one pass left on a rank: its own failure (`own`), and on rank 0 every rank's failure
    or payload and the seconds from all ready to all gathered."""

    def __init__(self):
        self.own: BaseException | None = None
        self.failures: list[str] = []
        self.payloads: list = []
        self.seconds = 0.0


class _Ready:
    """The barrier of a pass (the `barrier` the rank work waits on once its models are loaded): an
    all-gather of every rank's ok/error flag, so that a rank that failed to load stops them all."""

    def __init__(self, job: Job, device: str):
        self.job, self.device = job, device
        self.passed = False
        self.failures: list[str] = []
        self.at = 0.0

    def _flags(self, error: str | None) -> None:
        flags = [None] * self.job.launch.world
        self.job._collective("waiting for every rank to load its models", self.job.dist.all_gather_object, flags,
                             (error, self.job.where(self.device)))
        self.passed = True
        self.at = time.perf_counter()
        self.failures = [f"{where} failed: {err}" for err, where in flags if err is not None]

    def wait(self) -> None:
        self._flags(None)
        if self.failures:
            raise _PeerFailed()

    def fail(self, error: str) -> None:
        self._flags(error)


def _check_files(dataset) -> None:
    """Every image file of this rank's share must be here at the path rank 0 listed: on another
    host a missing file would be skipped as undecodable, and the statistics would silently differ
    from one process's. The file is the sample's origin (a demo variant's photo too); sources that
    are not files (hf:) travel inside the task."""
    source = dataset.source
    if getattr(source, "kind", None) != "images":
        return
    missing = [s.key for s in dataset.samples if not os.path.exists(source.origin(s))]
    if missing:
        raise CalibError(f"{len(missing)} of the {len(dataset.samples)} images of this rank's share are not here "
                         f"(first: {missing[0]}): every host must see the data at the path rank 0 lists (an absolute "
                         f"--data-dir on storage every host mounts, or the same copy at the same path)")


class Group:
    """The transport `calib.passes.shard` uses under torchrun, from rank 0."""

    shares_files = False   # other hosts: models travel as bytes

    def __init__(self, job: Job, on_gpu: bool):
        self.job, self.on_gpu = job, on_gpu

    @property
    def ranks(self) -> int:
        return self.job.launch.world

    def workers(self, workers: int | None) -> int | None:
        return workers   # each rank resolves None to its own host's share (`decode_workers`)

    def run(self, kind: str, tasks: list[dict]) -> tuple[list[dict], float]:
        return self.job.lead(kind, tasks, self.on_gpu)


def group(on_gpu: bool) -> Group:
    """The transport of the job this process leads (`run`)."""
    if _JOB is None:
        raise CalibError("calib is under torchrun (RANK, WORLD_SIZE, ... are set) but its processes have not "
                         "joined: start it as `torchrun ... -m calib.cli COMMAND`, or call "
                         "calib.passes.distributed.run(fn) on every rank")
    if _JOB.rank != 0:
        raise CalibError(f"rank {_JOB.rank} serves rank 0's passes and leads none")
    return Group(_JOB, on_gpu)


def run(fn, launch: Launch):
    """`fn()` on rank 0 of the torchrun job `launch`, every other rank serving its passes. Returns
    fn's result on rank 0 and None on the others, whose work is done; raises on every rank when
    one failed (rank 0 with fn's own error)."""
    global _JOB
    job = _JOB = Job(launch)
    try:
        if launch.rank != 0:
            job.serve()
            return None
        try:
            result = fn()
        except SystemExit as e:   # the CLI's exit: 0 (or None) is done
            job.finish(None if e.code in (None, 0) else CalibError(f"rank 0 exited with code {e.code}"))
            raise
        except BaseException as e:
            job.finish(e)
            raise
        job.finish()
        return result
    finally:
        _JOB = None
        job.close()
