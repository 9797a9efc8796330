"""The reader's ceilings: KDF work priced at what it really costs, before any of it runs."""

from __future__ import annotations

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12

from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.pbe import kdf_work
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.errors import P12TooExpensive, P12TooManyItems
from tests.unit.crypto.pkcs12.assembly import (
    p12_from_bags,
    pbmac1,
    shrouded_key_bag,
    vector_bags,
)

PW = "vector-pass-1234"


def refused_before_any_kdf(data: bytes, limits: P12Limits, kdf_runs: list[int]) -> None:
    with pytest.raises(P12TooExpensive):
        read_pkcs12(data, PW, limits)
    assert kdf_runs == []


@pytest.mark.parametrize(
    ("hash_name", "iterations", "n_bytes", "work"),
    [
        ("sha1", 2048, 20, 2048),
        ("sha1", 2048, 24, 2 * 2048),  # a 3DES key needs two SHA-1 blocks
        ("sha1", 2048, 8, 2048),  # an IV is still one whole block
        ("sha256", 1000, 32, 1000),
        ("sha256", 1000, 64, 2 * 1000),
        ("sha512", 7, 200, 4 * 7),
    ],
)
def test_kdf_work_is_iterations_times_output_blocks(hash_name, iterations, n_bytes, work):
    assert kdf_work(hash_name, iterations, n_bytes) == work


def test_total_work_is_capped(vectors, kdf_runs):
    # PBES2 AES-256 with PBKDF2-HMAC-SHA256 for certificates and key, a SHA-256 MAC: one block
    # each, 2048 rounds each.
    data = vectors.data("p256.p12")
    assert read_pkcs12(data, PW, P12Limits(max_work=3 * 2048)).entries
    kdf_runs.clear()
    refused_before_any_kdf(data, P12Limits(max_work=3 * 2048 - 1), kdf_runs)


def test_legacy_pbe_pays_for_the_iv_and_every_key_block(vectors, kdf_runs):
    # openssl -legacy: SHA-1 MAC (one block); certificates under 40-bit RC2 (key and IV: one
    # block each); the key under 3DES (a 24-byte key: two SHA-1 blocks; IV: one). Counting one
    # run of each KDF, as before, priced this file at 3 x 2048 and let it through.
    data = vectors.data("p256-legacy.p12")
    refused_before_any_kdf(data, P12Limits(max_work=3 * 2048), kdf_runs)
    refused_before_any_kdf(data, P12Limits(max_work=6 * 2048 - 1), kdf_runs)
    assert read_pkcs12(data, PW, P12Limits(max_work=6 * 2048)).entries
    # What was admitted is what ran: the MAC, RC2 key and IV, then the 3DES key and IV.
    assert kdf_runs == [2048] * 5


def test_pbkdf2_pays_for_every_output_block(vectors, kdf_runs):
    # AES-256 keyed by PBKDF2-HMAC-SHA1: 32 bytes are two SHA-1 blocks, so 2 x 2048 rounds.
    bags = vector_bags(vectors, "p256-nomac.p12")
    certs = [b for b in bags if b["bag_id"].native == "cert_bag"]
    key = shrouded_key_bag(vectors.pkcs8(vectors.key("p256")), PW, prf="sha1")
    data = p12_from_bags([*certs, key])

    refused_before_any_kdf(data, P12Limits(max_work=2048), kdf_runs)
    refused_before_any_kdf(data, P12Limits(max_work=2 * 2048 - 1), kdf_runs)
    assert read_pkcs12(data, PW, P12Limits(max_work=2 * 2048)).entries


def test_pbmac1_pays_for_its_key_length(vectors, kdf_runs):
    # A 64-byte HMAC key from PBKDF2-HMAC-SHA256: two blocks. The bags are unencrypted.
    data = pbmac1(vectors.data("ed25519-noenc.p12"), PW, prf="sha256", key_length=64)

    refused_before_any_kdf(data, P12Limits(max_work=2 * 2048 - 1), kdf_runs)
    assert read_pkcs12(data, PW, P12Limits(max_work=2 * 2048)).entries


def test_each_password_form_tried_is_paid_for(vectors, kdf_runs):
    # An empty password is tried as an empty BMPString and as no password: the second MAC
    # check is a second KDF run and must fit the budget too.
    data = vectors.data("p256-emptypass.p12")
    assert read_pkcs12(data, "", P12Limits(max_work=3 * 2048)).entries  # first form works
    wrong_mac = asn1_pkcs12.Pfx.load(data)
    digest = bytearray(wrong_mac["mac_data"]["mac"]["digest"].native)
    digest[0] ^= 1
    wrong_mac["mac_data"]["mac"]["digest"] = bytes(digest)
    kdf_runs.clear()
    with pytest.raises(P12TooExpensive):
        read_pkcs12(wrong_mac.dump(force=True), "", P12Limits(max_work=3 * 2048))
    assert kdf_runs == [2048]  # the first form ran; the second was refused before it ran


def test_iterations_per_kdf_are_capped(vectors, kdf_runs):
    refused_before_any_kdf(vectors.data("p256.p12"), P12Limits(max_iterations=2047), kdf_runs)


def test_bag_count_is_capped(vectors):
    data = vectors.data("rsa2048-chain.p12")  # EncryptedData with two certificates, one key bag
    assert read_pkcs12(data, PW, P12Limits(max_bags=4)).entries
    with pytest.raises(P12TooManyItems) as refused:
        read_pkcs12(data, PW, P12Limits(max_bags=3))
    assert refused.value.code == "p12_too_many_items"
