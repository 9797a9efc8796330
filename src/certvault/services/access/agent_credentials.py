"""The bearer tokens of MS agents: shown once, stored as a SHA-256, revocable.

An agent token opens the agent endpoints of its own account and nothing else; its prefix differs
from administrators' tokens, so that neither is ever mistaken for the other.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Agent, AgentCredential
from certvault.services.access.tokens import Unauthenticated, token_digest
from certvault.services.kernel.actors import Actor, Privilege, Role
from certvault.services.kernel.ports import Ports

PREFIX = "cva_"
CONTACT_RESOLUTION = timedelta(minutes=1)  # at most one write of last_contact_at a minute


@dataclass(frozen=True)
class AgentIdentity:
    """Who is calling: an active agent, by a live token of its own account."""

    agent_id: int
    agent_name: str
    account_id: int
    account_slug: str
    credential_id: int
    ip: str = ""

    @property
    def actor(self) -> Actor:
        """The agent as the services see it: it may have certificates issued (and their keys
        escrowed) anywhere in its account, as its template maps say; nothing more."""
        return Actor(
            name=f"agent:{self.agent_name}",
            kind="agent",
            account_id=self.account_id,
            role=Role.ACCOUNT,
            privileges=frozenset({Privilege.CERTIFICATES_MANAGE}),
            ip=self.ip,
        )


def issue_credential(session: Session, agent: Agent) -> tuple[str, AgentCredential]:
    """A new token for ``agent`` (inside the caller's transaction): the value, shown once."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = AgentCredential(
        account_id=agent.account_id,
        agent_id=agent.id,
        token_sha256=token_digest(token),
        prefix=token[:12],
    )
    session.add(row)
    session.flush()
    return token, row


def authenticate_agent(ports: Ports, token: str, ip: str = "") -> AgentIdentity:
    """The agent a bearer token stands for; a revoked token, an inactive agent or a row that
    does not verify answers like an unknown token."""
    if not token.startswith(PREFIX) or len(token) > 200:
        raise Unauthenticated()
    digest = token_digest(token)
    now = ports.clock()
    with ports.db.read() as session:
        found = session.execute(
            select(AgentCredential, Agent, Account)
            .join(Agent, Agent.id == AgentCredential.agent_id)
            .join(Account, Account.id == Agent.account_id)
            .where(AgentCredential.token_sha256 == digest)
        ).first()
        if found is None or not hmac.compare_digest(found[0].token_sha256, digest):
            raise Unauthenticated()
        credential, agent, account = found
        if (
            credential.revoked_at is not None
            or not agent.active
            or credential.account_id != agent.account_id
        ):
            raise Unauthenticated()
        identity = AgentIdentity(agent.id, agent.name, account.id, account.slug, credential.id, ip)
        stale = agent.last_contact_at is None or now - agent.last_contact_at > CONTACT_RESOLUTION
    if stale:
        _touch(ports, identity.agent_id)
    return identity


def _touch(ports: Ports, agent_id: int) -> None:
    def work(session: Session) -> None:
        agent = session.get(Agent, agent_id)
        if agent is not None:
            agent.last_contact_at = ports.clock()

    ports.db.run(work)
