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
from pydantic import BaseModel, GetJsonSchemaHandler, ValidationInfo, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from starlette.datastructures import FormData

from certvault.errors import InvalidInput

ERROR_TYPE = "control_characters"
MESSAGE = "must not contain control characters"
_ANY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BUT_LINE_BREAKS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


# The same rule as JSON Schema patterns (ECMA-262 syntax), so that clients and schema-driven tests
# know it. Lone surrogates need no pattern: JSON text cannot carry them as characters.
PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
MULTI_LINE_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"


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


def add_text_patterns(schema: Any, pattern: str = PATTERN) -> None:
    """Put the rule into a JSON Schema (in place): every string without a pattern, format or
    fixed values of its own gets ``pattern``; mapping keys get the one-line rule. References
    are left alone: the schema they name states its own rule."""
    if isinstance(schema, list):
        for item in schema:
            add_text_patterns(item, pattern)
        return
    if not isinstance(schema, dict) or "$ref" in schema:
        return
    if schema.get("type") == "string" and not {"pattern", "format", "enum", "const"} & set(schema):
        schema["pattern"] = pattern
    if isinstance(schema.get("additionalProperties"), dict):
        schema.setdefault("propertyNames", {"type": "string"})
        add_text_patterns(schema["propertyNames"], PATTERN)
    for key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
        add_text_patterns(schema.get(key), pattern)


class CheckedBody(BaseModel):
    """Base of every request body: each text field, and each text in a list or mapping field,
    is refused when it holds control characters. The JSON schema says so too."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        properties = handler.resolve_ref_schema(schema).get("properties", {})
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias and field.alias in properties else name
            multiline = MULTI_LINE in field.metadata
            add_text_patterns(properties.get(key), MULTI_LINE_PATTERN if multiline else PATTERN)
        return schema

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        multiline = field is not None and MULTI_LINE in field.metadata
        if _holds_control_characters(value, multiline):
            raise PydanticCustomError(ERROR_TYPE, MESSAGE)
        return value


async def refuse_in_parameters(request: Request) -> None:
    """An application dependency: every query parameter (its name too) and every path
    parameter of every route. It runs before the route's own parameters are read (on the
    event loop: it only looks at the request)."""
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


def add_parameter_patterns(openapi: dict[str, Any]) -> dict[str, Any]:
    """The rule of ``refuse_in_parameters`` in an OpenAPI document: every text parameter."""
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("in") in ("query", "path"):
                    add_text_patterns(parameter.get("schema"))
    return openapi


def refuse_in_form(form: FormData, multiline: Collection[str] = ()) -> None:
    """Every field of a posted form, its name too; uploaded files are not text."""
    for name, value in form.multi_items():
        if has_control_characters(name) or (
            isinstance(value, str) and has_control_characters(value, multiline=name in multiline)
        ):
            raise ControlCharacters()
