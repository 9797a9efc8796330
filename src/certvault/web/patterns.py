"""JSON Schema patterns of the text rules the services enforce, for the OpenAPI schema.

They only describe: the services keep checking (and answering with their own error codes), so a
field carries its pattern as schema information (``json_schema_extra``), not as a pydantic rule.
Written in the common subset of ECMA-262 and Python regular expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from certvault.crypto.passphrase import MAX_LENGTH as MAX_PASSPHRASE
from certvault.services.directory.accounts import MIN_PASSPHRASE_FLOOR

# services/directory/persons.normalize_email: white space around it is dropped, then a local
# part of 1 to 64 and a domain of 1 to 255 characters, neither with an @, white space or a
# control character.
_EMAIL_CHAR = "[^@\\s\\u0000-\\u001f\\u007f-\\u009f]"
EMAIL = f"^ *{_EMAIL_CHAR}{{1,64}}@{_EMAIL_CHAR}{{1,255}} *$"

# A base64 file (web/api/keys and web/compat/schemas decode it): line breaks, tabs and spaces
# anywhere, padding only at the end, not empty.
_B64 = "(?:[A-Za-z0-9+/][\\t\\n\\r ]*)"
_PAD = "(?:=[\\t\\n\\r ]*)"
BASE64 = f"^[\\t\\n\\r ]*(?:{_B64}{{4}})*(?:{_B64}{{4}}|{_B64}{{3}}{_PAD}|{_B64}{{2}}{_PAD}{{2}})$"


@dataclass(frozen=True)
class SchemaOnly:
    """``Annotated[str, SchemaOnly(pattern=EMAIL)]``: JSON Schema keywords for a rule that the
    services check themselves (with their own error codes), so pydantic does not."""

    keywords: dict[str, Any]

    def __init__(self, **keywords: Any) -> None:
        object.__setattr__(self, "keywords", keywords)

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        handler.resolve_ref_schema(schema).update(self.keywords)
        return schema

    def __hash__(self) -> int:
        return hash(repr(sorted(self.keywords.items())))


EmailText = Annotated[str, SchemaOnly(pattern=EMAIL)]

# crypto/passphrase.check_passphrase: no white space at either end, no control characters.
_VISIBLE_END = "[^\\s\\u0000-\\u001f\\u007f-\\u009f]"
PASSPHRASE = f"^{_VISIBLE_END}(?:[^\\u0000-\\u001f\\u007f-\\u009f]*{_VISIBLE_END})?$"
# The least any account may ask for (services/directory/accounts), and the most anyone may send.
Passphrase = Annotated[
    str,
    SchemaOnly(pattern=PASSPHRASE, minLength=MIN_PASSPHRASE_FLOOR, maxLength=MAX_PASSPHRASE),
]
