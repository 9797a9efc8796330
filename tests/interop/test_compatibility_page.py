"""docs/compatibility.md is what the suite's results render to, never typed by hand, and the
rendering does not depend on the order the results came in."""

from __future__ import annotations

import fcntl
import json
import random
from dataclasses import asdict

from tests.interop.compatibility import DATA, FAILS, LIMIT, OPENS, PAGE, Cell, render


def test_the_committed_page_is_the_rendering_of_the_committed_results() -> None:
    with DATA.open(encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # a module of this run may be publishing right now
        data = json.load(handle)
        page = PAGE.read_text(encoding="utf-8")
    assert page == render(data)
    assert {"export", "import", "tools"} <= set(data)


def _export(tool: str, key: str, kind: str, result: str, detail: str = "") -> Cell:
    return Cell("export", tool, "AES256-SHA256", key, kind, result, detail)


def test_rendering_is_sorted_and_notes_each_failure_once() -> None:
    cells = [
        _export("B tool", key, kind, OPENS)
        for key in ("P-256", "Ed25519")
        for kind in ("generated", "ASCII", "NFC", "NFD")
    ]
    cells += [_export("A tool", "P-256", kind, OPENS) for kind in ("generated", "ASCII")]
    cells += [
        _export("A tool", "P-256", kind, LIMIT, "refuses non-ASCII") for kind in ("NFD", "NFC")
    ]
    cells += [_export("A tool", "Ed25519", kind, FAILS, "broke") for kind in ("NFC", "ASCII")]
    shuffled = cells[:]
    random.Random(7).shuffle(shuffled)
    tools = {"openssl": "OpenSSL 3"}
    first = render({"export": [asdict(c) for c in cells], "tools": tools})
    second = render({"export": [asdict(c) for c in shuffled], "tools": tools})
    assert first == second
    rows = [line for line in first.splitlines() if line.startswith("| ")]
    assert rows[0] == "| tool | profile | P-256 | Ed25519 |"
    assert rows[1] == (
        "| A tool | AES256-SHA256 | yes: generated, ASCII<br>no (tool limit): NFC, NFD[1] "
        "| FAILS: ASCII, NFC[2] |"
    )
    assert rows[2] == "| B tool | AES256-SHA256 | yes | yes |"
    assert "[1] refuses non-ASCII" in first and "[2] broke" in first
    assert "Tools: OpenSSL 3." in first
