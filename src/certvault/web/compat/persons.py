"""SCM persons (`/api/person/v1`, `/api/person/v2`) and the Key Vault upload `import-key`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from certvault.db.models import Person
from certvault.errors import CertvaultError, NotFound
from certvault.services.directory import persons
from certvault.services.directory.persons import PersonFields
from certvault.services.vault import archive, imports
from certvault.web.compat.schemas import (
    CONFLICT,
    MAX_ID,
    SCM_ERRORS,
    TOO_LARGE,
    EmailPath,
    ImportEntry,
    ImportKeyRequest,
    ImportKeyResponse,
    PersonCreateRequest,
    PersonId,
    PersonIdResponse,
    PersonRequest,
    Position,
    Responses,
    ScmPerson,
    Size,
    decode_p12,
    on_versions,
)
from certvault.web.deps import PortsDep, ScmCaller

router = APIRouter(tags=["SCM-compatible: persons"], responses=SCM_ERRORS)


class EntryRefused(CertvaultError):
    """Every entry of the uploaded file was refused: answer with the first one's error."""

    def __init__(self, entry: archive.EntryResult) -> None:
        super().__init__(entry.message)
        self.code = entry.code or "refused"
        self.status = entry.status or 422


@router.post(
    "/person/v2/{personId}/import-key",
    response_model=ImportKeyResponse,
    responses=CONFLICT | TOO_LARGE,
    summary="Import private keys into the Key Vault (multiple entries allowed)",
)
@router.post(
    "/person/v1/{personId}/import-key",
    response_model=ImportKeyResponse,
    responses=CONFLICT | TOO_LARGE,
    deprecated=True,
    summary="Import private keys into the Key Vault (use v2)",
)
def import_key(
    person_id: PersonId, body: ImportKeyRequest, caller: ScmCaller, ports: PortsDep
) -> ImportKeyResponse:
    """Every certificate in the file must carry one of the person's email addresses. A file
    whose entries were all refused answers with the first refusal's error; otherwise each entry
    says what became of it."""
    entries = imports.import_p12(
        ports,
        caller.actor,
        caller.account_slug,
        decode_p12(body.p12),
        body.password or "",
        person_id=person_id,
    )
    if entries and not any(e.ok for e in entries):
        raise EntryRefused(entries[0])
    return ImportKeyResponse(entries=[ImportEntry.model_validate(e.scm()) for e in entries])


def _scm_person(p: Person) -> ScmPerson:
    return ScmPerson(
        person_id=p.id,
        id=p.id,
        first_name=p.first_name,
        middle_name=p.middle_name,
        last_name=p.last_name,
        email=p.email,
        organization_id=p.organization_id,
        validation_type=p.validation_type,
        phone=p.phone,
        secondary_emails=p.secondary_emails.split(),
        common_name=p.common_name,
        eppn=p.eppn,
        upn=p.upn,
    )


def _fields(body: PersonRequest) -> PersonFields:
    return PersonFields(
        email=body.email,
        first_name=body.first_name,
        middle_name=body.middle_name,
        last_name=body.last_name,
        common_name=body.common_name,
        phone=body.phone,
        secondary_emails=body.secondary_emails,
        validation_type=body.validation_type,
        eppn=body.eppn,
        upn=body.upn,
        organization_id=body.organization_id,
    )


@on_versions(router, "GET", "/person/{v}", response_model=list[ScmPerson], summary="List persons")
def list_persons(
    caller: ScmCaller,
    ports: PortsDep,
    email: Annotated[str | None, Query(max_length=320)] = None,
    organization_id: Annotated[int | None, Query(alias="organizationId", ge=1, le=MAX_ID)] = None,
    size: Size = 200,
    position: Position = 0,
) -> list[ScmPerson]:
    page = persons.list_persons(
        ports,
        caller.actor,
        caller.account_slug,
        email=email,
        organization_id=organization_id,
        limit=size,
        offset=position,
    )
    return [_scm_person(p) for p in page.items]


@on_versions(
    router,
    "GET",
    "/person/{v}/id/byEmail/{email}",
    response_model=PersonIdResponse,
    summary="Find a person",
)
def find_person(email: EmailPath, caller: ScmCaller, ports: PortsDep) -> PersonIdResponse:
    page = persons.list_persons(ports, caller.actor, caller.account_slug, email=email, limit=1)
    if not page.items:
        raise NotFound("Person not found.")
    return PersonIdResponse(person_id=page.items[0].id)


@on_versions(
    router, "GET", "/person/{v}/{personId}", response_model=ScmPerson, summary="Get a person"
)
def get_person(person_id: PersonId, caller: ScmCaller, ports: PortsDep) -> ScmPerson:
    return _scm_person(persons.get_person(ports, caller.actor, caller.account_slug, person_id))


_CREATED: Responses = {
    201: {
        "description": "Created; the body is empty",
        "headers": {
            "Location": {"description": "The new person's URL", "schema": {"type": "string"}}
        },
    }
}


@on_versions(
    router,
    "POST",
    "/person/{v}",
    status_code=201,
    response_class=Response,
    responses=_CREATED | CONFLICT,
    summary="Create a person",
)
def create_person(
    request: Request, body: PersonCreateRequest, caller: ScmCaller, ports: PortsDep
) -> Response:
    person = persons.create_person(ports, caller.actor, caller.account_slug, _fields(body))
    location = f"{str(request.url.replace(query='', fragment='')).rstrip('/')}/{person.id}"
    return Response(status_code=201, headers={"Location": location})


_EMPTY: Responses = {200: {"description": "Done; the body is empty"}}


@on_versions(
    router,
    "PUT",
    "/person/{v}/{personId}",
    response_class=Response,
    responses=_EMPTY | CONFLICT,
    summary="Update a person",
)
def update_person(
    person_id: PersonId, body: PersonRequest, caller: ScmCaller, ports: PortsDep
) -> Response:
    """Null or absent fields stay as they are."""
    persons.update_person(ports, caller.actor, caller.account_slug, person_id, _fields(body))
    return Response(status_code=200)


@on_versions(
    router,
    "DELETE",
    "/person/{v}/{personId}",
    response_class=Response,
    responses=_EMPTY | CONFLICT,
    summary="Delete a person",
)
def delete_person(person_id: PersonId, caller: ScmCaller, ports: PortsDep) -> Response:
    """A person with certificates is kept (409): their keys would lose their owner."""
    persons.delete_person(ports, caller.actor, caller.account_slug, person_id)
    return Response(status_code=200)
