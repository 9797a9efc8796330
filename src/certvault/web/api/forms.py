"""Enrollment forms: list, create, change (the settings_manage privilege; the manage scope to
change)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from certvault.crypto.profiles import PROFILES, KeyType
from certvault.db.models import EnrollmentForm
from certvault.services.directory.accounts import SLUG
from certvault.services.kernel.paging import MAX_ID
from certvault.services.kernel.ports import Ports
from certvault.services.pki import enrollment_forms
from certvault.web.api.schemas import CONFLICT, ERRORS, Id, StrictBody, optional
from certvault.web.deps import PortsDep, TokenCaller
from certvault.web.patterns import SchemaOnly

router = APIRouter(tags=["forms"], responses=ERRORS)  # type: ignore[arg-type]

Domain = Annotated[str, Field(max_length=253)]
KeyTypeName = Annotated[str, Field(max_length=16), SchemaOnly(enum=[k.value for k in KeyType])]
Profile = Annotated[str, SchemaOnly(enum=sorted(PROFILES))]
AskName = Literal["off", "optional", "required"]  # enrollment_forms.ASK_NAME


class FormIn(StrictBody):
    """Settings of an enrollment form; every field may be left out of a PATCH."""

    name: str = optional(max_length=200)
    profile: Profile = optional(max_length=32)
    organization_id: int = optional(ge=1, le=MAX_ID)
    access_code: Annotated[str, SchemaOnly(minLength=enrollment_forms.MIN_ACCESS_CODE)] = optional(
        max_length=enrollment_forms.MAX_ACCESS_CODE,
        description="Stored only hashed; never returned",
    )
    remove_access_code: bool = optional(description="Enroll with the mailed code alone")
    domains: list[Domain] = optional(
        max_length=enrollment_forms.MAX_DOMAINS, description="Empty: any address"
    )
    key_types: list[KeyTypeName] = optional(max_length=5, description="Empty: the profile's")
    dual_key: bool = optional()
    allow_own_passphrase: bool = optional()
    ask_name: AskName = optional(
        description="Whether the page asks for first and last name; a name given becomes the "
        "certificate's CN and fills the person's empty names"
    )
    enabled: bool = optional()


class FormCreate(FormIn):
    slug: Annotated[str, SchemaOnly(pattern=SLUG.pattern)] = Field(
        max_length=63, description="In the form's URL: /enroll/<account>/<slug>"
    )
    profile: Profile = Field(max_length=32)


class FormOut(BaseModel):
    id: int
    slug: str
    name: str
    url: str
    profile: str
    organization_id: int
    has_access_code: bool
    domains: list[str]
    key_types: list[str]
    dual_key: bool
    allow_own_passphrase: bool
    ask_name: str = Field(description="off | optional | required")
    enabled: bool
    created_at: datetime


def form_out(ports: Ports, account_slug: str, form: EnrollmentForm) -> FormOut:
    return FormOut(
        id=form.id,
        slug=form.slug,
        name=form.name,
        url=enrollment_forms.form_url(ports.settings, account_slug, form.slug),
        profile=form.profile,
        organization_id=form.organization_id,
        has_access_code=form.access_code_hash is not None,
        domains=form.domains.split(),
        key_types=form.key_types.split(),
        dual_key=form.dual_key,
        allow_own_passphrase=form.allow_own_passphrase,
        ask_name=form.ask_name,
        enabled=form.enabled,
        created_at=form.created_at,
    )


@router.get("/forms", response_model=list[FormOut])
def list_forms(caller: TokenCaller, ports: PortsDep) -> list[FormOut]:
    forms = enrollment_forms.list_forms(ports, caller.actor, caller.account_slug)
    return [form_out(ports, caller.account_slug, f) for f in forms]


@router.post(
    "/forms",
    response_model=FormOut,
    status_code=201,
    responses={
        **CONFLICT,
        201: {"headers": {"Location": {"description": "The new form's URL in this API"}}},
    },
)
def create_form(
    body: FormCreate, response: Response, caller: TokenCaller, ports: PortsDep
) -> FormOut:
    form = enrollment_forms.create_form(
        ports,
        caller.actor,
        caller.account_slug,
        slug=body.slug,
        profile=body.profile,
        organization=str(body.organization_id) if body.organization_id else None,
        access_code=None if body.remove_access_code else body.access_code,
        domains=body.domains or (),
        dual_key=bool(body.dual_key),
        allow_own_passphrase=bool(body.allow_own_passphrase),
        key_types=body.key_types or (),
        name=body.name or "",
        ask_name=body.ask_name if "ask_name" in body.model_fields_set else "off",
    )
    if body.enabled is False:
        form = enrollment_forms.disable_form(ports, caller.actor, caller.account_slug, form.id)
    response.headers["Location"] = f"/api/v1/forms/{form.id}"
    return form_out(ports, caller.account_slug, form)


@router.patch("/forms/{form_id}", response_model=FormOut)
def update_form(form_id: Id, body: FormIn, caller: TokenCaller, ports: PortsDep) -> FormOut:
    form = enrollment_forms.update_form(
        ports,
        caller.actor,
        caller.account_slug,
        form_id,
        name=body.name,
        profile=body.profile,
        organization=str(body.organization_id) if body.organization_id else None,
        access_code=body.access_code,
        remove_access_code=bool(body.remove_access_code),
        domains=body.domains,
        key_types=body.key_types,
        dual_key=body.dual_key,
        allow_own_passphrase=body.allow_own_passphrase,
        ask_name=body.ask_name,
        enabled=body.enabled,
    )
    return form_out(ports, caller.account_slug, form)
