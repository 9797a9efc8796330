"""Reading PKCS#12: vectors made by openssl and friends, and hostile or broken input."""

from __future__ import annotations

import datetime
import random

import pytest
from asn1crypto import algos
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12
from certvault.errors import (
    P12Error,
    P12Malformed,
    P12NoCertificate,
    P12NoKey,
    P12TooExpensive,
    P12TooLarge,
    P12UnsupportedKey,
    P12WrongPassword,
    UnsupportedKey,
)
from tests.unit.crypto.conftest import VECTOR_DIR
from tests.unit.crypto.pkcs12.assembly import (
    der,
    p12_from_bags,
    pkcs12_mac,
    vector_bags,
    with_mac,
)

PW = "vector-pass-1234"
KEY_TYPES = ["rsa2048", "rsa4096", "p256", "p384", "p521", "ed25519"]

# file, password label (README), key/cert name, friendly name, extra certificate names
SINGLE_KEY_VECTORS = (
    [(f"{t}.p12", "P", t, f"alice {t}", []) for t in KEY_TYPES]
    + [(f"{t}-legacy.p12", "P", t, f"alice {t}", []) for t in KEY_TYPES]
    + [
        ("rsa2048-chain.p12", "P", "rsa2048", "alice rsa2048", ["ca"]),
        ("p256-chain-legacy.p12", "P", "p256", None, ["ca"]),
        ("p256-nonascii.p12", "N", "p256", None, []),
        ("rsa2048-nonascii-legacy.p12", "N", "rsa2048", None, []),
        ("p256-emptypass.p12", "E", "p256", None, []),
        ("p256-emptypass-legacy.p12", "E", "p256", None, []),
        ("p256-iter1.p12", "P", "p256", None, []),
        ("p256-noiter.p12", "P", "p256", None, []),
        ("p256-nomac.p12", "P", "p256", None, []),
        ("p256-nomac-legacy.p12", "P", "p256", None, []),
        ("p384-aes128-aes192-sha512.p12", "P", "p384", None, []),
        ("rsa2048-pbes2-3des-sha384.p12", "P", "rsa2048", None, []),
        ("p256-rc2-128.p12", "P", "p256", None, []),
        ("p256-rc2-40-2des.p12", "P", "p256", None, []),
        ("ed25519-noenc.p12", "P", "ed25519", None, []),
        ("pbmac1.p12", "P", "p256", "alice p256", []),
    ]
)
HOSTILE_VECTORS = [
    "iter-mac-100m.p12",
    "iter-certs-100m.p12",
    "iter-key-100m.p12",
    "iter-legacy-key-100m.p12",
    "iter-nested-100m.p12",
]


# --- reading the vectors ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pw", "key_name", "friendly", "extra"), SINGLE_KEY_VECTORS)
def test_vector_loads_with_its_key_and_certificate(vectors, name, pw, key_name, friendly, extra):
    contents = read_pkcs12(vectors.data(name), vectors.passwords[pw])

    assert len(contents.entries) == 1
    entry = contents.entries[0]
    assert vectors.pkcs8(entry.key) == vectors.pkcs8(vectors.key(key_name))
    assert der(entry.certificate) == der(vectors.cert(key_name))
    assert entry.friendly_name == friendly
    assert [der(c) for c in contents.extra_certificates] == [der(vectors.cert(n)) for n in extra]


def test_two_pairs_give_two_entries_in_file_order(vectors):
    contents = read_pkcs12(vectors.data("two-pairs.p12"), PW)

    assert [vectors.pkcs8(e.key) for e in contents.entries] == [
        vectors.pkcs8(vectors.key("rsa2048")),
        vectors.pkcs8(vectors.key("p384")),
    ]
    assert [der(e.certificate) for e in contents.entries] == [
        der(vectors.cert("rsa2048")),
        der(vectors.cert("p384")),
    ]
    assert [e.friendly_name for e in contents.entries] == ["alice rsa2048", "alice p384"]
    assert contents.extra_certificates == []


def test_pbkdf2_prf_variants_all_decrypt_the_same_key(vectors):
    contents = read_pkcs12(vectors.data("p256-pbes2-prfs.p12"), PW)

    assert len(contents.entries) == 3
    expected = vectors.pkcs8(vectors.key("p256"))
    assert all(vectors.pkcs8(e.key) == expected for e in contents.entries)
    assert all(der(e.certificate) == der(vectors.cert("p256")) for e in contents.entries)


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("p256.p12", "vector-pass-1235"),
        ("p256.p12", ""),
        ("p256-legacy.p12", "Vector-pass-1234"),
        ("p256-nonascii.p12", "passwort"),
        ("rsa2048-nonascii-legacy.p12", "pässwörd-Ω-1234"),
        ("p256-emptypass.p12", " "),
        ("p256-nomac.p12", "wrong"),  # no MAC: the key's padding gives it away
        ("p256-nomac-legacy.p12", "wrong"),
        ("two-pairs.p12", "wrong"),
        ("iter-nested-100m.p12", "wrong"),  # the outer EncryptedData fails first
        ("pbmac1.p12", "wrong"),
        ("p256.p12", "\ud800"),  # a lone surrogate cannot be any file's password
    ],
)
def test_wrong_password(vectors, name, wrong):
    with pytest.raises(P12WrongPassword):
        read_pkcs12(vectors.data(name), wrong)


def test_certificates_only_is_no_key(vectors):
    with pytest.raises(P12NoKey):
        read_pkcs12(vectors.data("certs-only.p12"), PW)


def test_key_only_is_no_certificate(vectors):
    with pytest.raises(P12NoCertificate):
        read_pkcs12(vectors.data("key-only.p12"), PW)


def test_key_with_another_keys_certificate_is_refused(vectors):
    with pytest.raises(P12NoCertificate):
        read_pkcs12(vectors.data("mismatch.p12"), PW)


# --- hostile and broken input -------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_VECTORS)
def test_100_million_iterations_refused_before_running(vectors, name, kdf_runs):
    with pytest.raises(P12TooExpensive):
        read_pkcs12(vectors.data(name), PW)

    if name == "iter-nested-100m.p12":
        # The hostile count is only visible after decrypting the section that hides it; only
        # the two EncryptedData sections (2048 rounds each) ran, never the key bag.
        assert kdf_runs == [2048, 2048]
    else:
        assert kdf_runs == []


def test_oversize_is_refused():
    with pytest.raises(P12TooLarge):
        read_pkcs12(b"\x30" * (1024 * 1024 + 1), PW)


def test_size_limit_is_configurable(vectors):
    with pytest.raises(P12TooLarge):
        read_pkcs12(vectors.data("p256.p12"), PW, P12Limits(max_bytes=100))


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 100, 500, -40, -1])
def test_truncated_file_is_malformed(vectors, cut):
    with pytest.raises(P12Malformed):
        read_pkcs12(vectors.data("p256.p12")[:cut], PW)


def test_trailing_bytes_are_malformed(vectors):
    with pytest.raises(P12Malformed):
        read_pkcs12(vectors.data("p256.p12") + b"\x00", PW)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_malformed(seed):
    blob = random.Random(seed).randbytes(2000)
    with pytest.raises(P12Malformed):
        read_pkcs12(blob, PW)


def test_public_key_privacy_mode_is_malformed():
    # An AuthenticatedSafe holding one EnvelopedData ContentInfo; its content is never read.
    oid = asn1_core.ObjectIdentifier("1.2.840.113549.1.7.3").dump()
    info = b"\x30" + bytes([len(oid) + 4]) + oid + b"\xa0\x02\x30\x00"
    auth_safe = b"\x30" + bytes([len(info)]) + info
    pfx = asn1_pkcs12.Pfx(
        {"version": "v3", "auth_safe": {"content_type": "data", "content": auth_safe}}
    )
    with pytest.raises(P12Malformed, match="public-key privacy"):
        read_pkcs12(pfx.dump(), PW)


def test_pbmac1_key_length_is_bounded(vectors):
    # An unbounded PBKDF2 output length would multiply the work behind the iteration ceiling.
    pfx = asn1_pkcs12.Pfx.load(vectors.data("pbmac1.p12"))
    alg = pfx["mac_data"]["mac"]["digest_algorithm"]
    params = algos.Pbmac1Params.load(alg["parameters"].dump())
    params["key_derivation_func"]["parameters"]["key_length"] = 1_000_000
    mac = asn1_pkcs12.MacData(
        {
            "mac": {
                "digest_algorithm": {
                    "algorithm": "1.2.840.113549.1.5.14",
                    "parameters": algos.Pbmac1Params.load(params.dump(force=True)),
                },
                "digest": pfx["mac_data"]["mac"]["digest"].native,
            },
            "mac_salt": b"NOT USED",
            "iterations": 1,
        }
    )
    with pytest.raises(P12Malformed):
        read_pkcs12(with_mac(vectors.data("pbmac1.p12"), mac), PW)


def test_empty_password_also_tried_as_absent(vectors):
    # Some tools MAC an empty password as no bytes at all instead of an empty BMPString.
    data = vectors.data("ed25519-noenc.p12")  # unencrypted bags: only the MAC needs the password
    blob = pkcs12_mac(data, b"")

    assert len(read_pkcs12(blob, "").entries) == 1
    with pytest.raises(P12WrongPassword):
        read_pkcs12(blob, PW)


def named_bags(vectors, key_name: str | None, cert_name: str | None) -> bytes:
    """The p256 key and certificate, their bags carrying these friendly names."""
    bags = []
    for bag in vector_bags(vectors, "p256-nomac.p12"):
        name = cert_name if bag["bag_id"].native == "cert_bag" else key_name
        attributes = [] if name is None else [{"type": "friendly_name", "values": [name]}]
        bags.append(
            asn1_pkcs12.SafeBag(
                {
                    "bag_id": bag["bag_id"].native,
                    "bag_value": bag["bag_value"],
                    "bag_attributes": attributes,
                }
            )
        )
    return p12_from_bags(bags)


def test_a_nul_terminated_friendly_name_loses_its_nul(vectors):
    # As in pyca's no-password.p12: '6BC162DA\x00', a C string written with its terminator.
    contents = read_pkcs12(named_bags(vectors, "6BC162DA\x00", None), PW)
    assert contents.entries[0].friendly_name == "6BC162DA"


def test_a_written_nul_terminated_name_comes_back_clean(vectors):
    key, cert = vectors.key("p256"), vectors.cert("p256")
    blob = write_pkcs12(key, cert, [], "pw-1234", EncryptionType.AES256_SHA256, 2048, "n\x00")
    assert read_pkcs12(blob, "pw-1234").entries[0].friendly_name == "n"


@pytest.mark.parametrize("unsafe", ["\x1b[2J\x1b[Hadmin", "a\nb", "evil\u202egnp.exe", "a\x00b"])
def test_a_friendly_name_with_control_characters_is_dropped(vectors, unsafe):
    assert read_pkcs12(named_bags(vectors, unsafe, None), PW).entries[0].friendly_name is None
    # The certificate bag's clean name takes its place.
    contents = read_pkcs12(named_bags(vectors, unsafe, "alice"), PW)
    assert contents.entries[0].friendly_name == "alice"


def test_empty_mac_salt_is_malformed(vectors):
    # With the empty password tried as no bytes at all, the KDF would have no input.
    pfx = asn1_pkcs12.Pfx.load(vectors.data("p256-emptypass.p12"))
    pfx["mac_data"]["mac_salt"] = b""
    with pytest.raises(P12Malformed, match="salt"):
        read_pkcs12(pfx.dump(force=True), "")


def _self_signed_p12(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd key")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(crypto_pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(PW.encode())
    )
    return crypto_pkcs12.serialize_key_and_certificates(None, key, cert, None, enc)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256K1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ],
    ids=["secp256k1", "rsa1024"],
)
def test_unsupported_key_type(make_key):
    with pytest.raises(P12UnsupportedKey) as info:
        read_pkcs12(_self_signed_p12(make_key()), PW)
    assert isinstance(info.value, UnsupportedKey)


def test_certificate_with_non_positive_serial_is_refused(vectors):
    # cryptography only warns about these today and will refuse them in a later release.
    bags = vector_bags(vectors, "p256-nomac.p12")
    for i, bag in enumerate(bags):
        if bag["bag_id"].native == "cert_bag":
            cert = asn1_x509.Certificate.load(bytes(bag["bag_value"]["cert_value"]))
            cert["tbs_certificate"]["serial_number"] = 0
            bags[i] = asn1_pkcs12.SafeBag(
                {
                    "bag_id": "cert_bag",
                    "bag_value": asn1_pkcs12.CertBag({"cert_id": "x509", "cert_value": cert}),
                }
            )

    with pytest.raises(P12Malformed, match="serial"):
        read_pkcs12(p12_from_bags(bags), PW)


def test_nested_safe_contents_are_read(vectors):
    bags = vector_bags(vectors, "p256-nomac.p12")
    nested = asn1_pkcs12.SafeBag(
        {"bag_id": "safe_contents", "bag_value": asn1_pkcs12.SafeContents(bags)}
    )
    contents = read_pkcs12(p12_from_bags([nested]), PW)
    assert vectors.pkcs8(contents.entries[0].key) == vectors.pkcs8(vectors.key("p256"))


def test_deep_nesting_is_malformed(vectors):
    bag = vector_bags(vectors, "p256-nomac.p12")
    for _ in range(6):
        bag = [
            asn1_pkcs12.SafeBag(
                {"bag_id": "safe_contents", "bag_value": asn1_pkcs12.SafeContents(bag)}
            )
        ]
    with pytest.raises(P12Malformed):
        read_pkcs12(p12_from_bags(bag), PW)


def _fake_rsa_pkcs8(bits: int) -> bytes:
    # Numbers that only pretend to be an RSA key: cheap to load, instantly refused if checked.
    numbers = asn1_keys.RSAPrivateKey(
        {
            "version": 0,
            "modulus": (1 << (bits - 1)) | 1,
            "public_exponent": 65537,
            "private_exponent": 3,
            "prime1": 3,
            "prime2": 5,
            "exponent1": 1,
            "exponent2": 1,
            "coefficient": 1,
        }
    )
    return asn1_keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": {"algorithm": "rsa", "parameters": None},
            "private_key": numbers,
        }
    ).dump()


def test_oversized_rsa_key_is_refused_before_validation():
    key_bag = asn1_pkcs12.SafeBag(
        {"bag_id": "key_bag", "bag_value": asn1_keys.PrivateKeyInfo.load(_fake_rsa_pkcs8(16384))}
    )
    with pytest.raises(P12UnsupportedKey):
        read_pkcs12(p12_from_bags([key_bag]), PW)


def test_key_check_work_is_capped(vectors):
    data = vectors.data("rsa4096.p12")  # one RSA-4096 key: 8 units
    assert read_pkcs12(data, PW, P12Limits(max_key_checks=8)).entries
    with pytest.raises(P12TooExpensive):
        read_pkcs12(data, PW, P12Limits(max_key_checks=7))


def test_ec_and_ed25519_keys_cost_one_unit_each(vectors):
    assert read_pkcs12(vectors.data("p521.p12"), PW, P12Limits(max_key_checks=1)).entries
    with pytest.raises(P12TooExpensive):
        read_pkcs12(vectors.data("ed25519.p12"), PW, P12Limits(max_key_checks=0))
    with pytest.raises(P12TooExpensive):  # three keys
        read_pkcs12(vectors.data("p256-pbes2-prfs.p12"), PW, P12Limits(max_key_checks=2))


def _without_mac(name: str) -> bytes:
    return with_mac((VECTOR_DIR / name).read_bytes(), None)


def _mutations(seed_names):
    # Seeds without a MAC let mutations reach the bag, key and certificate parsers.
    seeds = [(VECTOR_DIR / n).read_bytes() for n in seed_names]
    seeds += [_without_mac(n) for n in ("ed25519-noenc.p12", "p256.p12", "p256-legacy.p12")]

    @st.composite
    def mutate(draw):
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 6))):
            pos = draw(st.integers(0, len(data) - 1)) if data else 0
            op = draw(st.sampled_from(["set", "xor", "cut", "insert", "delete"]))
            if op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "xor" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut":
                del data[pos:]
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            elif data:
                del data[pos : pos + draw(st.integers(1, 8))]
        return bytes(data)

    return mutate()


@settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=2048),
        _mutations(
            [
                "p256.p12",
                "p256-legacy.p12",
                "p256-nomac.p12",
                "p256-nomac-legacy.p12",
                "ed25519-noenc.p12",
                "pbmac1.p12",
                "iter-nested-100m.p12",
            ]
        ),
    )
)
def test_garbage_only_ever_raises_p12_errors(blob):
    try:
        read_pkcs12(blob, PW)
    except P12Error:
        pass
