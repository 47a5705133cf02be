"""Writing files so that a failure leaves nothing half-written."""
from __future__ import annotations

import os
from typing import Callable


def write_atomically(path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then move it into place; on any
    error the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
