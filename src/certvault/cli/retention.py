"""`certvault retention`, `certvault hold` and `certvault account destroy-keys`: when escrowed
keys are destroyed, which are held back, and crypto-shredding of a whole account
(docs/retention.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from certvault.cli.common import err, fail, guarded, operator, out, ports_for_command
from certvault.services.vault import holds, retention

retention_app = typer.Typer(
    help="Retention policies: destroy escrowed keys N days after their certificates expire.",
    no_args_is_help=True,
)
hold_app = typer.Typer(
    help="Legal holds on a person's or a certificate's keys.", no_args_is_help=True
)

MAX_ID = 2**31 - 1

Account = Annotated[str, typer.Option("--account", help="Account slug.")]
Profile = Annotated[
    str | None,
    typer.Option(help="Only certificates issued under this profile (default: the account's)."),
]


def _id(text: str, what: str) -> int:
    raw = text.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) <= MAX_ID:
        fail(f"{what} must be a positive whole number.", "invalid_input")
    return int(raw)


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


# --- policies -----------------------------------------------------------------------------------


@retention_app.command("set")
def retention_set(
    account: Account,
    days: Annotated[
        str, typer.Option(help="Days after the certificate expires (0 or more), or off.")
    ],
    profile: Profile = None,
) -> None:
    """Set the account's retention policy, or one profile's within it."""
    with ports_for_command() as ports:
        view = guarded(
            lambda: retention.set_policy(ports, operator(), account, days=days, profile=profile)
        )
        out.print(f"{account}: {view.scope}: {view.rule}", markup=False)


@retention_app.command("clear")
def retention_clear(account: Account, profile: Profile = None) -> None:
    """Remove the account's policy (its keys are kept), or one profile's (it follows the
    account's again)."""
    with ports_for_command() as ports:
        removed = guarded(
            lambda: retention.clear_policy(ports, operator(), account, profile=profile)
        )
        scope = f"profile {profile}" if profile else "account"
        out.print(
            f"{account}: {scope}: " + ("policy removed" if removed else "had no policy"),
            markup=False,
        )


@retention_app.command("show")
def retention_show(account: Account) -> None:
    """Show the account's retention policies and active legal holds."""
    with ports_for_command() as ports:
        policies = guarded(lambda: retention.list_policies(ports, operator(), account))
        active = guarded(lambda: holds.list_holds(ports, operator(), account, active_only=True))
        if not policies:
            out.print(f"{account}: no retention policy: keys are kept forever", markup=False)
        for p in policies:  # plain tabs for scripts
            typer.echo(f"{p.scope}\t{p.rule}\t(set by {p.updated_by}, {_when(p.updated_at)})")
        typer.echo(f"active legal holds: {len(active)}")


@retention_app.command("run")
def retention_run(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what is due; destroy nothing.")
    ] = False,
) -> None:
    """Destroy every escrowed key that is due under its account's policy and not held. Safe to
    run from cron on several nodes: one run at a time, and a rerun destroys nothing twice."""
    with ports_for_command() as ports:
        report = guarded(
            lambda: retention.run_retention(ports, operator(), account, dry_run=dry_run)
        )
        for run in report.accounts:
            out.print(
                f"{run.slug}: due {run.due}, destroyed {run.destroyed}, held back {run.held}"
                + (f", refused {run.refused}" if run.refused else ""),
                markup=False,
            )
        when = f" (database time {_when(report.at)})" if report.at else ""
        done = (
            f"would destroy {report.due - report.held}"
            if dry_run
            else f"destroyed {report.destroyed}"
        )
        out.print(f"total: due {report.due}, {done}, held back {report.held}{when}", markup=False)
        if report.refused:
            err.print(
                f"{report.refused} keys were left alone: a certificate using them failed its "
                "integrity check; `certvault verify` names it.",
                markup=False,
            )
            raise SystemExit(1)


# --- holds --------------------------------------------------------------------------------------


@hold_app.command("add")
def hold_add(
    account: Account,
    reason: Annotated[str, typer.Option(help="Why (kept in the hold and the audit log).")],
    person: Annotated[str | None, typer.Option(help="The person's email.")] = None,
    certificate: Annotated[str | None, typer.Option(help="The certificate's id.")] = None,
) -> None:
    """Put a legal hold on a person's keys, or on one certificate's key."""
    if (person is None) == (certificate is None):
        fail("Name one: --person EMAIL or --certificate ID.", "invalid_input", 2)
    certificate_id = _id(certificate, "--certificate") if certificate is not None else None
    with ports_for_command() as ports:
        view = guarded(
            lambda: holds.add_hold(
                ports,
                operator(),
                account,
                person_email=person,
                certificate_id=certificate_id,
                reason=reason,
            )
        )
        out.print(f"hold {view.id} added on {view.target}", markup=False)


@hold_app.command("release")
def hold_release(
    account: Account,
    hold_id: Annotated[str, typer.Argument(metavar="HOLD_ID")],
    reason: Annotated[str, typer.Option(help="Why it is released.")],
) -> None:
    """Release a legal hold: its keys follow the retention policy again."""
    number = _id(hold_id, "HOLD_ID")
    with ports_for_command() as ports:
        view = guarded(
            lambda: holds.release_hold(ports, operator(), account, number, reason=reason)
        )
        out.print(f"hold {view.id} on {view.target} released", markup=False)


@hold_app.command("list")
def hold_list(
    account: Account,
    active: Annotated[bool, typer.Option("--active", help="Only active holds.")] = False,
) -> None:
    """List the account's legal holds (tab-separated: id, state, target, since, by, reason)."""
    with ports_for_command() as ports:
        found = guarded(lambda: holds.list_holds(ports, operator(), account, active_only=active))
        for h in found:
            state = "active" if h.active else f"released {_when(h.released_at)}"
            typer.echo(
                f"{h.id}\t{state}\t{h.target}\t{_when(h.created_at)}\t{h.created_by}\t{h.reason}"
            )


# --- crypto-shredding ---------------------------------------------------------------------------


def destroy_keys(
    slug: str,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Really destroy them; there is no undo.")
    ] = False,
) -> None:
    """Destroy the account key (every version) and with it every escrowed key of the account:
    crypto-shredding. Refused while any legal hold of the account is active."""
    with ports_for_command() as ports:
        if not confirm:
            plan = guarded(lambda: retention.shred_plan(ports, operator(), slug))
            out.print(
                f"This would destroy {plan.account_key_versions} account-key version(s) and "
                f"{plan.escrowed_keys} escrowed key(s) of {plan.slug}: none of them could be "
                "recovered from this installation again, and the account would take no new "
                "keys. Backups taken before would still hold them until they age out.",
                markup=False,
            )
            if plan.active_holds:
                out.print(
                    f"It is refused now: {plan.active_holds} legal hold(s) active "
                    "(certvault hold list).",
                    markup=False,
                )
            out.print("Nothing was done. Run again with --confirm to destroy them.", markup=False)
            raise SystemExit(2)
        result = guarded(lambda: retention.destroy_account_keys(ports, operator(), slug))
        out.print(
            f"{result.slug}: destroyed {result.account_key_versions} account-key version(s) and "
            f"{result.escrowed_keys} escrowed key(s) at {_when(result.at)}.",
            markup=False,
        )
        out.print(
            f"BACKUPS: every backup of this installation taken before {_when(result.at)} still "
            "holds the wrapped account key and these escrowed keys, and opens them with the "
            "master key. Shredding is complete only once all of those backups have aged out "
            "or been destroyed. Restoring one brings the keys back: run "
            f"`certvault account destroy-keys {result.slug} --confirm` again after any restore.",
            markup=False,
        )
