"""`certvault kek create | rotate-master | migrate | retire`: where the master key lives, and its
versions (docs/master-key.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy import make_url

from certvault.cli.common import err, fail, guarded, operator, out, ports_for_command
from certvault.config import Settings
from certvault.errors import CertvaultError
from certvault.services.kernel.ports import pkcs11_provider
from certvault.services.vault import master_key_rotation as rotation


def register(kek: typer.Typer) -> None:
    kek.command("create")(create)
    kek.command("rotate-master")(rotate_master)
    kek.command("migrate")(migrate)
    kek.command("retire")(retire)


def create(
    provider: Annotated[str, typer.Option(help="Where to create the master key: pkcs11.")],
) -> None:
    """Create the first master key in a PKCS#11 token (CERTVAULT_PKCS11_*); refuses if one is there.

    The file master key is made by `certvault init`; later versions of either by
    `certvault kek rotate-master`.
    """
    if provider != "pkcs11":
        fail(
            "kek create makes a key in a PKCS#11 token (--provider pkcs11). The file master key "
            "is made by `certvault init`, and new versions by `certvault kek rotate-master`.",
            "usage",
            2,
        )

    def work() -> tuple[int, str]:
        token = pkcs11_provider(Settings())
        try:
            found = token.versions()
            if found:
                fail(
                    f"The token {token.token_label!r} already holds {token.key_label}-v"
                    f"{max(found)}; certvault never replaces a master key. New versions come "
                    "from `certvault kek rotate-master`.",
                    "pkcs11_key_exists",
                )
            version = token.create_version()
            return version, "AES-GCM" if token.uses_gcm else "AES key wrap + HMAC-SHA256"
        finally:
            token.close()

    version, mechanism = guarded(work)
    out.print(
        f"created {Settings().pkcs11_key_label}-v{version} in the token "
        f"(non-extractable AES-256; wraps with {mechanism})"
    )
    _audit_if_installed("kek.create", {"provider": "pkcs11", "version": version})


def _audit_if_installed(action: str, details: dict[str, object]) -> None:
    """Record the creation on the installation's chain, when there is an installation yet."""
    from certvault.cli.common import _has_schema

    settings = Settings()
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).is_file():
        return  # opening it would create it
    if not _has_schema(settings.effective_database_url):
        return
    with ports_for_command() as ports:

        def work() -> None:
            rotation._audit(ports, operator(), action, "success", details)

        try:
            work()
        except CertvaultError as exc:
            err.print(f"warning: not audited: [{exc.code}] {exc.message}", markup=False)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=not sys.stderr.isatty(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _summary(report: rotation.RewrapReport) -> str:
    verb = "would rewrap" if report.dry_run else "rewrapped"
    moved = ", ".join(f"{n} from {origin}" for origin, n in sorted(report.by_origin.items()))
    return (
        f"{verb} {report.account_keys} account keys and {report.service_keys} service keys "
        f"to {report.provider} v{report.version}" + (f" ({moved})" if moved else "")
    )


def rotate_master(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be rewrapped; change nothing.")
    ] = False,
) -> None:
    """Make a new master-key version and rewrap every account key and service key to it.

    Online and resumable: run it again after an interruption and it finishes the job. The old
    version stays until `certvault kek retire` removes it.
    """
    with ports_for_command() as ports, _progress("rewrapping") as progress:
        report = guarded(
            lambda: rotation.rotate_master(ports, operator(), dry_run=dry_run, progress=progress)
        )
    if report.finished_earlier_run:
        err.print(
            f"{'would finish' if dry_run else 'finished'} an unfinished rotation to "
            f"{report.provider} v{report.version}; run rotate-master again for a new version.",
            markup=False,
        )
    elif report.created_version is not None:
        err.print(f"created master key {report.provider} v{report.created_version}", markup=False)
    out.print(_summary(report))


def migrate(
    to: Annotated[str, typer.Option("--to", help="The provider to move into: pkcs11.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be rewrapped; change nothing.")
    ] = False,
) -> None:
    """Rewrap every account key and service key into the token, with the server running.

    First `kek create --provider pkcs11`, then every node configured with
    CERTVAULT_MASTER_KEY_PROVIDER=pkcs11 and the file master-key directory still readable.
    """
    with ports_for_command() as ports, _progress("migrating") as progress:
        report = guarded(
            lambda: rotation.migrate(ports, operator(), to, dry_run=dry_run, progress=progress)
        )
    out.print(_summary(report))
    if not dry_run:
        err.print(
            "every live key is now wrapped by the token; retire the file key with "
            "`certvault kek retire VERSION --provider file` once no backup needs it",
            markup=False,
        )


def retire(
    version: Annotated[int, typer.Argument(help="The master-key version to remove.", min=1)],
    provider: Annotated[
        str | None, typer.Option(help="file or pkcs11 (default: the configured provider).")
    ] = None,
) -> None:
    """Remove an old master-key version for good; refused while any wrapped key uses it.

    Backups taken before its keys were rewrapped need it: keep it (or its shares) until they
    have aged out.
    """
    with ports_for_command() as ports:
        kind = provider or ports.master_key.name
        guarded(lambda: rotation.retire(ports, operator(), kind, version))
    out.print(f"retired master key {kind} v{version}")
