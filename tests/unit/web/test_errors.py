"""What a validation error says: our field names and the rule, never what the client chose."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from certvault.web.errors import UNKNOWN_FIELD, UNSPECIFIED, describe

CANARY = "Zq7-canary-Zq7"


def _echoes(value: str) -> str:
    raise ValueError(f"{value} is not acceptable")  # a validator that repeats its input


class Cat(BaseModel):
    kind: Literal["cat"]


class Dog(BaseModel):
    kind: Literal["dog"]


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=5)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, int] = {}
    id: UUID | None = None
    pet: Cat | Dog | None = Field(default=None, discriminator="kind")
    note: Annotated[str, AfterValidator(_echoes)] = ""
    inner: list[Inner] = []
    mode: Literal["a", "b"] = "a"


KNOWN = frozenset({"labels", "id", "pet", "note", "inner", "name", "mode", "kind"})


def _errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as raised:
        Body.model_validate(data)
    return [{**e, "loc": ("body", *e["loc"])} for e in raised.value.errors()]


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({CANARY: 1}, f"request: {UNKNOWN_FIELD}"),
        ({"inner": [{"name": "x", CANARY: 1}]}, f"inner.0: {UNKNOWN_FIELD}"),
        (
            {"labels": {CANARY: CANARY}},
            "labels: Input should be a valid integer, unable to parse string as an integer",
        ),
        ({"id": CANARY + "-x"}, f"id: {UNSPECIFIED}"),
        ({"pet": {"kind": CANARY}}, f"pet: {UNSPECIFIED}"),
        ({"note": CANARY}, f"note: {UNSPECIFIED}"),
        ({"inner": [{"name": CANARY}]}, "inner.0.name: String should have at most 5 characters"),
        ({"mode": CANARY}, "mode: Input should be 'a' or 'b'"),
    ],
)
def test_nothing_the_client_chose_is_said(data: dict[str, Any], said: str):
    [err] = _errors(data)
    assert CANARY in repr(err)  # pydantic itself would repeat it
    assert describe(err, KNOWN) == said


def test_a_json_key_named_like_one_of_our_fields_is_still_not_repeated_as_unknown():
    [err] = _errors({"inner": [{"name": "x", "mode": "a"}]})
    assert describe(err, KNOWN) == f"inner.0: {UNKNOWN_FIELD}"
