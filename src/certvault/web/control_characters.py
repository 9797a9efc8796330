"""The one rule for text that comes in over HTTP: no control characters.

C0 controls (NUL among them), DEL and C1 controls have no place in a name, an address, a search,
a cursor or a password: PostgreSQL cannot store NUL, terminals and log viewers obey escape
sequences, and nobody can type them into OpenSSL's passphrase prompt. Lone surrogates are no
characters at all: no database can encode them. A field that holds several lines by nature (a PEM
CSR, wrapped base64, a reason) may also carry line breaks and tabs; nothing else may.

The rule is applied once per kind of input, so that a new field is covered without asking for
it: JSON bodies through their base model (``CheckedBody``), query and path parameters of every
route through an application dependency (``refuse_in_parameters``), and posted forms through the
pages' one form reader (``web/pages.read_form``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import FormData

from certvault.errors import InvalidInput

ERROR_TYPE = "control_characters"
MESSAGE = "must not contain control characters"
_ANY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BUT_LINE_BREAKS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def has_control_characters(text: str, *, multiline: bool = False) -> bool:
    """Whether ``text`` holds a character the rule refuses (tab, CR and LF pass in
    ``multiline`` text)."""
    return (_BUT_LINE_BREAKS if multiline else _ANY).search(text) is not None


class ControlCharacters(InvalidInput):
    """A field holds a control character (a NUL, an escape, or a line break where one line is
    expected): remove it and send the form again."""

    code = "control_characters"


class MultiLine:
    """Marks a field of a ``CheckedBody`` that may hold line breaks and tabs:
    ``Annotated[str, MULTI_LINE]``."""

    def __repr__(self) -> str:
        return "MULTI_LINE"


MULTI_LINE = MultiLine()


def _holds_control_characters(value: Any, multiline: bool) -> bool:
    if isinstance(value, str):
        return has_control_characters(value, multiline=multiline)
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_control_characters(v, multiline) for v in value)
    if isinstance(value, dict):
        return any(
            _holds_control_characters(k, False) or _holds_control_characters(v, multiline)
            for k, v in value.items()
        )
    # Numbers and booleans hold no text; a nested CheckedBody has checked its own fields.
    return False


class CheckedBody(BaseModel):
    """Base of every request body: each text field, and each text in a list or mapping field,
    is refused when it holds control characters."""

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        multiline = field is not None and MULTI_LINE in field.metadata
        if _holds_control_characters(value, multiline):
            raise PydanticCustomError(ERROR_TYPE, MESSAGE)
        return value


def refuse_in_parameters(request: Request) -> None:
    """An application dependency: every query parameter (its name too) and every path
    parameter of every route. It runs before the route's own parameters are read."""
    bad = [
        ("query", name)
        for name, value in request.query_params.multi_items()
        if has_control_characters(name) or has_control_characters(value)
    ]
    bad += [
        ("path", name)
        for name, value in request.path_params.items()
        if isinstance(value, str) and has_control_characters(value)
    ]
    if bad:
        # The handler names a parameter only when it is one of ours (web/errors.py).
        raise RequestValidationError(
            [{"type": ERROR_TYPE, "loc": loc, "msg": MESSAGE, "input": None} for loc in bad]
        )


def refuse_in_form(form: FormData, multiline: Collection[str] = ()) -> None:
    """Every field of a posted form, its name too; uploaded files are not text."""
    for name, value in form.multi_items():
        if has_control_characters(name) or (
            isinstance(value, str) and has_control_characters(value, multiline=name in multiline)
        ):
            raise ControlCharacters()
