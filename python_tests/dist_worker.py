"""Ending a ``torch.multiprocessing.spawn`` worker of the distributed tests."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def finish_worker() -> None:
    """Wait for every rank, then leave without tearing down the gloo process group.

    Call it as the worker's last statement, once its results are on disk. gloo's ProcessGroup
    destructor can deadlock at teardown (torch 2.13: the main thread joins gloo's run-loop thread while
    holding the GIL, and that thread waits for the GIL); it hung a full-suite run with one rank stuck
    in ``destroy_process_group``. The barrier keeps a rank from leaving while another still needs it.
    """
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
