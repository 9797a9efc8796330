"""The pkcs11 master key against a real SoftHSM2 token: both mechanisms, tampering, a wrong PIN,
a missing token, a token pulled out between operations, non-extractable keys, versions, threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from certvault.errors import ConfigurationError, SealBroken
from certvault.masterkey import FORMAT_PKCS11_GCM, FORMAT_PKCS11_KEY_WRAP, blob_origin
from certvault.masterkey.chain import MasterKeyChain
from certvault.masterkey.file import FileMasterKeyProvider, MasterKeyMissing
from certvault.masterkey.pkcs11 import (
    Pkcs11KeyExists,
    Pkcs11KeyMissing,
    Pkcs11PinExposed,
    Pkcs11PinIncorrect,
    Pkcs11TokenMissing,
    read_pin_file,
)
from certvault.services.kernel.ports import master_key_provider
from tests.conftest import make_settings
from tests.pkcs11_fixtures import SoftToken, softhsm_fixture  # noqa: F401 - `softhsm`

MECHANISMS = [("gcm", FORMAT_PKCS11_GCM), ("key-wrap", FORMAT_PKCS11_KEY_WRAP)]
AAD = b"account 0b6c0f4e-5a0e-4f5e-9d43-1c1f3f1b2c3d version 1"


@pytest.mark.parametrize(("mechanism", "fmt"), MECHANISMS)
def test_wraps_in_the_token_and_unwraps(softhsm: SoftToken, mechanism: str, fmt: int):
    provider = softhsm.provider(mechanism=mechanism)
    assert provider.create_version() == 1
    secret = os.urandom(32)
    blob = provider.wrap(secret, AAD)
    assert blob[0] == fmt
    assert blob_origin(blob) == ("pkcs11", 1)
    assert secret not in blob
    assert provider.unwrap(blob, AAD) == secret
    if mechanism == "gcm":
        assert provider.wrap(secret, AAD) != blob  # a fresh nonce each time
    # Either mechanism opens what the other made: a blob names how it was made.
    other = softhsm.provider(mechanism="key-wrap" if mechanism == "gcm" else "gcm")
    assert other.unwrap(blob, AAD) == secret


@pytest.mark.parametrize(("mechanism", "fmt"), MECHANISMS)
def test_tampered_blob_or_associated_data_is_refused(softhsm: SoftToken, mechanism, fmt):
    provider = softhsm.provider(mechanism=mechanism)
    provider.create_version()
    blob = provider.wrap(os.urandom(32), AAD)
    with pytest.raises(SealBroken):
        provider.unwrap(blob, AAD + b"x")
    with pytest.raises(SealBroken):
        provider.unwrap(blob, b"")
    for position in (5, 10, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[position] ^= 0x01
        with pytest.raises(SealBroken):
            provider.unwrap(bytes(bad), AAD)
    with pytest.raises(SealBroken):
        provider.unwrap(blob[:-1], AAD)
    for garbage in (b"", b"\x02", blob[:20], b"\x09" + blob[1:], b"\x01" + blob[1:]):
        with pytest.raises(SealBroken):
            provider.unwrap(garbage, AAD)
    # The token still works after the refusals (a refused tag is not a lost token).
    assert provider.is_available()


def test_auto_uses_gcm_where_the_token_offers_it(softhsm: SoftToken):
    provider = softhsm.provider()
    provider.create_version()
    assert provider.uses_gcm
    assert provider.wrap(os.urandom(32), AAD)[0] == FORMAT_PKCS11_GCM


def test_master_keys_are_non_extractable_and_sensitive(softhsm: SoftToken):
    softhsm.provider().create_version()
    with softhsm.session() as session:
        for label, key_type in (
            ("certvault-master-v1", KeyType.AES),
            ("certvault-master-mac-v1", KeyType.GENERIC_SECRET),
        ):
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            assert key.key_type == key_type
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.TOKEN] is True
            with pytest.raises(p11e.AttributeSensitive):
                key[Attribute.VALUE]  # noqa: B018
        # Nor can it be wrapped out under another key.
        other = session.generate_key(KeyType.AES, 256, store=False)
        master = session.get_key(object_class=ObjectClass.SECRET_KEY, label="certvault-master-v1")
        with pytest.raises(p11e.KeyUnextractable):
            other.wrap_key(master)


def test_wrong_pin_is_refused_without_echoing_it(softhsm: SoftToken):
    softhsm.provider().create_version()
    softhsm.providers[0].close()
    wrong = "wrong-pin-canary-7731"
    provider = softhsm.provider(pin=wrong)
    with pytest.raises(Pkcs11PinIncorrect) as caught:
        provider.wrap(os.urandom(32), AAD)
    assert caught.value.code == "pkcs11_pin_incorrect"
    assert wrong not in caught.value.message and wrong not in repr(caught.value)
    assert wrong not in repr(provider)
    assert not provider.is_available()


def test_missing_token_and_missing_module(softhsm: SoftToken):
    provider = softhsm.provider(token_label="no-such-token")
    with pytest.raises(Pkcs11TokenMissing) as caught:
        provider.version  # noqa: B018
    assert caught.value.code == "pkcs11_token_missing"
    assert not provider.is_available()
    missing = type(provider)("/nonexistent/libpkcs11.so", softhsm.label, "k", softhsm.pin)
    with pytest.raises(Pkcs11TokenMissing):
        missing.wrap(b"k" * 32, AAD)


def test_no_key_yet(softhsm: SoftToken):
    provider = softhsm.provider()
    with pytest.raises(Pkcs11KeyMissing) as caught:
        provider.version  # noqa: B018
    assert "kek create" in caught.value.message
    assert isinstance(caught.value, MasterKeyMissing)  # init tells the operator what to do
    assert not provider.is_available()


def test_versions_rotate_and_retire(softhsm: SoftToken):
    provider = softhsm.provider()
    provider.create_version()
    old = provider.wrap(b"o" * 32, AAD)
    assert provider.create_version() == 2
    new = provider.wrap(b"n" * 32, AAD)
    assert blob_origin(new) == ("pkcs11", 2)
    assert provider.unwrap(old, AAD) == b"o" * 32
    assert provider.versions() == [1, 2]
    provider.retire_version(1)
    assert provider.versions() == [2]
    with pytest.raises(MasterKeyMissing):
        provider.unwrap(old, AAD)
    assert provider.unwrap(new, AAD) == b"n" * 32


def test_a_half_made_version_is_finished_and_a_whole_one_never_replaced(softhsm: SoftToken):
    provider = softhsm.provider()
    provider.create_version()
    with softhsm.session(rw=True) as s:
        # What a run stopped between the two keys of version 2 leaves behind.
        s.generate_key(KeyType.GENERIC_SECRET, 256, label="certvault-master-mac-v2", store=True)
        s.generate_key(KeyType.AES, 256, label="certvault-master-v3", store=True)
    # v3 exists (made elsewhere): the next version is 4, and a label is never reused.
    assert provider.create_version() == 4
    provider2 = softhsm.provider(mechanism="key-wrap")
    assert provider2.unwrap(provider2.wrap(b"k" * 32, AAD), AAD) == b"k" * 32
    with pytest.raises(Pkcs11KeyExists):
        provider._with_token(lambda: provider._generate(4))


@pytest.mark.parametrize("mechanism", ["gcm", "key-wrap"])
def test_threads_share_one_provider(softhsm: SoftToken, mechanism: str):
    provider = softhsm.provider(mechanism=mechanism)
    provider.create_version()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                secret = os.urandom(32)
                aad = f"{n}:{i}".encode()
                assert provider.unwrap(provider.wrap(secret, aad), aad) == secret
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_token_pulled_out_between_operations_and_put_back(softhsm: SoftToken):
    provider = softhsm.provider()
    provider.create_version()
    blob = provider.wrap(b"s" * 32, AAD)
    away = softhsm.pull_out()
    # Readiness asks the token, not what the process remembers of it.
    assert not provider.is_available()
    with pytest.raises(Pkcs11TokenMissing):
        provider.unwrap(blob, AAD)
    with pytest.raises(Pkcs11TokenMissing):
        provider.wrap(b"s" * 32, AAD)
    softhsm.put_back(away)
    # Back: the provider opens a new session by itself.
    assert provider.unwrap(blob, AAD) == b"s" * 32


def test_key_wrap_takes_whole_blocks_only(softhsm: SoftToken):
    provider = softhsm.provider(mechanism="key-wrap")
    provider.create_version()
    for size in (0, 8, 17, 33):
        with pytest.raises(ConfigurationError):
            provider.wrap(os.urandom(size), AAD)


def test_chain_routes_unwrap_by_blob_format(softhsm: SoftToken, tmp_path: Path):
    files = FileMasterKeyProvider.create(tmp_path / "mk")
    old = files.wrap(b"f" * 32, AAD)
    token = softhsm.provider()
    token.create_version()
    chain = MasterKeyChain(token, files)
    assert chain.name == "pkcs11" and chain.version == 1
    new = chain.wrap(b"t" * 32, AAD)
    assert blob_origin(new) == ("pkcs11", 1)
    assert chain.unwrap(old, AAD) == b"f" * 32
    assert chain.unwrap(new, AAD) == b"t" * 32
    with pytest.raises(MasterKeyMissing):
        MasterKeyChain(token).unwrap(old, AAD)
    with pytest.raises(SealBroken):
        chain.unwrap(b"\x07" + old[1:], AAD)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pin_file_others_can_read_is_refused(tmp_path: Path, mode: int):
    pin_file = tmp_path / "pin"
    pin_file.write_text("secret-pin-canary\n")
    pin_file.chmod(mode)
    with pytest.raises(Pkcs11PinExposed) as caught:
        read_pin_file(pin_file)
    assert f"{mode:04o}" in caught.value.message
    assert "secret-pin-canary" not in caught.value.message


def test_pin_file_rules(tmp_path: Path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234\n")
    for mode in (0o600, 0o400):
        pin_file.chmod(mode)
        assert read_pin_file(pin_file) == "1234"
    link = tmp_path / "link"
    link.symlink_to(pin_file)
    with pytest.raises(Pkcs11PinExposed):
        read_pin_file(link)
    with pytest.raises(Pkcs11PinExposed):
        read_pin_file(tmp_path / "missing")
    with pytest.raises(Pkcs11PinExposed):
        read_pin_file(tmp_path)


def test_settings_build_a_chain_that_still_reads_the_file_key(softhsm: SoftToken, tmp_path):
    home = tmp_path / "home"
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin)
    pin_file.chmod(0o600)
    base = {"master_key_provider": "pkcs11", "pkcs11_token_label": softhsm.label}
    with pytest.raises(ConfigurationError, match="PIN"):
        master_key_provider(make_settings(home, None, **base))
    with pytest.raises(ConfigurationError, match="TOKEN_LABEL"):
        master_key_provider(make_settings(home, None, master_key_provider="pkcs11"))
    settings = make_settings(home, None, pkcs11_pin_file=pin_file, **base)
    alone = master_key_provider(settings)
    assert isinstance(alone, MasterKeyChain) and len(alone.members) == 1
    FileMasterKeyProvider.create(settings.effective_master_key_dir)
    both = master_key_provider(settings)
    assert isinstance(both, MasterKeyChain)
    assert [m.name for m in both.members] == ["pkcs11", "file"]
    pin_file.chmod(0o644)
    with pytest.raises(Pkcs11PinExposed):
        master_key_provider(settings)
