"""AD CS archival requests forwarded by MS agents: parse, check, decrypt, issue, escrow, answer.

In order: the CMC request is parsed (shape, one PKCS#10, signatures); the agent's template map
decides the profile, the organization and whether a key must, may or must not come along (as AD
CS's policy module does: CERTSRV_E_ARCHIVED_KEY_REQUIRED / _UNEXPECTED); the archived key's hash
is checked and the key decrypted with the exchange keys still accepted, and it must be the
PKCS#10's key (crypto.cmc checks that before returning it) — all before anything is written; the
public key passes the key policy every certifying path applies (crypto.ca.check_csr); then, in
ONE transaction, the certificate is issued, the key escrowed through the vault's one way in
(archive.archive_entry), the answer (a CMC Full PKI Response signed by the issuing CA, carrying
the key hash back) stored for replays, and the archival audited.

Every failure of the key's hash or decryption takes one path to one error and one reason code,
and counts against the agent's failure limits: an oracle on the exchange key would need many.
A refusal is audited and recorded (agent_requests) in a transaction of its own, and answered
with a Windows status and, once the request could be read, a CMC failure response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.ca import check_csr
from certvault.crypto.cmc import (
    CmcRequest,
    ResponseSigner,
    build_failure,
    build_response,
    check_key_hash,
    decrypt_archived_key,
    parse_request,
)
from certvault.crypto.cmc.archive import Recipient
from certvault.crypto.profiles import Profile, get_profile
from certvault.db.models import Account, AgentRequest, AgentTemplate, CertificateAuthority
from certvault.errors import (
    ArchivedKeyUndecryptable,
    CertvaultError,
    CmcInvalid,
    ConfigurationError,
    InvalidInput,
)
from certvault.services.access.agent_credentials import AgentIdentity
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import add_certificate
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import (
    Limit,
    RateLimiter,
    enforce,
    enforce_within,
)
from certvault.services.pki import exchange
from certvault.services.pki.agent_refusals import (
    AgentRequestRefused,
    ArchivedKeyRequired,
    ArchivedKeyUnexpected,
    NoRequesterEmail,
    RequesterMismatch,
    UnknownTemplate,
    windows_status,
)
from certvault.services.pki.authorities import NoIssuingCa, signing_key
from certvault.services.pki.ca import BuiltinIssuer, active_issuing, chain_of
from certvault.services.pki.issuance import CertificateIssuer, Issued, IssueRequest
from certvault.services.vault import archive

ARCHIVE = "agent.archive"
SOURCE = "agent"
HOUR = 60 * 60


@dataclass(frozen=True)
class Requester:
    """Who asked, as the agent vouches for it (from the Windows client's authentication)."""

    upn: str = ""
    email: str = ""


@dataclass(frozen=True)
class Archived:
    response: bytes  # DER CMC Full PKI Response
    certificate_id: int
    replayed: bool = False


@dataclass(frozen=True)
class _Map:
    profile: Profile
    organization_id: int
    archive_key: bool
    require_archival: bool


@dataclass
class _Attempt:
    """One submission, as far as it got: what a refusal records."""

    agent: AgentIdentity
    digest: str
    template: str
    requester: Requester
    request: CmcRequest | None = None
    template_known: bool = False

    def said(self) -> dict[str, str]:
        """What the trail and the audit log keep of what the agent sent: a template only when
        it is one of the agent's, identities only when they are addresses. Never other text the
        agent chose: a refusal keeps nothing typed into a field (DESIGN.md §5.7)."""
        return {
            "template": self.template if self.template_known else "?",
            "requester_upn": _address(self.requester.upn),
            "requester_email": _address(self.requester.email),
        }


def submit_request(
    ports: Ports,
    limiter: RateLimiter,
    agent: AgentIdentity,
    data: bytes,
    template: str,
    requester: Requester,
    *,
    issuer: CertificateIssuer | None = None,
) -> Archived:
    """Archive and certify a forwarded request, or refuse it (:class:`AgentRequestRefused`).

    The same request bytes a second time get the stored answer again: one certificate."""
    attempt = _Attempt(agent, hashlib.sha256(data).hexdigest(), template, requester)
    try:
        enforce(limiter, _request_limit(ports, agent))
        stored = _stored_answer(ports, agent, attempt.digest)
        if stored is not None:
            return stored
        enforce_within(limiter, *_failure_limits(ports, agent))
        attempt.request = request = parse_request(data)
        mapping = _template_map(ports, agent, template)
        attempt.template_known = True
        key = _key_to_archive(ports, limiter, agent, request, mapping)
        check_csr(request.csr)  # the key policy of every certifying path, and the PKCS#10's PoP
        email = _email(request.csr, requester)
        chosen = issuer or BuiltinIssuer(ports)
        return ports.db.run(
            lambda session: _issue(session, ports, attempt, request, mapping, key, email, chosen)
        )
    except CertvaultError as exc:
        status = windows_status(exc.code)
        response = _refuse(ports, attempt, exc, status)
        raise AgentRequestRefused(exc, status, response) from None


def _request_limit(ports: Ports, agent: AgentIdentity) -> Limit:
    per_minute = ports.settings.agent_requests_per_minute_token
    return Limit(f"agent-requests:{agent.credential_id}", per_minute, 60)


def _failure_limits(ports: Ports, agent: AgentIdentity) -> list[Limit]:
    s = ports.settings
    return [
        Limit(f"agent-failures:{agent.credential_id}", s.agent_failures_per_hour_token, HOUR),
        Limit(
            f"agent-failures-account:{agent.account_id}", s.agent_failures_per_hour_account, HOUR
        ),
    ]


# --- before anything is written -------------------------------------------------------------


def _template_map(ports: Ports, agent: AgentIdentity, template: str) -> _Map:
    with ports.db.read() as session:
        row = session.scalars(
            select(AgentTemplate).where(
                AgentTemplate.agent_id == agent.agent_id,
                AgentTemplate.account_id == agent.account_id,
                AgentTemplate.template == template,
            )
        ).first()
        if row is None:
            raise UnknownTemplate()
        return _Map(
            get_profile(row.profile), row.organization_id, row.archive_key, row.require_archival
        )


def _key_to_archive(
    ports: Ports,
    limiter: RateLimiter,
    agent: AgentIdentity,
    request: CmcRequest,
    mapping: _Map,
) -> rsa.RSAPrivateKey | None:
    """The archived key, decrypted and known to be the PKCS#10's; None when there is none."""
    carries = request.encrypted_key is not None or request.encrypted_key_hash is not None
    if mapping.require_archival and not carries:
        raise ArchivedKeyRequired()
    if carries and not mapping.archive_key:
        raise ArchivedKeyUnexpected()
    if not carries:
        return None
    with ports.db.read() as session:
        recipients = exchange.recipients(session, ports, agent.account_id)
    try:
        return decrypt(request, recipients)
    except ArchivedKeyUndecryptable:
        limiter.hit(*_failure_limits(ports, agent))
        raise


def decrypt(request: CmcRequest, recipients: Sequence[Recipient]) -> rsa.RSAPrivateKey:
    """The one path of every key failure: a hash that does not cover the key, and anything
    decryption finds, end in the same :class:`ArchivedKeyUndecryptable`."""
    try:
        check_key_hash(request)
    except CmcInvalid:
        # Still decrypted, with the result thrown away: a bad hash costs what a bad key costs.
        try:
            decrypt_archived_key(request, recipients)
        except ArchivedKeyUndecryptable:
            pass
        raise ArchivedKeyUndecryptable() from None
    return decrypt_archived_key(request, recipients)


def _address(text: str) -> str:
    """``text`` when it is an address (UPNs have that form too), "?" when it is something else."""
    if not text:
        return ""
    try:
        return persons.normalize_email(text)
    except InvalidInput:
        return "?"


def _csr_emails(csr: x509.CertificateSigningRequest) -> set[str]:
    found = {str(a.value) for a in csr.subject.get_attributes_for_oid(x509.OID_EMAIL_ADDRESS)}
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.update(san.get_values_for_type(x509.RFC822Name))
    except (x509.ExtensionNotFound, ValueError):
        pass
    return found


def _email(csr: x509.CertificateSigningRequest, requester: Requester) -> str:
    """The address to certify: the requester's (the agent vouches for it), or the request's own
    when the agent names none. A request naming another address than the requester's is refused
    rather than certified for either."""
    named = {persons.normalize_email(e) for e in _csr_emails(csr) if e.strip()}
    if requester.email:
        address = persons.normalize_email(requester.email)
        if named and address not in named:
            raise RequesterMismatch()
    elif len(named) == 1:
        [address] = named
    else:
        raise NoRequesterEmail()
    if not address.isascii():
        raise InvalidInput("The address must be ASCII (internationalized domains as punycode).")
    return address


# --- the one transaction --------------------------------------------------------------------


def _issue(
    session: Session,
    ports: Ports,
    attempt: _Attempt,
    request: CmcRequest,
    mapping: _Map,
    key: rsa.RSAPrivateKey | None,
    email: str,
    issuer: CertificateIssuer,
) -> Archived:
    agent = attempt.agent
    stored = _stored(session, agent.account_id, attempt.digest)
    if stored is not None:  # the same request, committed by another worker meanwhile
        return Archived(stored.response or b"", stored.certificate_id or 0, replayed=True)
    account = session.get_one(Account, agent.account_id)
    if key is not None and not account.key_vault_enabled:
        raise archive.KeyVaultDisabled()
    profile = mapping.profile
    issued = issuer.issue(session, account, IssueRequest(request.csr.public_key(), profile, email))
    response = build_response(request, issued.certificate, _signer(session, ports, issued))
    if key is not None:
        escrow = archive.EscrowRequest(
            key=key,
            certificate=issued.certificate,
            chain=issued.chain,
            source=SOURCE,
            person_email=email,
            organization=str(mapping.organization_id),
            profile=profile,
            ca_id=issued.ca_id,
        )
        entry = archive.archive_entry(session, ports, account, agent.actor, escrow)
        assert entry.client_cert_id is not None
        certificate_id = entry.client_cert_id
    else:
        certificate_id = _record_certificate(session, account, issued, email, mapping)
    session.add(_trail(attempt, "issued", certificate_id=certificate_id, response=response))
    audit.record(
        session,
        ports,
        account=account,
        actor=agent.actor,
        action=ARCHIVE,
        target_type="certificate",
        target_id=certificate_id,
        details=_details(attempt) | {"escrowed": key is not None, "profile": profile.name},
    )
    return Archived(response, certificate_id)


def _record_certificate(
    session: Session, account: Account, issued: Issued, email: str, mapping: _Map
) -> int:
    """A template that archives nothing: the certificate is recorded without a key."""
    organization = next(o for o in account.organizations if o.id == mapping.organization_id)
    person, _ = persons.find_or_create(session, account, email, organization)
    row = add_certificate(
        session,
        account,
        issued.certificate,
        issued.chain,
        person=person,
        organization_id=person.organization_id,
        source=SOURCE,
        profile=mapping.profile.name,
        ca_id=issued.ca_id,
    )
    return row.id


def _signer(session: Session, ports: Ports, issued: Issued) -> ResponseSigner:
    """The CA that issued: it signs the response (the agent holds no CA key)."""
    if issued.ca_id is None or not issued.chain:
        raise ConfigurationError("Agent requests are answered by certvault's own CA.")
    ca_row = session.get_one(CertificateAuthority, issued.ca_id)
    return _ca_signer(session, ports, ca_row, issued.chain)


def _ca_signer(
    session: Session, ports: Ports, ca_row: CertificateAuthority, chain: list[x509.Certificate]
) -> ResponseSigner:
    key = signing_key(session, ports, ca_row)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError("A CMC response is signed with an RSA or EC key.")
    return ResponseSigner(key, chain[0], chain[1:])


def _trail(attempt: _Attempt, outcome: str, **values: Any) -> AgentRequest:
    return AgentRequest(
        account_id=attempt.agent.account_id,
        agent_id=attempt.agent.agent_id,
        request_sha256=attempt.digest,
        replay_key=attempt.digest if outcome == "issued" else None,
        **attempt.said(),
        outcome=outcome,
        **values,
    )


def _details(attempt: _Attempt) -> dict[str, Any]:
    return {
        "agent": attempt.agent.agent_name,
        **attempt.said(),
        "request_sha256": attempt.digest,
    }


# --- replays and refusals -------------------------------------------------------------------


def _stored(session: Session, account_id: int, digest: str) -> AgentRequest | None:
    return session.scalars(
        select(AgentRequest).where(
            AgentRequest.account_id == account_id, AgentRequest.replay_key == digest
        )
    ).first()


def _stored_answer(ports: Ports, agent: AgentIdentity, digest: str) -> Archived | None:
    """The answer a request already got, given again (and audited as a replay)."""
    with ports.db.read() as session:
        stored = _stored(session, agent.account_id, digest)
        if stored is None or stored.response is None or stored.certificate_id is None:
            return None
        found = Archived(stored.response, stored.certificate_id, replayed=True)

    def work(session: Session) -> None:
        audit.record(
            session,
            ports,
            account=session.get_one(Account, agent.account_id),
            actor=agent.actor,
            action=ARCHIVE,
            target_type="certificate",
            target_id=found.certificate_id,
            details={"agent": agent.agent_name, "request_sha256": digest, "replayed": True},
        )

    ports.db.run(work)
    return found


def _refuse(ports: Ports, attempt: _Attempt, exc: CertvaultError, status: int) -> bytes | None:
    """Record and audit a refusal in its own transaction; the CMC failure response, when the
    request could be read and the account has a CA to sign it."""

    def work(session: Session) -> bytes | None:
        account = session.get_one(Account, attempt.agent.account_id)
        response = _failure(session, ports, account, attempt.request, status)
        session.add(_trail(attempt, "refused", reason=exc.code[:64], windows_status=status))
        audit.record(
            session,
            ports,
            account=account,
            actor=attempt.agent.actor,
            action=ARCHIVE,
            outcome="refused",
            target_type="agent",
            target_id=attempt.agent.agent_id,
            details=_details(attempt) | {"reason": exc.code, "windows_status": status},
        )
        return response

    return ports.db.run(work)


def _failure(
    session: Session, ports: Ports, account: Account, request: CmcRequest | None, status: int
) -> bytes | None:
    if request is None:
        return None
    ca_row = active_issuing(session, account.id)
    if ca_row is None:
        return None
    try:
        chain = chain_of(session, ca_row)
        signer = _ca_signer(session, ports, ca_row, chain)
    except NoIssuingCa:
        return None
    return build_failure(request.body_part_id, status, signer, request=request)
