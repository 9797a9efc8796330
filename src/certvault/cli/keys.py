"""Commands that move keys: import, export, and master-key custody (kek)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from certvault.cli.common import (
    err,
    fail,
    guarded,
    operator,
    out,
    ports_for_command,
    read_secret_file,
)
from certvault.services.vault.custody import record_shares_exported, restore_master_key
from certvault.services.vault.imports import FileResult, ImportItem, import_files
from certvault.services.vault.release import release_key

kek_app = typer.Typer(help="Master-key custody: Shamir shares.", no_args_is_help=True)

P12_SUFFIXES = {".p12", ".pfx"}


def _p12_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.suffix.lower() in P12_SUFFIXES and p.is_file()
            )
        else:
            found.append(path)
    return found


def _manifest_items(manifest: Path) -> list[ImportItem]:
    """CSV with a header: file, password_file, email, organization (paths relative to it)."""
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        fail(f"Cannot read the manifest {manifest}.", "invalid_input")
    items = []
    for line, row in enumerate(rows, start=2):
        if not row.get("file") or not row.get("password_file"):
            fail(f"Manifest line {line}: 'file' and 'password_file' are required.", "invalid_input")
        path = base / row["file"]
        password = read_secret_file(base / row["password_file"], "password")
        items.append(
            ImportItem(
                name=str(path),
                load=path.read_bytes,
                password=password,
                person_email=(row.get("email") or None),
                organization=(row.get("organization") or None),
            )
        )
    return items


def import_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders of .p12/.pfx.")
    ] = None,
    account: Annotated[str, typer.Option(help="Account slug.")] = "",
    password_file: Annotated[Path | None, typer.Option(help="Password of every file.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="CSV: file,password_file,email,organization")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Per-entry results as JSON on stdout.")
    ] = False,
) -> None:
    """Import PKCS#12 files into the vault. Exit 0 when all succeeded, 1 when any failed."""
    if not account:
        fail("--account is required.", "usage", 2)
    if (password_file is None) == (manifest is None):
        fail("Give exactly one of --password-file or --manifest.", "usage", 2)
    if manifest is not None:
        items = _manifest_items(manifest)
    else:
        assert password_file is not None
        password = read_secret_file(password_file, "password")
        files = _p12_files(paths or [])
        if not files:
            fail("No .p12 or .pfx files were found.", "usage", 2)
        items = [ImportItem(name=str(p), load=p.read_bytes, password=password) for p in files]

    with (
        ports_for_command() as ports,
        Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=not sys.stderr.isatty(),
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("import", total=len(items))
        report = _Report(as_json)

        def on_file(result: FileResult) -> None:
            report.add(result)
            progress.advance(task)

        # Each file's result is reported as it comes and not kept: memory stays flat.
        guarded(
            lambda: import_files(ports, operator(), account, items, on_file=on_file, keep=False)
        )

    report.finish()
    if not report.ok:
        raise SystemExit(1)


class _Report:
    """Counts, failures on stderr, and (with --json) the per-entry rows."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.files = self.imported = self.existing = self.failed = 0
        self.ok = True
        self.rows: list[dict[str, object]] = []

    def add(self, r: FileResult) -> None:
        self.files += 1
        self.ok = self.ok and r.ok
        if r.error is not None:
            self.failed += 1
            err.print(f"FAILED {r.name}: [{r.error.code}] {r.error.message}", markup=False)
            self._row(
                {
                    "alias": None,
                    "clientCertId": None,
                    "md5": None,
                    "sha1": None,
                    "message": r.error.message,
                    "file": r.name,
                    "warnings": [],
                }
            )
            return
        for code, text in r.warning_messages:
            err.print(f"WARNING {r.name}: [{code}] {text}", markup=False)
        for e in r.entries:
            if not e.ok:
                self.failed += 1
                err.print(f"FAILED {r.name} ({e.alias}): [{e.code}] {e.message}", markup=False)
            elif e.client_cert_id is not None and e.message.startswith("Already"):
                self.existing += 1
            else:
                self.imported += 1
            self._row({**e.scm(), "file": r.name, "warnings": r.warnings})

    def _row(self, row: dict[str, object]) -> None:
        if self.as_json:
            self.rows.append(row)

    def finish(self) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(self.rows, indent=2) + "\n")
        err.print(
            f"files: {self.files}, imported: {self.imported}, already there: {self.existing}, "
            f"failed: {self.failed}",
            markup=False,
        )


def export_command(
    cert_id: Annotated[int, typer.Argument(help="Certificate id.")],
    account: Annotated[str, typer.Option(help="Account slug.")],
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the .p12 (must not exist).")
    ],
    reason: Annotated[str, typer.Option(help="Why the key is released (audited).")],
    passphrase_file: Annotated[Path | None, typer.Option()] = None,
    encryption: Annotated[
        str, typer.Option(help="AES256-SHA256 or TripleDES-SHA1 (legacy).")
    ] = "AES256-SHA256",
) -> None:
    """Release a key as an operator: audited with the reason, the account's administrators told."""
    passphrase = read_secret_file(passphrase_file, "passphrase") if passphrase_file else None
    if out_file.exists():
        fail(f"{out_file} exists; certvault does not overwrite it.", "exists")
    with ports_for_command() as ports:
        batch = guarded(
            lambda: release_key(
                ports,
                operator(),
                account,
                cert_id,
                passphrase=passphrase,
                encryption=encryption,
                reason=reason,
                channel="cli",
            )
        )
    data = batch.releases[0].data
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"Cannot create {out_file}: {exc.strerror}.", "unwritable")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    out.print(f"wrote {out_file} ({batch.releases[0].encryption.value})")
    if batch.generated_passphrase:
        err.print(
            f"passphrase (shown once, not stored): {batch.generated_passphrase}", markup=False
        )


@kek_app.command("export-shares")
def export_shares(
    threshold: Annotated[int, typer.Option(help="Shares needed to rebuild (M).")],
    shares: Annotated[int, typer.Option(help="Shares to make (N).")],
    out_dir: Annotated[
        Path | None, typer.Option(help="Write share-K.txt files (0600) here.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a git work tree all the same.")
    ] = False,
) -> None:
    """Split the master key into N Shamir shares (SLIP-39 words), any M of which rebuild it."""
    from certvault.masterkey.file import FileMasterKeyProvider

    if out_dir is not None:
        _check_share_dir(out_dir, shares, force)
    with ports_for_command() as ports:
        provider = ports.master_key
        if not isinstance(provider, FileMasterKeyProvider):
            fail("Only the file master key can be split into shares.", "unsupported")
        words = guarded(lambda: provider.export_shares(threshold, shares))
        if out_dir is not None:
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for n, share in enumerate(words, start=1):
                fd = os.open(
                    out_dir / f"share-{n}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
                )
                with os.fdopen(fd, "w") as fh:
                    fh.write(share + "\n")
        guarded(lambda: record_shares_exported(ports, operator(), threshold, shares))
    if out_dir is not None:
        out.print(
            f"wrote {shares} shares to {out_dir}; give one to each custodian, then delete them here"
        )
    else:
        for n, share in enumerate(words, start=1):
            out.print(f"share {n}/{shares}: {share}")
    err.print(
        f"Any {threshold} of these {shares} shares rebuild the master key "
        "(`certvault kek restore-shares`).",
        markup=False,
    )


def git_work_tree(path: Path) -> Path | None:
    """The git work tree ``path`` (or the nearest folder of it that exists) lies in, if any."""
    here = path.expanduser().resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _check_share_dir(out_dir: Path, count: int, force: bool) -> None:
    """Refuse, before anything is made, a folder that one `git add .` would commit, and a folder
    that already holds shares (of another set, probably)."""
    tree = git_work_tree(out_dir)
    if tree is not None and not force:
        fail(
            f"{out_dir} is inside the git work tree {tree}: shares there are one `git add` from "
            "a commit. Choose a folder outside it (or pass --force).",
            "inside_git_work_tree",
        )
    taken = [n for n in range(1, count + 1) if (out_dir / f"share-{n}.txt").exists()]
    if taken:
        fail(
            f"{out_dir} already holds share-{taken[0]}.txt: choose an empty folder.",
            "shares_exist",
        )


@kek_app.command("restore-shares")
def restore_shares(
    share_file: Annotated[list[Path] | None, typer.Option(help="A file holding one share.")] = None,
) -> None:
    """Rebuild the master key from M shares (files, or one share per line on standard input)."""
    from certvault.masterkey.file import FileMasterKeyProvider

    if share_file:
        mnemonics = [read_secret_file(p, "share") for p in share_file]
    else:
        if sys.stdin.isatty():
            err.print("Enter one share per line; an empty line ends.", markup=False)
        mnemonics = []
        for line in sys.stdin:
            if not line.strip():
                break
            mnemonics.append(line)
    with ports_for_command() as ports:
        if not isinstance(ports.master_key, FileMasterKeyProvider):
            fail("Only the file master key can be restored from shares.", "unsupported")
        checked = guarded(lambda: restore_master_key(ports, mnemonics))
        out.print(
            f"master key restored in {ports.master_key.directory}"
            + (f"; it opens {checked} wrapped keys of this installation" if checked else "")
        )
