"""The ``pkcs11`` master-key provider: a non-extractable AES-256 key in a token (an HSM).

Wrapping happens inside the token. Where it offers ``CKM_AES_GCM``, a blob is header, 12-byte
nonce and ciphertext with its 128-bit tag, the header and the caller's associated data
authenticated. Otherwise ``CKM_AES_KEY_WRAP_PAD`` (which binds no associated data) wraps the
bytes, and an HMAC-SHA256 by a second non-extractable token key binds header, wrapped bytes and
associated data. Each version is a token key labelled ``<key label>-v<N>`` (and
``<key label>-mac-v<N>`` for the HMAC key).

One session per process, opened on first use and opened again after the token came back; calls
into it are made one at a time (python-pkcs11 sessions are shared by uvicorn's threads).
Messages never carry the PIN nor a library's own message.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from certvault.errors import ConfigurationError, SealBroken
from certvault.masterkey import FORMAT_PKCS11_GCM, FORMAT_PKCS11_KEY_WRAP, HEADER
from certvault.masterkey import pkcs11_mechanisms as mechanisms
from certvault.masterkey.file import MasterKeyMissing

T = TypeVar("T")
MECHANISMS = ("auto", "gcm", "key-wrap")
_RELOAD_SECONDS = 30.0
LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Pkcs11PinIncorrect(ConfigurationError):
    """The token refused the PKCS#11 PIN (CERTVAULT_PKCS11_PIN_FILE or CERTVAULT_PKCS11_PIN)."""

    code = "pkcs11_pin_incorrect"


class Pkcs11PinExposed(ConfigurationError):
    """The PKCS#11 PIN file can be read by others or belongs to another user."""

    code = "pkcs11_pin_exposed"


class Pkcs11TokenMissing(ConfigurationError):
    """The PKCS#11 module or token cannot be reached."""

    code = "pkcs11_token_missing"
    status = 503


class Pkcs11KeyMissing(MasterKeyMissing):
    """No master key is in the token; run `certvault kek create --provider pkcs11`."""

    code = "pkcs11_key_missing"


class Pkcs11KeyExists(ConfigurationError):
    """A token key with this label exists already; certvault never replaces one."""

    code = "pkcs11_key_exists"


# What a token says when it is gone, was reset or lost our session: worth one reconnection.
_GONE = (
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.GeneralError,
    p11e.NoSuchToken,
    p11e.NoSuchKey,
    p11e.UserNotLoggedIn,
)
_PIN_REFUSED = (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange, p11e.PinLocked)


def read_pin_file(path: Path) -> str:
    """The PIN from a file that only its owner can read (0600 or 0400), one newline dropped."""
    try:
        st = path.lstat()
    except OSError:
        raise Pkcs11PinExposed(f"The PKCS#11 PIN file {path} cannot be read.") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise Pkcs11PinExposed(f"The PKCS#11 PIN file {path} must be a plain file.")
    if st.st_uid != os.geteuid():
        raise Pkcs11PinExposed(f"The PKCS#11 PIN file {path} belongs to another user.")
    if st.st_mode & 0o077:
        raise Pkcs11PinExposed(
            f"The PKCS#11 PIN file {path} has mode {stat.S_IMODE(st.st_mode):04o}; others may "
            "read it. Set it to 0600 or 0400."
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise Pkcs11PinExposed(f"The PKCS#11 PIN file {path} is not readable UTF-8.") from None
    return text.removesuffix("\n").removesuffix("\r")


@dataclass
class _Version:
    key: Any  # pkcs11.SecretKey (AES)
    mac: Any | None  # pkcs11.SecretKey (GENERIC_SECRET), when the token holds one


class Pkcs11MasterKeyProvider:
    name = "pkcs11"

    def __init__(
        self,
        module: str,
        token_label: str,
        key_label: str,
        pin: str,
        *,
        mechanism: str = "auto",
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ConfigurationError(f"CERTVAULT_PKCS11_MECHANISM must be one of {MECHANISMS}.")
        if not LABEL.match(key_label):
            raise ConfigurationError(
                "CERTVAULT_PKCS11_KEY_LABEL uses A-Z, a-z, 0-9, '.', '_' and '-' (1 to 64)."
            )
        self.module, self.token_label, self.key_label = module, token_label, key_label
        self._pin = pin
        self._mechanism = mechanism
        self._lock = threading.RLock()
        self._session: Any = None
        self._gcm = False
        self._versions: dict[int, _Version] = {}
        self._loaded_at = 0.0
        self._names = re.compile(rf"^{re.escape(key_label)}-v(\d+)$")

    def __repr__(self) -> str:  # never the PIN
        return f"Pkcs11MasterKeyProvider(token={self.token_label!r}, key={self.key_label!r})"

    # --- the session --------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._session is not None:
            return self._session
        try:
            lib = pkcs11.lib(self.module)
        except p11e.PKCS11Error:
            raise Pkcs11TokenMissing(
                f"The PKCS#11 module {self.module} cannot be loaded (CERTVAULT_PKCS11_MODULE)."
            ) from None
        token = self._token(lib)
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except _PIN_REFUSED:
            raise Pkcs11PinIncorrect(
                f"The token {self.token_label!r} refused the PIN; nothing was done."
            ) from None
        except p11e.UserAlreadyLoggedIn:
            # Another session of this process logged in: the login holds for the token.
            session = self._call(lambda: token.open(rw=True))
        except p11e.PKCS11Error:
            raise self._missing() from None
        try:
            mechanisms = set(token.slot.get_mechanisms())
        except p11e.PKCS11Error:
            mechanisms = set()
        offers_gcm = Mechanism.AES_GCM in mechanisms
        if self._mechanism == "gcm" and not offers_gcm:
            raise ConfigurationError(f"The token {self.token_label!r} does not offer AES-GCM.")
        self._gcm = self._mechanism == "gcm" or (self._mechanism == "auto" and offers_gcm)
        self._session, self._versions, self._loaded_at = session, {}, 0.0
        return session

    def _token(self, lib: Any) -> Any:
        try:
            return lib.get_token(token_label=self.token_label)
        except p11e.MultipleTokensReturned:
            raise ConfigurationError(
                f"Several tokens are labelled {self.token_label!r}; labels must be unique."
            ) from None
        except p11e.PKCS11Error:
            # The library may have been initialized before the token appeared, or lost it.
            try:
                lib.reinitialize()
                return lib.get_token(token_label=self.token_label)
            except p11e.PKCS11Error:
                raise self._missing() from None

    def _missing(self) -> Pkcs11TokenMissing:
        return Pkcs11TokenMissing(
            f"The PKCS#11 token {self.token_label!r} is not reachable "
            "(CERTVAULT_PKCS11_TOKEN_LABEL, CERTVAULT_PKCS11_MODULE); nothing was done."
        )

    def _forget(self) -> None:
        session, self._session, self._versions = self._session, None, {}
        if session is not None:
            try:
                session.close()
            except p11e.PKCS11Error:
                pass

    def close(self) -> None:
        with self._lock:
            self._forget()

    def _call(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except p11e.PKCS11Error:
            raise self._missing() from None

    def _with_token(self, work: Callable[[], T]) -> T:
        """Run ``work`` with an open session; a token that went away is reopened once."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._open()
                    return work()
                except _GONE:
                    self._forget()
                    if attempt == 2:
                        raise self._missing() from None
                except (Pkcs11TokenMissing, Pkcs11KeyMissing):
                    self._forget()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    # --- versions -----------------------------------------------------------------------------

    def _load(self, *, fresh: bool = False) -> dict[int, _Version]:
        stale = time.monotonic() - self._loaded_at > _RELOAD_SECONDS
        if self._versions and not fresh and not stale:
            return self._versions
        session = self._open()
        keys: dict[int, Any] = {}
        macs: dict[int, Any] = {}
        mac_names = re.compile(rf"^{re.escape(self.key_label)}-mac-v(\d+)$")
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            label = obj.label or ""
            if (m := self._names.match(label)) and obj.key_type == KeyType.AES:
                keys[int(m.group(1))] = obj
            elif (m := mac_names.match(label)) and obj.key_type == KeyType.GENERIC_SECRET:
                macs[int(m.group(1))] = obj
        self._versions = {v: _Version(k, macs.get(v)) for v, k in keys.items()}
        self._loaded_at = time.monotonic()
        return self._versions

    def _version_key(self, version: int) -> _Version:
        found = self._load().get(version) or self._load(fresh=True).get(version)
        if found is None:
            raise MasterKeyMissing(
                f"Master key version {version} is not in the token {self.token_label!r}."
            )
        return found

    def versions(self) -> list[int]:
        return self._with_token(lambda: sorted(self._load(fresh=True)))

    @property
    def version(self) -> int:
        def newest() -> int:
            found = self._load()
            if not found:
                raise Pkcs11KeyMissing(
                    f"The token {self.token_label!r} holds no key labelled "
                    f"{self.key_label}-v<N>; run `certvault kek create --provider pkcs11`."
                )
            return max(found)

        return self._with_token(newest)

    @property
    def uses_gcm(self) -> bool:
        return self._with_token(lambda: self._gcm)

    def create_version(self) -> int:
        """Generate the token keys of the next version (non-extractable, sensitive)."""

        def work() -> int:
            version = max(self._load(fresh=True), default=0) + 1
            self._generate(version)
            return version

        return self._with_token(work)

    def _generate(self, version: int) -> None:
        session = self._session
        labels = (f"{self.key_label}-v{version}", f"{self.key_label}-mac-v{version}")
        if list(session.get_objects({Attribute.LABEL: labels[0]})):
            raise Pkcs11KeyExists(f"The token already holds a key labelled {labels[0]!r}.")
        for orphan in list(session.get_objects({Attribute.LABEL: labels[1]})):
            # A MAC key without its AES key: left by a run stopped between the two, never used.
            orphan.destroy()
        private = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }
        # The MAC key first: a version is found by its AES key, so a crash in between
        # leaves nothing that counts as a version.
        session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            label=labels[1],
            store=True,
            template={**private, Attribute.SIGN: True, Attribute.VERIFY: True},
        )
        session.generate_key(
            KeyType.AES,
            256,
            label=labels[0],
            store=True,
            template={
                **private,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
            },
        )
        self._versions = {}

    def retire_version(self, version: int) -> None:
        """Destroy the token keys of an old version. Callers check first that no blob uses it."""

        def work() -> None:
            found = self._load(fresh=True)
            if version not in found:
                raise MasterKeyMissing(f"Master key version {version} is not in the token.")
            entry = found[version]
            if entry.mac is not None:
                entry.mac.destroy()
            entry.key.destroy()
            self._versions = {}

        self._with_token(work)

    # --- wrap and unwrap ----------------------------------------------------------------------

    def wrap(self, data: bytes, aad: bytes) -> bytes:
        def work() -> bytes:
            version = max(self._load(), default=None)
            if version is None:
                raise Pkcs11KeyMissing()
            entry = self._versions[version]
            if self._gcm:
                return mechanisms.gcm_wrap(
                    entry.key, HEADER.pack(FORMAT_PKCS11_GCM, version), data, aad
                )
            header = HEADER.pack(FORMAT_PKCS11_KEY_WRAP, version)
            mac_key = self._mac_key(entry, version)
            return mechanisms.key_wrap(self._session, entry.key, mac_key, header, data, aad)

        return self._with_token(work)

    def _mac_key(self, entry: _Version, version: int) -> Any:
        if entry.mac is None:
            raise MasterKeyMissing(f"The token holds no {self.key_label}-mac-v{version} key.")
        return entry.mac

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < HEADER.size + mechanisms.NONCE + mechanisms.TAG:
            raise SealBroken("A wrapped key is truncated.")
        fmt, version = HEADER.unpack(blob[: HEADER.size])
        if fmt not in (FORMAT_PKCS11_GCM, FORMAT_PKCS11_KEY_WRAP):
            raise SealBroken("A wrapped key has an unknown format.")
        header, body = blob[: HEADER.size], blob[HEADER.size :]

        def work() -> bytes | None:
            entry = self._version_key(version)
            try:
                if fmt == FORMAT_PKCS11_GCM:
                    return mechanisms.gcm_unwrap(entry.key, header, body, aad)
                mac_key = self._mac_key(entry, version)
                return mechanisms.key_unwrap(entry.key, mac_key, header, body, aad)
            except p11e.PKCS11Error:
                # A token that failed the tag looks like one that went away (GeneralError):
                # ask it something harmless to tell the two apart.
                entry.key[Attribute.LABEL]  # noqa: B018
                return None

        plain = self._with_token(work)
        if plain is None:
            raise SealBroken("A wrapped key failed authentication under the master key.")
        return plain

    def is_available(self) -> bool:
        """Whether the token answers for the newest key now (not from what this process knows)."""

        def probe() -> None:
            found = self._load()
            if not found:
                raise Pkcs11KeyMissing()
            found[max(found)].key[Attribute.LABEL]  # noqa: B018 - a round trip to the token

        try:
            self._with_token(probe)
        except ConfigurationError:
            return False
        return True
