"""MS agents of an account: machine identities that forward AD CS enrollment requests, each with
a token and a map from Windows certificate templates to what certvault issues.

The archival requests themselves are in :mod:`certvault.services.pki.agent_requests`, the
exchange certificate in :mod:`certvault.services.pki.exchange`. Every change is audited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.profiles import get_profile
from certvault.db.models import Account, Agent, AgentCredential, AgentRequest, AgentTemplate
from certvault.errors import Conflict, InvalidInput, NotFound
from certvault.services.access.agent_credentials import issue_credential
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization, find_organization, get_account
from certvault.services.kernel.text import column_text

CREATE, MAP, REVOKE = "agent.create", "agent.map", "agent.revoke"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_TEMPLATE = 200


class AgentNotFound(NotFound):
    """No such agent in this account."""

    code = "agent_not_found"


@dataclass(frozen=True)
class CreatedAgent:
    agent_id: int
    name: str
    token: str  # shown once, stored only as its SHA-256


@dataclass(frozen=True)
class AgentSummary:
    """One agent as the Agents page and `certvault agent list` show it."""

    name: str
    active: bool
    created_at: datetime
    last_contact_at: datetime | None
    live_tokens: int
    templates: int


@dataclass(frozen=True)
class TemplateMap:
    agent: str
    template: str
    profile: str
    organization: str
    archive_key: bool
    require_archival: bool


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput("An agent name is 1 to 63 characters A-Z, a-z, 0-9, '.', '_' and '-'.")
    return name


def _check_template(template: str) -> str:
    # Windows template names (cn of the pKICertificateTemplate object) are at most 64 characters;
    # room is left for display names, but nothing invisible.
    value = column_text(template, MAX_TEMPLATE)
    if not value or value != template:
        raise InvalidInput(f"A template name is 1 to {MAX_TEMPLATE} printable characters.")
    return value


def _account(session: Session, actor: Actor, slug: str) -> Account:
    account = get_account(session, slug)
    actor.require(Privilege.SETTINGS_MANAGE, account.id, None)
    return account


def _agent(session: Session, account: Account, name: str) -> Agent:
    agent = session.scalars(
        select(Agent).where(Agent.account_id == account.id, Agent.name == name)
    ).first()
    if agent is None:
        raise AgentNotFound()
    return agent


def create_agent(ports: Ports, actor: Actor, account_slug: str, name: str) -> CreatedAgent:
    """Register an agent with its first token."""

    def work(session: Session) -> CreatedAgent:
        account = _account(session, actor, account_slug)
        taken = session.scalar(
            select(Agent.id).where(Agent.account_id == account.id, Agent.name == _check_name(name))
        )
        if taken is not None:
            raise Conflict("This account already has an agent of that name.")
        agent = Agent(account_id=account.id, name=name, created_at=ports.clock())
        session.add(agent)
        session.flush()
        token, credential = issue_credential(session, agent)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=CREATE,
            target_type="agent",
            target_id=agent.id,
            details={"name": name, "token_prefix": credential.prefix},
        )
        return CreatedAgent(agent.id, name, token)

    with audit.refusals_audited(ports, account_id=None, actor=actor, action=CREATE):
        return ports.db.run(work)


def map_template(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    agent_name: str,
    template: str,
    *,
    profile: str,
    organization: str | None = None,
    archive_key: bool = False,
    require_archival: bool = False,
) -> TemplateMap:
    """Map a Windows template to a profile and organization (replacing an earlier map of it).
    Requiring archival implies archiving."""
    archive_key = archive_key or require_archival

    def work(session: Session) -> TemplateMap:
        account = _account(session, actor, account_slug)
        agent = _agent(session, account, agent_name)
        chosen = get_profile(profile)
        if archive_key and not chosen.escrow:
            raise InvalidInput(f"The profile {chosen.name} never escrows keys; pick another.")
        org = (
            find_organization(session, account, organization)
            if organization
            else default_organization(session, account)
        )
        name = _check_template(template)
        row = session.scalars(
            select(AgentTemplate).where(
                AgentTemplate.agent_id == agent.id, AgentTemplate.template == name
            )
        ).first()
        if row is None:
            row = AgentTemplate(account_id=account.id, agent_id=agent.id, template=name)
            session.add(row)
        row.profile, row.organization_id = chosen.name, org.id
        row.archive_key, row.require_archival = archive_key, require_archival
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=MAP,
            target_type="agent",
            target_id=agent.id,
            details={
                "template": name,
                "profile": chosen.name,
                "organization_id": org.id,
                "archive_key": archive_key,
                "require_archival": require_archival,
            },
        )
        return TemplateMap(agent.name, name, chosen.name, org.name, archive_key, require_archival)

    with audit.refusals_audited(ports, account_id=None, actor=actor, action=MAP):
        return ports.db.run(work)


def revoke_agent(ports: Ports, actor: Actor, account_slug: str, name: str) -> int:
    """Deactivate an agent and revoke its tokens; the number of tokens revoked."""

    def work(session: Session) -> int:
        account = _account(session, actor, account_slug)
        agent = _agent(session, account, name)
        now = ports.clock()
        agent.active = False
        live = session.scalars(
            select(AgentCredential).where(
                AgentCredential.agent_id == agent.id, AgentCredential.revoked_at.is_(None)
            )
        ).all()
        for credential in live:
            credential.revoked_at = now
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=REVOKE,
            target_type="agent",
            target_id=agent.id,
            details={"name": agent.name, "tokens_revoked": len(live)},
        )
        return len(live)

    with audit.refusals_audited(ports, account_id=None, actor=actor, action=REVOKE):
        return ports.db.run(work)


def list_agents(ports: Ports, actor: Actor, account_slug: str) -> list[AgentSummary]:
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        agents = session.scalars(
            select(Agent).where(Agent.account_id == account.id).order_by(Agent.name)
        ).all()
        credentials = session.scalars(
            select(AgentCredential).where(AgentCredential.account_id == account.id)
        ).all()
        maps = session.scalars(
            select(AgentTemplate).where(AgentTemplate.account_id == account.id)
        ).all()
        return [
            AgentSummary(
                name=a.name,
                active=a.active,
                created_at=a.created_at,
                last_contact_at=a.last_contact_at,
                live_tokens=sum(
                    1 for c in credentials if c.agent_id == a.id and c.revoked_at is None
                ),
                templates=sum(1 for m in maps if m.agent_id == a.id),
            )
            for a in agents
        ]


def template_maps(ports: Ports, actor: Actor, account_slug: str) -> list[TemplateMap]:
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        agents = {
            a.id: a.name
            for a in session.scalars(select(Agent).where(Agent.account_id == account.id))
        }
        rows = session.scalars(
            select(AgentTemplate)
            .where(AgentTemplate.account_id == account.id)
            .order_by(AgentTemplate.agent_id, AgentTemplate.template)
        ).all()
        organizations = {o.id: o.name for o in account.organizations}
        return [
            TemplateMap(
                agents[r.agent_id],
                r.template,
                r.profile,
                organizations.get(r.organization_id, "?"),
                r.archive_key,
                r.require_archival,
            )
            for r in rows
        ]


def recent_requests(
    ports: Ports, actor: Actor, account_slug: str, limit: int = 100
) -> list[AgentRequest]:
    """The newest archival requests of the account (the console's trail), newest first."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        return list(
            session.scalars(
                select(AgentRequest)
                .where(AgentRequest.account_id == account.id)
                .order_by(AgentRequest.id.desc())
                .limit(limit)
            )
        )


def agent_names(ports: Ports, actor: Actor, account_slug: str) -> dict[int, str]:
    """Agent ids to names, for the trail of requests."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        rows = session.execute(select(Agent.id, Agent.name).where(Agent.account_id == account.id))
        return {agent_id: name for agent_id, name in rows}
