"""Whether the process that left something behind (a staging directory, a lock file) still runs."""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def process_gone(host: object, pid: object) -> bool:
    """True only when ``host`` is this machine and no process ``pid`` runs here. A process on
    another machine cannot be checked from here, so it never counts as gone (callers fall back on
    an age limit or keep waiting)."""
    if host != HOST or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
