"""Writing files so that a failure leaves nothing half-written."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Sequence


def write_atomically(path, write: Callable[[str], None], companions: Sequence[str] = ()) -> None:
    """Call ``write(tmp)``, ``tmp`` being ``path``'s file name in a new temporary directory
    beside it, then move into place the ``companions`` that it wrote there (file names, e.g. a
    model's external data) and ``path`` last, so that a reader never sees the new ``path``
    without its companions. On any error the temporary directory is removed and ``path`` is
    untouched."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    try:
        write(os.path.join(tmp_dir, name))
        for companion in companions:
            if os.path.exists(os.path.join(tmp_dir, companion)):
                os.replace(os.path.join(tmp_dir, companion), os.path.join(folder, companion))
        os.replace(os.path.join(tmp_dir, name), path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
