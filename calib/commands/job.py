"""How a command runs in this process: alone, or, when torchrun started it (its variables read by
`calib.placement.Launch`), as one rank of a job. Rank 0 runs the command and every other rank
serves its passes, then ends with nothing written (`calib.passes.distributed.run`, whose
docstring says why and how failures end every rank). Here so that the command line stays thin:
it hands each command to `run_command` and knows nothing of process groups."""

from __future__ import annotations

from typing import Callable, TypeVar

from calib.placement import Launch

T = TypeVar("T")


def run_command(command: Callable[[], T]) -> T | None:
    """`command()` in this process; under torchrun, on rank 0 with the other ranks serving its
    passes (they return None once rank 0 is done)."""
    launch = Launch.from_env()
    if launch is None:
        return command()
    from calib.passes import distributed

    return distributed.run(command, launch)
