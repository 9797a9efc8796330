"""`certvault ca`: the built-in CA of an account (init, import an issuing CA, show the chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.cli.common import (
    err,
    fail,
    guarded,
    operator,
    out,
    ports_for_command,
    read_secret_file,
)
from certvault.crypto.profiles import parse_key_type
from certvault.services.pki import authorities, ca

ca_app = typer.Typer(help="The built-in CA of an account.", no_args_is_help=True)

AccountOption = Annotated[str, typer.Option(help="Account slug.")]


@ca_app.command("init")
def ca_init(
    account: AccountOption,
    offline_root: Annotated[
        Path | None,
        typer.Option(help="Write the root key to this new .p12 and keep no copy in certvault."),
    ] = None,
    key_type: Annotated[str, typer.Option(help="ec384 | ec256 | rsa3072 | rsa4096")] = "ec384",
    organization: Annotated[str | None, typer.Option(help="O= in the CA names.")] = None,
    import_issuing: Annotated[
        Path | None,
        typer.Option(
            help="Instead, install this issuing CA (.p12 with its chain) signed elsewhere."
        ),
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="The password of the --import-issuing file.")
    ] = None,
) -> None:
    """Create a root and an issuing CA for an account (or install one signed elsewhere)."""
    if import_issuing is not None:
        if password_file is None or offline_root is not None:
            fail("--import-issuing needs --password-file and excludes --offline-root.", "usage", 2)
        ca_import_issuing(import_issuing, account, password_file)
        return
    with ports_for_command() as ports:
        result = guarded(
            lambda: ca.init_ca(
                ports,
                operator(),
                account,
                key_type=parse_key_type(key_type),
                organization=organization,
                offline_root=offline_root,
            )
        )
    out.print(f"root CA: {result.root.subject.rfc4514_string()}", markup=False)
    out.print(f"issuing CA: {result.issuing.subject.rfc4514_string()}", markup=False)
    out.print(f"CRL: {result.crl_url}", markup=False)
    if result.offline_root is not None:
        err.print(
            f"[bold yellow]IMPORTANT[/]: the root CA key now exists ONLY in "
            f"{result.offline_root}; certvault keeps no copy. Store the file and its passphrase "
            "apart, offline. Lose either and the root can never sign again.",
            markup=True,
        )
        typer.echo(f"root key passphrase (shown once, not stored): {result.root_passphrase}")


@ca_app.command("import-issuing")
def ca_import_issuing(
    p12_file: Annotated[Path, typer.Argument(help="The issuing CA's key, certificate and chain.")],
    account: AccountOption,
    password_file: Annotated[Path, typer.Option(help="The file's password.")],
    name: Annotated[str, typer.Option(help="Its name in the CRL URL.")] = "issuing",
) -> None:
    """Install an issuing CA signed elsewhere; it replaces the active one."""
    password = read_secret_file(password_file, "password")
    try:
        data = p12_file.read_bytes()
    except OSError as exc:
        fail(f"Cannot read {p12_file}: {exc.strerror}.", "unreadable")
    with ports_for_command() as ports:
        row = guarded(
            lambda: ca.import_issuing(ports, operator(), account, data, password, name=name)
        )
        url = authorities.crl_url(ports, account, row.name)
    out.print(f"issuing CA {row.name} installed; CRL: {url}", markup=False)


@ca_app.command("show")
def ca_show(account: AccountOption) -> None:
    """Print the active issuing CA's chain (PEM, issuing CA first, root last)."""
    with ports_for_command() as ports:
        chain = guarded(lambda: ca.issuing_chain(ports, operator(), account))
    typer.echo("".join(c.public_bytes(Encoding.PEM).decode() for c in chain), nl=False)
