"""`certvault verify`: the row seals, then the verification drill (a full pass or a sample), and
the drill's gauges for node_exporter's textfile collector.

Exit codes: 0 all well, 1 a failure (a broken key, a tampered row or record), 2 bad usage,
74 the metrics file could not be written, 75 another node is running the drill (try later)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from certvault.cli.common import err, fail, guarded, operator, out, ports_for_command
from certvault.services.kernel import seals
from certvault.services.kernel.duties import DutyLost, DutyRunning
from certvault.services.kernel.ports import Ports
from certvault.services.vault import drill_record
from certvault.services.vault.verification import REASON_TEXT, DrillReport, verify_escrow
from certvault.web.metrics import drill_text

EXIT_IO = 74  # EX_IOERR
EXIT_TEMPORARY = 75  # EX_TEMPFAIL: the drill is running elsewhere; the next timer run goes on


def verify(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Check N keys (the next ones of a pass over every key, and some at random) "
            "instead of all of them.",
        ),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Also write the drill's gauges here (Prometheus text, for node_exporter's "
            "textfile collector), replacing the file atomically.",
        ),
    ] = None,
) -> None:
    """Check the seal of every row that grants access or decides policy, then decrypt escrowed
    keys in memory, validate them and check them against their certificates."""
    if metrics_file is not None:
        _check_metrics_target(metrics_file)
    with ports_for_command() as ports:
        rows = guarded(lambda: seals.check_rows(ports))
        for p in rows.problems:
            err.print(f"TAMPERED {p.table} row {p.uuid}: {p.reason}", markup=False)
        out.print(f"sealed rows checked: {rows.rows}, failures: {len(rows.problems)}")
        if not rows.ok:
            # The drill would stop at the first refused row; the rows above come first.
            raise SystemExit(1)
        report = guarded(lambda: _run(ports, account, sample))
        _print(report)
        if metrics_file is not None:
            body = guarded(lambda: drill_text(drill_record.latest(ports)))
            _write_atomically(metrics_file, body)
        if not report.ok:
            raise SystemExit(1)


def _run(ports: Ports, account: str | None, sample: int | None) -> DrillReport:
    try:
        return verify_escrow(ports, operator(), account, sample=sample)
    except (DutyRunning, DutyLost) as exc:  # not a failure of the keys: a later run goes on
        fail(exc.message, exc.code, EXIT_TEMPORARY)


def _print(report: DrillReport) -> None:
    previous = report.previous
    if previous.status == "broken":
        err.print(
            f"TAMPERED drill record: {previous.problem}; not believed, a new pass begins"
            " (`certvault audit verify` names the event)",
            markup=False,
        )
    for f in report.failures:
        why = REASON_TEXT.get(f.reason, f.reason) + (f" ({f.detail})" if f.detail else "")
        err.print(f"FAILED {f.account} key {f.escrowed_key_uuid}: {f.reason}: {why}", markup=False)
    if report.mode == "sample":
        out.print(
            f"sample: {report.keys + report.destroyed} keys"
            + (
                f", {report.rechecked} found broken before checked again"
                if report.rechecked
                else ""
            )
            + (", a full pass completed" if report.full_pass else ""),
            markup=False,
        )
    out.print(
        f"keys checked: {report.keys}, certificates: {report.certificates}, "
        f"failures: {len(report.failures)}, destroyed: {report.destroyed}"
    )
    if report.last_full_pass_at:
        out.print(f"last full pass: {report.last_full_pass_at}", markup=False)


def _check_metrics_target(path: Path) -> None:
    """Refuse a metrics file that cannot be written before the drill runs (it changes nothing)."""
    parent = path.parent
    if path.is_dir():
        fail(f"The metrics file {path} is a directory.", "invalid_input", 2)
    if not parent.is_dir():
        fail(f"The folder of the metrics file {parent} does not exist.", "invalid_input", 2)
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"The folder of the metrics file {parent} is not writable.", "invalid_input", 2)


def _write_atomically(path: Path, body: bytes) -> None:
    """Write beside the target and rename over it: the collector never reads half a file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        fail(f"Cannot write the metrics file {path}: {exc.strerror}.", "unwritable", EXIT_IO)
