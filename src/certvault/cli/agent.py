"""`certvault agent`: MS agents that forward AD CS archival requests (create, map, list, revoke)."""

from __future__ import annotations

from typing import Annotated

import typer

from certvault.cli.common import guarded, operator, out, ports_for_command
from certvault.services.pki import agents

agent_app = typer.Typer(
    help="MS agents: AD CS enrollment with key archival, forwarded to certvault.",
    no_args_is_help=True,
)

AccountOption = Annotated[str, typer.Option(help="Account slug.")]
NameArgument = Annotated[str, typer.Argument(help="The agent's name.")]


@agent_app.command("create")
def agent_create(account: AccountOption, name: NameArgument) -> None:
    """Register an agent and print its token once (it is stored only as a hash)."""
    with ports_for_command() as ports:
        made = guarded(lambda: agents.create_agent(ports, operator(), account, name))
        out.print(f"agent {made.name} created in {account}; its token (shown once):", markup=False)
        typer.echo(made.token)


@agent_app.command("map")
def agent_map(
    account: AccountOption,
    name: NameArgument,
    template: Annotated[str, typer.Argument(help="The Windows certificate template name.")],
    profile: Annotated[
        str, typer.Option(help="smime | smime-encryption | smime-signing | client-auth")
    ],
    organization: Annotated[
        str | None, typer.Option(help="Organization (name or id) of persons it creates.")
    ] = None,
    archive_key: Annotated[
        bool, typer.Option("--archive-key", help="Escrow the key the request archives.")
    ] = False,
    require_archival: Annotated[
        bool,
        typer.Option(
            "--require-archival",
            help="Refuse requests without an archived key (CERTSRV_E_ARCHIVED_KEY_REQUIRED).",
        ),
    ] = False,
) -> None:
    """Map a Windows template to a profile (replaces an earlier map of the same template)."""
    with ports_for_command() as ports:
        made = guarded(
            lambda: agents.map_template(
                ports,
                operator(),
                account,
                name,
                template,
                profile=profile,
                organization=organization,
                archive_key=archive_key,
                require_archival=require_archival,
            )
        )
        out.print(
            f"template {made.template} of agent {made.agent} -> {_map_text(made)}", markup=False
        )


def _map_text(m: agents.TemplateMap) -> str:
    archival = "required" if m.require_archival else "archive-key" if m.archive_key else "no-key"
    return f"{m.profile}\t{m.organization}\t{archival}"


@agent_app.command("list")
def agent_list(account: AccountOption) -> None:
    """List the agents (name, state, live tokens, last contact) and their template maps."""
    with ports_for_command() as ports:
        found = guarded(lambda: agents.list_agents(ports, operator(), account))
        maps = guarded(lambda: agents.template_maps(ports, operator(), account))
        for a in found:
            contact = a.last_contact_at.isoformat() if a.last_contact_at else "never"
            state = "active" if a.active else "revoked"
            typer.echo(f"{a.name}\t{state}\ttokens={a.live_tokens}\tlast_contact={contact}")
            for m in (m for m in maps if m.agent == a.name):
                typer.echo(f"  {m.template}\t{_map_text(m)}")


@agent_app.command("revoke")
def agent_revoke(account: AccountOption, name: NameArgument) -> None:
    """Deactivate an agent and revoke its tokens: its requests are refused from now on."""
    with ports_for_command() as ports:
        count = guarded(lambda: agents.revoke_agent(ports, operator(), account, name))
        out.print(f"agent {name} revoked in {account} ({count} token(s))", markup=False)
