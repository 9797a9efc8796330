"""`certvault form`: enrollment forms with server-side key generation (create, list, disable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from certvault.cli.common import guarded, operator, out, ports_for_command, read_secret_file
from certvault.services.pki import enrollment_forms

form_app = typer.Typer(
    help="Enrollment forms: the person gets a key made by the server, certified and escrowed.",
    no_args_is_help=True,
)

AccountOption = Annotated[str, typer.Option(help="Account slug.")]


@form_app.command("create")
def form_create(
    account: AccountOption,
    slug: Annotated[str, typer.Option(help="In the form's URL (a-z, 0-9, -).")],
    profile: Annotated[
        str, typer.Option(help="smime | smime-encryption | smime-signing | client-auth")
    ] = "smime",
    organization: Annotated[
        str | None, typer.Option(help="Organization (name or id) of the persons it enrolls.")
    ] = None,
    access_code_file: Annotated[
        Path | None,
        typer.Option(help="File holding the access code; without it the mailed code suffices."),
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option(help="Allowed address domain (repeat); default: any.")
    ] = None,
    key_type: Annotated[
        list[str] | None,
        typer.Option(help="Allowed key type (repeat): rsa2048 … ec384; default: the profile's."),
    ] = None,
    dual_key: Annotated[
        bool,
        typer.Option(
            "--dual-key",
            help="Issue an escrowed encryption and a never-escrowed signing certificate.",
        ),
    ] = False,
    allow_own_passphrase: Annotated[
        bool, typer.Option("--allow-own-passphrase", help="Let the person choose the passphrase.")
    ] = False,
    name: Annotated[str, typer.Option(help="Title shown on the page.")] = "",
    ask_name: Annotated[
        str,
        typer.Option(
            help="Ask for first and last name (the certificate's CN): off | optional | required."
        ),
    ] = "off",
) -> None:
    """Create an enrollment form and print its URL."""
    with ports_for_command() as ports:
        code = read_secret_file(access_code_file, "access code") if access_code_file else None
        form = guarded(
            lambda: enrollment_forms.create_form(
                ports,
                operator(),
                account,
                slug=slug,
                profile=profile,
                organization=organization,
                access_code=code,
                domains=domain or (),
                dual_key=dual_key,
                allow_own_passphrase=allow_own_passphrase,
                key_types=key_type or (),
                name=name,
                ask_name=ask_name,
            )
        )
        out.print(f"form {form.slug} created in {account}", markup=False)
        typer.echo(enrollment_forms.form_url(ports.settings, account, form.slug))


@form_app.command("list")
def form_list(account: AccountOption) -> None:
    """List the account's forms: slug, profile, state, access code, domains, URL."""
    with ports_for_command() as ports:
        forms = guarded(lambda: enrollment_forms.list_forms(ports, operator(), account))
        for f in forms:
            typer.echo(
                "\t".join(
                    (
                        f.slug,
                        f.profile + (" dual-key" if f.dual_key else ""),
                        "enabled" if f.enabled else "disabled",
                        "access-code" if f.access_code_hash else "mailed-code-only",
                        f.domains.replace(" ", ",") or "any-domain",
                        enrollment_forms.form_url(ports.settings, account, f.slug),
                    )
                )
            )


@form_app.command("disable")
def form_disable(
    slug: Annotated[str, typer.Argument(help="The form's slug.")], account: AccountOption
) -> None:
    """Disable a form: its page answers 404 and its pending codes stop working."""
    with ports_for_command() as ports:
        guarded(lambda: enrollment_forms.disable_form(ports, operator(), account, slug))
        out.print(f"form {slug} disabled in {account}", markup=False)
