"""What every fault drill shares: its size, and how it says what it tried and what it found.

Each drill in this folder runs in `make test` in a short form; `make drills` sets
``CERTVAULT_DRILLS=long`` and runs the long form (more runs, more load, larger data).
"""

from __future__ import annotations

import os

LONG = os.environ.get("CERTVAULT_DRILLS") == "long"


def size(short: int, long: int) -> int:
    """How many runs (or keys, or clients) a drill uses in this form."""
    return long if LONG else short


def report(drill: str, **counts: object) -> str:
    """Print one line naming the drill and its counts (keys acknowledged, verified, lost...)."""
    line = f"DRILL {drill}: " + ", ".join(
        f"{name.replace('_', ' ')} {value}" for name, value in counts.items()
    )
    print(line, flush=True)
    return line
