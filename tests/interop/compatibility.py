"""The interop suite's results and the page made from them, docs/compatibility.md.

Each test module records one cell per (tool, profile, key type, passphrase kind) it checked.
Once every case of a module has run, the module's results replace its direction in
docs/compatibility.json and the page is rendered again from that file. A partial run (one test,
-k) publishes nothing. Everything is sorted, so a re-run with the same tools changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cryptography

DOCS = Path(__file__).resolve().parents[2] / "docs"
DATA, PAGE = DOCS / "compatibility.json", DOCS / "compatibility.md"
COMMAND = "PYTHONPATH=src .venv/bin/pytest -p no:cacheprovider tests/interop"

# Results, as shown in the table.
OPENS = "yes"
LIMIT = "no (tool limit)"
REFUSED = "refused, as it must"
FAILS = "FAILS"

KEY_ORDER = ("RSA-2048", "RSA-3072", "RSA-4096", "P-256", "P-384", "Ed25519")
KINDS = ("generated", "ASCII", "NFC", "NFD")
IMPORT_CHECKS = ("certvault import", "reader vs pyca")


@dataclass(frozen=True, order=True)
class Cell:
    direction: str  # "export" or "import"
    tool: str  # export: the tool that opened the file; import: the tool that made it
    profile: str  # export: the encryption profile; import: how the tool made the file
    key: str  # key type(s)
    passphrase: str  # export: generated, ASCII, NFC, NFD; import: ASCII, non-ASCII, empty
    result: str
    detail: str = ""
    check: str = ""  # import: "certvault import" or "reader vs pyca"
    file: str = ""  # import: the vector's file name


@dataclass
class Recorder:
    """The cells of one module, published once all of its cases have run."""

    direction: str
    cases: set[str]
    cells: list[Cell] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    def record(self, case: str, cells: list[Cell]) -> None:
        self.cells.extend(cells)
        self.done.add(case)

    def publish(self) -> bool:
        if self.done != self.cases:
            return False
        publish(self.direction, self.cells)
        return True


def publish(direction: str, cells: list[Cell]) -> None:
    DOCS.mkdir(exist_ok=True)
    with DATA.open("a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # xdist runs the two directions in two workers
        handle.seek(0)
        text = handle.read()
        data: dict[str, object] = json.loads(text) if text.strip() else {}
        data[direction] = [asdict(c) for c in sorted(set(cells))]
        data["tools"] = tool_versions()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        handle.flush()
        PAGE.write_text(render(data), encoding="utf-8")


def tool_versions() -> dict[str, str]:
    def first_line(*args: str) -> str:
        done = subprocess.run(list(args), capture_output=True, text=True, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    nss = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libnss3"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "certtool": f"GnuTLS {first_line('certtool', '--version').split()[-1]}",
        "keytool": first_line("java", "-version").replace('"', ""),
        "nss": f"NSS {nss or 'unknown'}",
        "openssl": first_line("openssl", "version").split(" (")[0],
        "pyca": f"pyca/cryptography {cryptography.__version__}",
    }


# --- rendering -------------------------------------------------------------------------------


def _cells(data: dict[str, object], direction: str) -> list[Cell]:
    raw = data.get(direction, [])
    assert isinstance(raw, list)
    return sorted(Cell(**c) for c in raw)


def render(data: dict[str, object]) -> str:
    tools = data.get("tools", {})
    assert isinstance(tools, dict)
    lines = [
        "# Compatibility: which tools open certvault's files, which files certvault imports",
        "",
        "<!-- Generated; do not edit. -->",
        "**Generated** by the interop suite (`tests/interop`, part of `make test`) from its last",
        f"complete run, kept in `docs/compatibility.json`. Regenerate with `{COMMAND}`. Every cell",
        "is a check that ran: a tool opened the file and the key it found is the escrowed key",
        "(the CA certificate beside it), or it failed the way the table says.",
        "",
        "Tools: " + "; ".join(version for _, version in sorted(tools.items())) + ".",
        "",
    ]
    lines += _render_export(_cells(data, "export"))
    lines += _render_import(_cells(data, "import"))
    return "\n".join(lines).rstrip() + "\n"


def _render_export(cells: list[Cell]) -> list[str]:
    if not cells:
        return []
    lines = [
        "## Export: files certvault releases, opened by each tool",
        "",
        "Released over the REST API (`POST /api/v1/certificates/{id}/key`) with each profile and "
        "four kinds of passphrase: **generated** by certvault, an own **ASCII** one, an own "
        "non-ASCII one typed composed (**NFC**) and the same typed decomposed (**NFD**). "
        "certvault does not normalise passphrases, so a file opens with exactly the form typed; "
        "the rows *other form* try the other normalisation form and must fail.",
        "",
    ]
    by_row: dict[tuple[str, str], dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        by_row[(cell.tool, cell.profile)][cell.key].append(cell)
    keys = [k for k in KEY_ORDER if any(k in row for row in by_row.values())]
    notes: dict[str, str] = {}
    lines.append("| tool | profile | " + " | ".join(keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for (tool, profile), row in sorted(by_row.items()):
        lines.append(
            f"| {tool} | {profile} | "
            + " | ".join(_summary(row.get(k, []), notes) for k in keys)
            + " |"
        )
    lines.append("")
    lines += [f"{mark} {text}" for mark, text in sorted(notes.items())]
    lines.append("")
    return lines


def _summary(cells: list[Cell], notes: dict[str, str]) -> str:
    """One table cell: the results per passphrase kind, with a note for every failure."""
    if not cells:
        return "–"
    by_result: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_result[cell.result].append(cell)
    every_kind = len(cells) == len(KINDS)
    parts = []
    for result in sorted(by_result, key=lambda r: (r != OPENS, r)):
        group = sorted(by_result[result], key=lambda c: KINDS.index(c.passphrase))
        marks = ""
        for detail in sorted({c.detail for c in group if c.detail}):
            mark = next((m for m, t in notes.items() if t == detail), None)
            if mark is None:
                mark = f"[{len(notes) + 1}]"
                notes[mark] = detail
            marks += mark
        if every_kind and len(by_result) == 1:
            return f"{result}{marks}"
        parts.append(f"{result}: {', '.join(c.passphrase for c in group)}{marks}")
    return "<br>".join(parts)


def _render_import(cells: list[Cell]) -> list[str]:
    if not cells:
        return []
    lines = [
        "## Import: files other tools made, uploaded through the REST API",
        "",
        "The committed vectors in `tests/vectors/interop/` (made by "
        "`tests/vectors/make_interop_vectors.sh`; commands and passwords in its README), each "
        "uploaded with `POST /api/v1/persons/{id}/keys`, every stored key downloaded again and "
        "compared with the key the tool was given. *Reader vs pyca*: certvault's reader and "
        "pyca's `load_pkcs12` find the same key and certificates, or both refuse.",
        "",
        "| made by | variant | key | password | file | certvault import | reader vs pyca |",
        "|---|---|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str, str, str, str], dict[str, Cell]] = defaultdict(dict)
    for cell in cells:
        rows[(cell.tool, cell.profile, cell.key, cell.passphrase, cell.file)][cell.check] = cell
    for (maker, variant, key, password, file), row in sorted(rows.items()):
        shown = []
        for check in IMPORT_CHECKS:
            cell = row.get(check)
            shown.append("–" if cell is None else _with_detail(cell))
        lines.append(
            f"| {maker} | {variant} | {key} | {password} | `{file}` | {shown[0]} | {shown[1]} |"
        )
    lines.append("")
    return lines


def _with_detail(cell: Cell) -> str:
    return f"{cell.result} ({cell.detail})" if cell.detail else cell.result
