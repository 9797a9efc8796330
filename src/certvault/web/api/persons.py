"""Persons (subscribers): list with filters, get, create, update."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from certvault.db.models import Person
from certvault.services.directory import persons
from certvault.web.api.schemas import (
    CONFLICT,
    ERRORS,
    Cursor,
    Id,
    IdFilter,
    Limit,
    PersonCreate,
    PersonIn,
    PersonOut,
    PersonPage,
    PersonUpdate,
)
from certvault.web.deps import PortsDep, TokenCaller

router = APIRouter(tags=["persons"], responses=ERRORS)  # type: ignore[arg-type]


def person_out(p: Person) -> PersonOut:
    return PersonOut(
        id=p.id,
        email=p.email,
        first_name=p.first_name,
        middle_name=p.middle_name,
        last_name=p.last_name,
        common_name=p.common_name,
        phone=p.phone,
        secondary_emails=p.secondary_emails.split(),
        validation_type=p.validation_type,
        eppn=p.eppn,
        upn=p.upn,
        organization_id=p.organization_id,
        active=p.active,
        created_at=p.created_at,
    )


def _fields(body: PersonIn) -> persons.PersonFields:
    return persons.PersonFields(**body.model_dump(exclude_unset=True, exclude={"active"}))


@router.get("/persons", response_model=PersonPage)
def list_persons(
    caller: TokenCaller,
    ports: PortsDep,
    email: Annotated[str | None, Query(max_length=320, description="Exact, any case")] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Part of a first, last or common name")
    ] = None,
    organization_id: IdFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> PersonPage:
    page = persons.list_persons(
        ports,
        caller.actor,
        caller.account_slug,
        email=email,
        name=name,
        organization_id=organization_id,
        limit=limit,
        cursor=cursor,
    )
    return PersonPage(items=[person_out(p) for p in page.items], next_cursor=page.next_cursor)


@router.get("/persons/{person_id}", response_model=PersonOut)
def get_person(person_id: Id, caller: TokenCaller, ports: PortsDep) -> PersonOut:
    return person_out(persons.get_person(ports, caller.actor, caller.account_slug, person_id))


@router.post(
    "/persons",
    response_model=PersonOut,
    status_code=201,
    responses={
        **CONFLICT,
        201: {"headers": {"Location": {"description": "The new person's URL"}}},
    },
)
def create_person(
    body: PersonCreate, response: Response, caller: TokenCaller, ports: PortsDep
) -> PersonOut:
    person = persons.create_person(ports, caller.actor, caller.account_slug, _fields(body))
    response.headers["Location"] = f"/api/v1/persons/{person.id}"
    return person_out(person)


@router.patch("/persons/{person_id}", response_model=PersonOut, responses=CONFLICT)
def update_person(
    person_id: Id, body: PersonUpdate, caller: TokenCaller, ports: PortsDep
) -> PersonOut:
    person = persons.update_person(
        ports, caller.actor, caller.account_slug, person_id, _fields(body), active=body.active
    )
    return person_out(person)
