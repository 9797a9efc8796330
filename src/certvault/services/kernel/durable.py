"""Files that survive a crash once written."""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """Make the names created, renamed or removed in ``directory`` durable: they live in the
    directory's own blocks, which a sync of the file does not write."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
