"""Processes `tokometer serve` starts die with it, however it dies (kill -9 included), so no
orphaned worker keeps serving and writing and no model server keeps its port.

Linux's PR_SET_PDEATHSIG has the kernel signal the child when the thread that forked it ends;
elsewhere children outlive a killed parent as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Call in the child: be killed when `parent` dies (or exit now if it already has)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)
