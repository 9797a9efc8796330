"""The benchmarks still run: each at a tiny size, as a subprocess, printing its ratios.

Only that they run and report is checked here; the numbers are for people (DESIGN §9).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# benchmark, tiny-size arguments, the ratios it must print
BENCHMARKS = [
    (
        "kdf.py",
        ["--rounds", "50", "--budget", "700", "--repeat", "1"],
        [
            "Python/native",
            "two native KDFs on two threads / one after the other",
            "certvault/openssl",
            "certvault/openssl",
            "legacy/PBES2 cost at the same budget",
        ],
    ),
    (
        "agent_decrypt.py",
        ["--repeat", "2"],
        [
            "wrong recipient/success",
            "bad padding/success",
            "bad blob/success",
            "wrong length/success",
            "bad hash/success",
            "slowest/fastest key-dependent failure",
        ],
    ),
]


@pytest.mark.parametrize(("script", "args", "ratios"), BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_benchmark_runs_at_a_tiny_size(script, args, ratios):
    # The benchmark imports certvault from the same source tree the tests run on.
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = re.findall(r"([\w#/ .-]+?) = \d+\.\d+x", result.stdout)
    assert [name.strip() for name in printed] == ratios, result.stdout


# The benchmarks that print their figures against a target rather than as "name = N.NNx".
TARGETED = [
    ("archive.py", ["--count", "2", "--kind", "ec256"], ["% of raw"]),
    ("release.py", ["--rounds", "2048"], ["outside the KDF (direct)"]),
    ("enroll.py", ["--count", "2", "--kind", "ec256"], ["% of raw", "overhead beyond keygen"]),
    (
        "api.py",
        ["--count", "2", "--kind", "ec256", "--downloads", "2", "--threads", "2", "--serial", "2"]
        + ["--rounds", "2048"],
        ["% of in-process", "outside the KDF p50"],
    ),
    (
        "recovery.py",
        ["--count", "2", "--floor-ms", "20"],
        ["answer floor 0 ms", "answer floor 20 ms", "with keys p50 / unknown p50"],
    ),
]


@pytest.mark.parametrize(("script", "args", "figures"), TARGETED, ids=[b[0] for b in TARGETED])
def test_targeted_benchmark_runs_at_a_tiny_size(script, args, figures):
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": path},
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in figures:
        assert figure in result.stdout, result.stdout
