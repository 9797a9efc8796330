"""Persons page: list, search, a person's certificates and keys, Secret ID, email changes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.db.models import Person
from certvault.errors import CertvaultError
from certvault.services.directory import certificates, persons
from certvault.services.directory.certificates import CertificateFilter
from certvault.services.kernel.paging import MAX_LIMIT
from certvault.web.admin.certificates import (
    CertificateRow,
    bad_query_page,
    object_id,
    organization_names,
    query_value,
    retention_facts,
)
from certvault.web.admin.console import NOTICES, Console, open_console, post_console, redirect
from certvault.web.pages import form_field

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
EDITABLE = ("email", "first_name", "middle_name", "last_name", "common_name", "phone")

NOTICES.update(
    {
        "person_saved": "The person was saved.",
        "secret_id_set": "The Secret ID was set.",
        "secret_id_cleared": "The Secret ID was removed.",
    }
)


@router.get("/admin/persons")
def persons_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        search = query_value(request, "q")
        sort = query_value(request, "sort", "added")
        cursor = query_value(request, "cursor") or None
        found = persons.sorted_persons(
            console.ports,
            console.actor,
            console.account_slug,
            search,
            sort,
            limit=PAGE_SIZE,
            cursor=cursor,
        )
        total = persons.count_persons(console.ports, console.actor, console.account_slug, search)
        holdings = certificates.holdings_of(
            console.ports, console.actor, console.account_slug, [p.id for p in found.items]
        )
        orgs = organization_names(console)
    except CertvaultError as exc:
        return bad_query_page(console, exc, "persons")
    base = ({"q": search} if search else {}) | ({"sort": sort} if sort != "added" else {})
    email_sort = "-email" if sort == "email" else "email"
    return console.render(
        "persons.html",
        section="persons",
        rows=found.items,
        holdings=holdings,
        empty=certificates.Holdings(),
        organizations=orgs,
        label=person_label,
        search=search,
        total=total,
        sort=sort,
        email_sort_query=({"q": search} if search else {}) | {"sort": email_sort},
        next_query=base | {"cursor": found.next_cursor} if found.next_cursor else None,
        previous_query=base | {"cursor": found.previous_cursor} if found.previous_cursor else None,
        first_query=base if cursor else None,
    )


def _person_page(
    console: Console,
    person_id: int,
    status: int = 200,
    *,
    error: str | None = None,
    edited: dict[str, str | bool] | None = None,
) -> Response:
    """The person's page; after a refused edit, with the error and the values as typed."""
    try:
        person = persons.get_person(console.ports, console.actor, console.account_slug, person_id)
        found = certificates.list_certificates(
            console.ports,
            console.actor,
            console.account_slug,
            CertificateFilter(person_id=person_id),
            limit=MAX_LIMIT,
        )
        orgs = organization_names(console)
    except CertvaultError as exc:
        return console.error(exc, section="persons")
    now = console.ports.clock()
    rows = [CertificateRow.of(c, now, orgs) for c in found.items]
    rows.sort(key=lambda r: r.not_after, reverse=True)  # the current one first
    downloadable = {
        r.id
        for r in rows
        if r.key_in_vault and console.can("key_vault_download", r.organization_id)
    }
    try:
        keep = retention_facts(console, found.items, person.id)
    except CertvaultError as exc:
        return console.error(exc, section="persons")
    return console.render(
        "person.html",
        status,
        destroyed=keep.destroyed,
        holds=keep.holds,
        section="persons",
        person=person,
        label=person_label(person),
        organization=orgs.get(person.organization_id, ""),
        rows=rows,
        more=found.next_cursor is not None,
        downloadable=downloadable,
        values=_values(person) | (edited or {}),
        error=error,
    )


@router.get("/admin/persons/{person_id}")
def person_page(request: Request, person_id: str) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        found = object_id(person_id, "Person")
    except CertvaultError as exc:
        return console.error(exc, section="persons")
    return _person_page(console, found)


def _values(person: Person) -> dict[str, str | bool]:
    """The edit form's values as stored."""
    return {name: getattr(person, name) for name in EDITABLE} | {"active": person.active}


def _fields(form: FormData) -> dict[str, str]:
    return {name: form_field(form, name) for name in EDITABLE}


def _active(form: FormData) -> bool | None:
    """The Active checkbox: an unchecked one is not posted at all, so the form says that it
    holds one; a post without it leaves the person as they are."""
    if not form_field(form, "active_shown"):
        return None
    return form_field(form, "active") == "on"


async def _posted(request: Request, person_id: str) -> tuple[Console, FormData, int] | Response:
    """The console, fields and person id of a POST to a person (or the answer when none)."""
    posted = await post_console(request)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    try:
        return console, form, object_id(person_id, "Person")
    except CertvaultError as exc:
        return console.error(exc, section="persons")


@router.post("/admin/persons/{person_id}")
async def edit_person(request: Request, person_id: str) -> Response:
    posted = await _posted(request, person_id)
    if isinstance(posted, Response):
        return posted
    console, form, found = posted
    values: dict[str, str] | None = None
    active: bool | None = None
    try:
        values = _fields(form)
        active = _active(form)
        await console.call(
            persons.update_person,
            console.ports,
            console.actor,
            console.account_slug,
            found,
            persons.PersonFields(
                email=values["email"],
                first_name=values["first_name"],
                middle_name=values["middle_name"],
                last_name=values["last_name"],
                common_name=values["common_name"],
                phone=values["phone"],
            ),
            active=active,
        )
    except CertvaultError as exc:
        edited: dict[str, str | bool] = dict(values or {})
        if active is not None:
            edited["active"] = active
        return await _refused(console, found, exc, edited=edited)
    return redirect(f"/admin/persons/{found}", notice="person_saved")


@router.post("/admin/persons/{person_id}/secret-id")
async def set_secret_id(request: Request, person_id: str) -> Response:
    posted = await _posted(request, person_id)
    if isinstance(posted, Response):
        return posted
    console, form, found = posted
    clear = form.get("action") == "clear"
    try:
        value = None if clear else form_field(form, "secret_id")
        await console.call(
            persons.set_secret_id, console.ports, console.actor, console.account_slug, found, value
        )
    except CertvaultError as exc:
        return await _refused(console, found, exc)
    notice = "secret_id_cleared" if clear else "secret_id_set"
    return redirect(f"/admin/persons/{found}", notice=notice)


async def _refused(
    console: Console,
    person_id: int,
    exc: CertvaultError,
    edited: dict[str, str | bool] | None = None,
) -> Response:
    """A refused change: the person's page with the reason (the error page when hidden)."""
    if exc.status == 404:
        return console.error(exc, section="persons")
    return await console.call(
        _person_page, console, person_id, exc.status, error=exc.message, edited=edited
    )


def person_label(person: Person) -> str:
    """How lists name a person: the common name, else first and last name, else the email."""
    full = " ".join(n for n in (person.first_name, person.last_name) if n)
    return person.common_name or full or person.email
