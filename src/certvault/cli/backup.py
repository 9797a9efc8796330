"""`certvault backup` and `certvault restore`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certvault.cli.common import (
    err,
    guarded,
    operator,
    out,
    ports_for_command,
    read_secret_file,
)
from certvault.config import Settings
from certvault.services.vault.backup import make_backup
from certvault.services.vault.backup_manifest import Manifest
from certvault.services.vault.restore import restore_backup


def _holds(manifest: Manifest) -> str:
    c = manifest.counts
    return (
        f"{c.get('accounts', 0)} accounts, {c.get('escrowed_keys', 0)} escrowed keys "
        f"({c.get('escrowed_keys_live', 0)} not destroyed), {c.get('certificates', 0)} "
        f"certificates, {c.get('audit_events', 0)} audit events"
    )


def backup_command(
    out_path: Annotated[
        Path, typer.Argument(metavar="OUT", help="A new folder to write the backup to.")
    ],
) -> None:
    """Write a consistent backup of the database (keys still wrapped) with a signed manifest.
    It never holds the master key: keep that apart."""
    with ports_for_command() as ports:
        result = guarded(lambda: make_backup(ports, operator(), out_path))
    m = result.manifest
    f = m.data_file
    out.print(f"backup written to {result.path}", markup=False)
    out.print(
        f"  {m.database_kind} database, schema revision {m.alembic_revision}, "
        f"made {m.created_at} (database time)",
        markup=False,
    )
    out.print(f"  holds {_holds(m)}", markup=False)
    out.print(f"  {f.name}: {f.size} bytes, SHA-256 {f.sha256}", markup=False)
    versions = ", ".join(str(v) for v in m.master_key.versions) or "none"
    err.print(
        "IMPORTANT: this backup is useless without the master key "
        f"(provider {m.master_key.provider}, versions {versions}). It holds no master key, no "
        "PKCS#11 PIN and no audit witness. Keep the master key's shares (or the HSM) apart "
        "from this backup, and never store the two together.",
        markup=False,
    )


def restore_command(
    in_path: Annotated[
        Path, typer.Argument(metavar="IN", help="A backup folder made by `certvault backup`.")
    ],
    share_file: Annotated[
        list[Path] | None,
        typer.Option(
            help="On a new machine without the master key: a file holding one custodian's share "
            "(repeat for M shares). The rebuilt key must open the backup."
        ),
    ] = None,
) -> None:
    """Restore a backup into an EMPTY database, with the master key it was made with. The audit
    witness is never written back: a gap against it is acknowledged in the audit log."""
    settings = guarded(Settings)
    shares = [read_secret_file(p, "share") for p in share_file or []]
    result = guarded(lambda: restore_backup(settings, operator(), in_path, shares))
    if shares:
        out.print(
            f"master key rebuilt from {len(shares)} shares into "
            f"{settings.effective_master_key_dir}",
            markup=False,
        )
    m = result.manifest
    out.print(
        f"restored {in_path} (made {m.created_at}, {m.database_kind}, schema revision "
        f"{m.alembic_revision}): {_holds(m)}",
        markup=False,
    )
    if result.needs_upgrade:
        out.print("schema brought up to date from the backup's revision", markup=False)
    if result.started:
        out.print(
            f"audit witness: none was kept here; started from the restored heads of "
            f"{len(result.started)} chains",
            markup=False,
        )
    for chain in result.acknowledged:
        out.print(
            f"audit witness: chain {chain} had events this backup does not hold; the gap is "
            "recorded as a restore acknowledgement (`certvault audit verify` names it)",
            markup=False,
        )
    for chain in result.missing:
        err.print(
            f"WARNING: the audit witness knows chain {chain}, which this backup does not hold: "
            "an account made after the backup is gone with its keys. Its loss is recorded on "
            "the installation's chain (`certvault audit verify` names it).",
            markup=False,
        )
    for p in result.broken:
        err.print(f"BROKEN chain {p.chain} in the backup: event #{p.seq}: {p.reason}", markup=False)
    out.print(
        "Keys destroyed after this backup was made (retention, destroyed account keys) are back: "
        "run `certvault retention run` again, and destroy account keys again where that was done. "
        "Then check with `certvault audit verify` and `certvault verify`.",
        markup=False,
    )
    if result.broken:
        raise SystemExit(1)
