"""The `certvault` command. It acts as the operator (`operator:<user>@<host>`), never as an
administrator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certvault import __version__
from certvault.cli import backup as backup_commands
from certvault.cli import keys as keys_commands
from certvault.cli import master_key as master_key_commands
from certvault.cli.admin_password import reset_password
from certvault.cli.admin_totp import reset_totp
from certvault.cli.agent import agent_app
from certvault.cli.ca import ca_app
from certvault.cli.common import err, guarded, operator, out, ports_for_command, read_secret_file
from certvault.cli.form import form_app
from certvault.cli.retention import destroy_keys, hold_app, retention_app
from certvault.cli.rotation import rotate_account
from certvault.cli.serve import serve
from certvault.cli.verify import verify
from certvault.services.access import admins, tokens
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel import notify, tenancy

app = typer.Typer(
    name="certvault",
    help="Self-hosted key escrow vault for the private keys of client certificates.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    add_completion=False,
)
account_app = typer.Typer(
    help="Accounts (tenants) and their Key Vault switch.", no_args_is_help=True
)
admin_app = typer.Typer(help="Administrators of an account.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
mail_app = typer.Typer(help="The mail outbox.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(admin_app, name="admin")
app.add_typer(audit_app, name="audit")
app.add_typer(mail_app, name="mail")
app.add_typer(token_app, name="token")
app.add_typer(keys_commands.kek_app, name="kek")
master_key_commands.register(keys_commands.kek_app)
app.add_typer(ca_app, name="ca")
app.add_typer(form_app, name="form")
app.add_typer(agent_app, name="agent")
app.command("import")(keys_commands.import_command)
app.command("export")(keys_commands.export_command)
app.command("serve")(serve)
app.command("verify")(verify)
admin_app.command("reset-totp")(reset_totp)
admin_app.command("reset-password")(reset_password)
app.command("backup")(backup_commands.backup_command)
app.command("restore")(backup_commands.restore_command)
app.add_typer(retention_app, name="retention")
app.add_typer(hold_app, name="hold")
account_app.command("destroy-keys")(destroy_keys)
keys_commands.kek_app.command("rotate-account")(rotate_account)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def init() -> None:
    """Create CERTVAULT_HOME, the database and the master key. Safe to run again."""
    with ports_for_command(initializing=True) as ports:
        result = guarded(lambda: accounts.initialize(ports, operator()))
        s = ports.settings
        out.print(f"certvault home: {s.home_dir}")
        out.print("database: " + ("created" if result.created_database else "up to date"))
        if result.created_master_key:
            out.print(f"master key: created in {s.effective_master_key_dir}")
        else:
            out.print("master key: present (never overwritten)")
        if result.sealed_rows:
            out.print(f"row seals: {result.sealed_rows} rows of the earlier version sealed")
        if not result.shares_exported:
            err.print(
                "[bold yellow]WARNING[/]: the master key exists in ONE file only. If that file is "
                "lost, EVERY escrowed key is lost with it. Split it now for custodians:\n"
                "    certvault kek export-shares --threshold 2 --shares 3\n"
                "and keep the master-key directory out of database backups.",
                markup=True,
            )


@account_app.command("create")
def account_create(
    name: str,
    slug: Annotated[str, typer.Option(help="Short name used in URLs (a-z, 0-9, -).")],
    enable_key_vault: Annotated[bool, typer.Option("--enable-key-vault")] = False,
) -> None:
    """Create an account with its default organization and account key."""
    with ports_for_command() as ports:
        account = guarded(
            lambda: accounts.create_account(
                ports, operator(), name, slug, key_vault_enabled=enable_key_vault
            )
        )
        out.print(
            f"account {account.slug} created (Key Vault "
            f"{'enabled' if account.key_vault_enabled else 'disabled'})"
        )


@account_app.command("show")
def account_show(slug: str) -> None:
    """Show an account."""
    with ports_for_command() as ports:

        def work() -> str:
            with ports.db.read() as session:
                a = tenancy.get_account(session, slug)
                return (
                    f"{a.slug}\t{a.name}\tkey_vault={'on' if a.key_vault_enabled else 'off'}"
                    f"\tuuid={a.uuid}"
                )

        typer.echo(guarded(work))  # plain tabs for scripts


def _set_key_vault(slug: str, enabled: bool) -> None:
    with ports_for_command() as ports:
        guarded(lambda: accounts.set_key_vault(ports, operator(), slug, enabled))
        out.print(
            f"Key Vault {'enabled' if enabled else 'disabled'} for {slug}"
            + ("" if enabled else "; escrowed keys stay, archive and release are refused")
        )


@account_app.command("enable-key-vault")
def account_enable(slug: str) -> None:
    """Enable Key Vault for an account."""
    _set_key_vault(slug, True)


@account_app.command("disable-key-vault")
def account_disable(slug: str) -> None:
    """Disable Key Vault (keys stay; archive and release are refused while disabled)."""
    _set_key_vault(slug, False)


@account_app.command("trust-issuer")
def account_trust_issuer(
    slug: str, certificate: Annotated[Path, typer.Argument(help="Issuer certificate, PEM or DER.")]
) -> None:
    """Add an issuer the account trusts for the certificates it escrows."""
    from cryptography import x509

    with ports_for_command() as ports:

        def work() -> None:
            data = certificate.read_bytes()
            try:
                cert = (
                    x509.load_pem_x509_certificate(data)
                    if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data)
                )
            except ValueError:
                from certvault.errors import InvalidInput

                raise InvalidInput("Not a certificate (PEM or DER).") from None
            accounts.add_trusted_issuer(ports, operator(), slug, cert)

        guarded(work)
        out.print("trusted issuer added")


@account_app.command("require-trusted-issuer")
def account_require_trusted(
    slug: str, required: Annotated[bool, typer.Option("--on/--off")] = True
) -> None:
    """Refuse (or accept again) keys whose certificate does not chain to a trusted issuer."""
    with ports_for_command() as ports:
        guarded(lambda: accounts.set_require_trusted_issuer(ports, operator(), slug, required))
        out.print(f"trusted issuer {'required' if required else 'not required'} for {slug}")


@account_app.command("release-policy")
def account_release_policy(
    slug: str,
    reason: Annotated[
        bool | None,
        typer.Option("--reason-required/--reason-optional", help="A reason for every release."),
    ] = None,
    own: Annotated[
        bool | None,
        typer.Option(
            "--allow-own-passphrase/--generated-passphrase-only",
            help="Whether administrators may choose the passphrase of a released key.",
        ),
    ] = None,
    min_length: Annotated[
        int | None, typer.Option("--min-passphrase-length", help="8 to 64.")
    ] = None,
) -> None:
    """Set how the account's keys are released (shows the policy when given nothing)."""
    with ports_for_command() as ports:
        a = guarded(
            lambda: accounts.set_release_policy(
                ports,
                operator(),
                slug,
                reason_required=reason,
                allow_own_passphrase=own,
                min_passphrase_length=min_length,
            )
        )
        typer.echo(
            f"reason_required={'yes' if a.reason_required else 'no'}"
            f"\tallow_own_passphrase={'yes' if a.allow_own_passphrase else 'no'}"
            f"\tmin_passphrase_length={a.min_passphrase_length}"
        )


@admin_app.command("create")
def admin_create(
    login: str,
    account: Annotated[str, typer.Option(help="Account slug.")],
    role: Annotated[str, typer.Option(help="account | organization")] = "account",
    organization: Annotated[list[str] | None, typer.Option(help="Organization name or id.")] = None,
    privilege: Annotated[list[str] | None, typer.Option(help="Privilege to grant.")] = None,
    api_only: Annotated[bool, typer.Option("--api-only")] = False,
    password_file: Annotated[Path | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create an administrator; without --password-file a strong password is printed once."""
    with ports_for_command() as ports:
        password = read_secret_file(password_file, "password") if password_file else None
        created = guarded(
            lambda: admins.create_admin(
                ports,
                operator(),
                account,
                login,
                role=role,
                organizations=organization or [],
                privileges=privilege or [],
                api_only=api_only,
                password=password,
                email=email,
            )
        )
        out.print(f"administrator {created.login} created in {account}")
        if created.generated_password:
            out.print(f"password (shown once): {created.generated_password}")


@token_app.command("create")
def token_create(
    login: str,
    account: Annotated[str, typer.Option(help="Account slug.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="read, keys:upload, keys:download, manage (default: all allowed)."),
    ] = None,
    expires: Annotated[int, typer.Option(help="Days until it expires.")] = 90,
) -> None:
    """Create an API token for an administrator; it is printed once and stored only hashed."""
    with ports_for_command() as ports:
        created = guarded(
            lambda: tokens.create_token(
                ports, operator(), account, login, scopes=scope or [], expires_days=expires
            )
        )
        err.print(
            f"token {created.token_id} for {login} ({' '.join(created.scopes)}), "
            f"expires in {expires} days; shown once:",
            markup=False,
        )
        typer.echo(created.token)


@token_app.command("revoke")
def token_revoke(
    token_id: int, account: Annotated[str, typer.Option(help="Account slug.")]
) -> None:
    """Revoke an API token."""
    with ports_for_command() as ports:
        guarded(lambda: tokens.revoke_token(ports, operator(), account, token_id))
        out.print(f"token {token_id} revoked")


@token_app.command("list")
def token_list(account: Annotated[str, typer.Option(help="Account slug.")]) -> None:
    """List API tokens (never their values)."""
    with ports_for_command() as ports:
        rows = guarded(lambda: tokens.list_tokens(ports, operator(), account))
        for t, login in rows:
            state = "revoked" if t.revoked_at else "active"
            expires = t.expires_at.date().isoformat() if t.expires_at else "never"
            typer.echo(f"{t.id}\t{login}\t{t.prefix}...\t{t.scopes}\t{state}\texpires {expires}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every audit chain; exit 1 naming the first broken event of each broken chain."""
    with ports_for_command() as ports:
        report = guarded(lambda: audit_checks.verify_chains(ports))
        for p in report.problems:
            where = f"event #{p.seq}" + (f" (row {p.event_id})" if p.event_id else "")
            err.print(f"BROKEN chain {p.chain}: {where}: {p.reason}", markup=False)
        for note in report.acknowledged:
            out.print(f"NOTE chain {note.chain}: event #{note.seq}: {note.reason}", markup=False)
        if not report.ok:
            raise SystemExit(1)
        out.print(f"OK: {report.chains} chains, {report.events} events verified")


@audit_app.command("acknowledge-restore")
def audit_acknowledge_restore(
    reason: Annotated[str, typer.Option(help="Why the database was restored (kept in the log).")],
    account: Annotated[str | None, typer.Option(help="Account slug.")] = None,
    installation: Annotated[
        bool, typer.Option("--installation", help="The installation's own chain.")
    ] = False,
) -> None:
    """After a deliberate restore of an older database: let the audit log go on past the events
    the witness saw and the database lost, recording the gap as an event."""
    if (account is None) == (not installation):
        err.print("Name one chain: --account SLUG or --installation.")
        raise SystemExit(2)
    with ports_for_command() as ports:
        name = guarded(lambda: audit_checks.chain_named(ports, account))
        event = guarded(lambda: audit_checks.acknowledge_restore(ports, operator(), name, reason))
        out.print(
            f"chain {name}: restore acknowledged as event #{event.seq}; "
            "`certvault audit verify` names it from now on",
            markup=False,
        )


@mail_app.command("send")
def mail_send() -> None:
    """Deliver due messages from the outbox (failed ones are retried later with backoff)."""
    with ports_for_command() as ports:
        result = guarded(lambda: notify.send_pending(ports))
        out.print(f"sent {result.sent}, failed {result.failed}, still pending {result.pending}")
        if result.held:
            out.print(
                f"HELD {result.held}: changed in the database since they were queued, not sent;"
                " `certvault verify` names them",
                markup=False,
            )
        if result.failed or result.held:
            raise SystemExit(1)


def main() -> None:
    # A database that goes away mid-command is reported in one line, as everything else is.
    guarded(app)
