"""Optional per-request timing of named phases (the KDF of a release), for `Server-Timing`.

Nothing is measured unless the caller opened an accumulator with :func:`collecting`; otherwise
:func:`measure` costs one context-variable lookup. A context variable follows the request into
the thread pool that runs sync routes, so the route's phases land in the request's accumulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_phases: ContextVar[dict[str, float] | None] = ContextVar("certvault_timing", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Seconds spent in each named phase inside this block, filled in as they finish."""
    phases: dict[str, float] = {}
    token = _phases.set(phases)
    try:
        yield phases
    finally:
        _phases.reset(token)


@contextmanager
def measure(phase: str) -> Iterator[None]:
    phases = _phases.get()
    if phases is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start
