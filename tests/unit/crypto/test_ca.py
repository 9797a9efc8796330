"""The built-in CA, checked by the clients that will rely on it: openssl and GnuTLS certtool."""

from __future__ import annotations

import datetime
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certvault.crypto import ca, keys
from certvault.crypto.keys import PrivateKey
from certvault.crypto.profiles import PROFILES, KeyType, Profile
from certvault.errors import (
    CaInvalid,
    CsrInvalid,
    CsrUnsupportedKey,
    InvalidInput,
    KeyMismatch,
    KeyTypeNotAllowed,
    TooLarge,
)

KEY_DIR = Path(__file__).resolve().parents[2] / "vectors" / "keys"
CRL_URL = "http://pki.example.org/crl/acme/issuing.crl"
ROOT_CRL_URL = "http://pki.example.org/crl/acme/root.crl"
UTC = datetime.UTC


@functools.cache
def pool_key(name: str) -> PrivateKey:
    """A pre-generated key from tests/vectors/keys (RSA generation is too slow for every test)."""
    loaded = serialization.load_pem_private_key(
        (KEY_DIR / f"{name}.pem").read_bytes(), None, unsafe_skip_rsa_key_validation=True
    )
    return keys.supported_key(loaded)


def pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


@dataclass(frozen=True)
class Chain:
    root_key: PrivateKey
    root: x509.Certificate
    issuing_key: PrivateKey
    issuing: x509.Certificate
    leaf_key: PrivateKey  # a key for end-entity certificates

    def issue(self, profile: str = "smime", **kwargs) -> x509.Certificate:
        kwargs.setdefault("email", "alice@example.org")
        kwargs.setdefault("crl_url", CRL_URL)
        return ca.issue_certificate(
            self.issuing_key,
            self.issuing,
            kwargs.pop("public_key", self.leaf_key.public_key()),
            PROFILES[profile],
            **kwargs,
        )


def make_chain(root_key, issuing_key, leaf_key) -> Chain:
    root = ca.build_root(root_key, "Acme Root CA", "Acme Ltd")
    issuing = ca.build_issuing(
        root_key, root, issuing_key, "Acme Issuing CA", "Acme Ltd", crl_url=ROOT_CRL_URL
    )
    return Chain(root_key, root, issuing_key, issuing, leaf_key)


@pytest.fixture(scope="module")
def rsa_chain() -> Chain:
    return make_chain(pool_key("rsa2048-1"), pool_key("rsa2048-2"), pool_key("rsa2048-3"))


@pytest.fixture(scope="module")
def ec_chain() -> Chain:
    # EC key generation is cheap; only RSA comes from the pool.
    return make_chain(pool_key("ec384"), pool_key("ec256"), ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(params=["rsa", "ec"])
def chain(request) -> Chain:
    return request.getfixturevalue(f"{request.param}_chain")


def write_chain(tmp_path: Path, chain: Chain, leaf: x509.Certificate) -> dict[str, Path]:
    paths = {}
    for name, cert in (("root", chain.root), ("issuing", chain.issuing), ("leaf", leaf)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(pem(cert))
    return paths


def openssl_verify(tmp_path, chain, leaf, *args) -> subprocess.CompletedProcess[str]:
    paths = write_chain(tmp_path, chain, leaf)
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(paths["root"]),
            "-untrusted",
            str(paths["issuing"]),
            *args,
            str(paths["leaf"]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_verifies(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


# --- chains -------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_openssl_validates_the_chain(chain, tmp_path, profile):
    assert_verifies(openssl_verify(tmp_path, chain, chain.issue(profile)))


def test_openssl_refuses_a_leaf_under_another_root(rsa_chain, ec_chain, tmp_path):
    leaf = ec_chain.issue()
    mixed = Chain(rsa_chain.root_key, rsa_chain.root, ec_chain.issuing_key, ec_chain.issuing, None)
    assert openssl_verify(tmp_path, mixed, leaf).returncode != 0


def test_the_issuing_ca_cannot_create_a_sub_ca(rsa_chain, tmp_path):
    sub = ca.build_issuing(
        rsa_chain.issuing_key, rsa_chain.issuing, pool_key("rsa2048-4"), "Rogue Sub CA"
    )
    leaf = ca.issue_certificate(
        pool_key("rsa2048-4"),
        sub,
        rsa_chain.leaf_key.public_key(),
        PROFILES["smime"],
        email="a@example.org",
    )
    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_bytes(pem(rsa_chain.issuing) + pem(sub))
    (tmp_path / "root.pem").write_bytes(pem(rsa_chain.root))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            tmp_path / "root.pem",
            "-untrusted",
            untrusted,
            tmp_path / "leaf.pem",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "path length constraint exceeded" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("profile", "purpose", "accepted"),
    [
        ("smime", "smimesign", True),
        ("smime", "smimeencrypt", True),
        ("smime-encryption", "smimeencrypt", True),
        ("smime-encryption", "smimesign", False),
        ("smime-signing", "smimesign", True),
        ("smime-signing", "smimeencrypt", False),
        ("client-auth", "sslclient", True),
        ("client-auth", "smimesign", False),
        ("smime", "sslclient", False),
    ],
)
def test_openssl_purposes_follow_the_profile(rsa_chain, tmp_path, profile, purpose, accepted):
    result = openssl_verify(tmp_path, rsa_chain, rsa_chain.issue(profile), "-purpose", purpose)
    if accepted:
        assert_verifies(result)
    else:
        assert result.returncode != 0
        assert "unsuitable certificate purpose" in result.stdout + result.stderr


@pytest.mark.parametrize("profile", ["smime", "smime-signing"])
def test_openssl_accepts_ec_signing_certificates(ec_chain, tmp_path, profile):
    result = openssl_verify(tmp_path, ec_chain, ec_chain.issue(profile), "-purpose", "smimesign")
    assert_verifies(result)


def test_openssl_refuses_ec_signing_certificate_for_encryption(ec_chain, tmp_path):
    leaf = ec_chain.issue("smime-signing")
    assert openssl_verify(tmp_path, ec_chain, leaf, "-purpose", "smimeencrypt").returncode != 0


def test_mail_can_be_encrypted_to_an_ec_encryption_certificate(ec_chain, tmp_path):
    # openssl 3.0's smimeencrypt purpose wants keyEncipherment, which an EC key cannot have; what
    # matters is that S/MIME encryption (ECDH key agreement) works with the certificate.
    leaf = ec_chain.issue("smime-encryption")
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    (tmp_path / "key.pem").write_bytes(
        ec_chain.leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "msg.txt").write_bytes(b"secret mail\n")
    common = ["-binary", "-outform", "DER"]
    subprocess.run(
        [
            "openssl",
            "cms",
            "-encrypt",
            "-aes-256-cbc",
            *common,
            "-in",
            tmp_path / "msg.txt",
            "-out",
            tmp_path / "msg.cms",
            tmp_path / "leaf.pem",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    out = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            tmp_path / "msg.cms",
            "-recip",
            tmp_path / "leaf.pem",
            "-inkey",
            tmp_path / "key.pem",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert out.stdout == b"secret mail\n"


def certtool_verify(root: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    """GnuTLS's verdict on ``bundle`` (leaf first) with ``root`` as the only trust anchor."""
    return subprocess.run(
        ["certtool", "--verify", "--load-ca-certificate", root, "--infile", bundle],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_certtool_validates_the_chain(chain, tmp_path):
    leaf = chain.issue("smime")
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(pem(leaf) + pem(chain.issuing) + pem(chain.root))
    result = subprocess.run(
        ["certtool", "--verify-chain", "--infile", bundle], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Chain verification output: Verified" in result.stdout

    (tmp_path / "root.pem").write_bytes(pem(chain.root))
    anchored = certtool_verify(tmp_path / "root.pem", bundle)
    assert anchored.returncode == 0, anchored.stdout + anchored.stderr


def test_certtool_refuses_a_chain_under_another_root(rsa_chain, ec_chain, tmp_path):
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(pem(rsa_chain.issue()) + pem(rsa_chain.issuing))
    (tmp_path / "root.pem").write_bytes(pem(ec_chain.root))
    assert certtool_verify(tmp_path / "root.pem", bundle).returncode != 0


def test_ed25519_cas_sign_without_a_hash(tmp_path):
    chain = make_chain(
        ed25519.Ed25519PrivateKey.generate(),
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP256R1()),
    )
    leaf = chain.issue()
    assert leaf.signature_hash_algorithm is None
    assert_verifies(openssl_verify(tmp_path, chain, leaf))


def test_signature_hash_follows_the_ca_key(rsa_chain, ec_chain):
    assert isinstance(rsa_chain.root.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(rsa_chain.issue().signature_hash_algorithm, hashes.SHA256)
    assert isinstance(ec_chain.root.signature_hash_algorithm, hashes.SHA384)  # P-384 root
    assert isinstance(ec_chain.issuing.signature_hash_algorithm, hashes.SHA384)  # signed by it
    assert isinstance(ec_chain.issue().signature_hash_algorithm, hashes.SHA256)  # P-256 issuing
    p521 = ca.build_root(pool_key("ec521"), "P-521 Root")
    assert isinstance(p521.signature_hash_algorithm, hashes.SHA512)


# --- CA certificates ----------------------------------------------------------------------------


def test_root_and_issuing_extensions(rsa_chain):
    root, issuing = rsa_chain.root, rsa_chain.issuing
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Ltd"

    for cert, path_length in ((root, None), (issuing, 0)):
        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca and constraints.value.path_length == path_length
        usage = ext(cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign and usage.value.crl_sign
        assert not usage.value.digital_signature
        assert ext(cert, x509.SubjectKeyIdentifier).value == (
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        )

    with pytest.raises(x509.ExtensionNotFound):
        ext(root, x509.CRLDistributionPoints)
    aki = ext(issuing, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(root, x509.SubjectKeyIdentifier).value.digest
    assert crl_urls(issuing) == [ROOT_CRL_URL]


def test_ca_validity_defaults_and_clipping():
    now = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    root = ca.build_root(pool_key("ec384"), "Root", validity_days=100, now=now)
    assert root.not_valid_before_utc == now - ca.CLOCK_SKEW
    assert root.not_valid_after_utc == now + datetime.timedelta(days=100)
    issuing = ca.build_issuing(pool_key("ec384"), root, pool_key("ec256"), "Issuing", now=now)
    assert issuing.not_valid_after_utc == root.not_valid_after_utc  # 1825 days clipped to 100

    long_root = ca.build_root(pool_key("ec384"), "Root", now=now)
    assert long_root.not_valid_after_utc == now + datetime.timedelta(days=3650)


def test_verify_issuing_pair(rsa_chain, ec_chain):
    ca.verify_issuing_pair(rsa_chain.issuing_key, rsa_chain.issuing)
    ca.verify_issuing_pair(rsa_chain.root_key, rsa_chain.root)
    with pytest.raises(KeyMismatch):
        ca.verify_issuing_pair(rsa_chain.root_key, rsa_chain.issuing)
    with pytest.raises(CaInvalid, match="not a CA"):
        ca.verify_issuing_pair(rsa_chain.leaf_key, rsa_chain.issue())
    later = rsa_chain.issuing.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(CaInvalid, match="expired"):
        ca.verify_issuing_pair(rsa_chain.issuing_key, rsa_chain.issuing, now=later)


def test_a_ca_certificate_without_keycertsign_is_refused(ec_chain):
    key = ec_chain.leaf_key
    no_sign = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime.datetime(2099, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CaInvalid, match="keyCertSign"):
        ca.verify_issuing_pair(key, no_sign)
    with pytest.raises(CaInvalid):
        ca.issue_certificate(key, no_sign, key.public_key(), PROFILES["smime"], email="a@b.org")


def test_issuing_from_a_leaf_or_with_the_wrong_key_is_refused(rsa_chain):
    leaf = rsa_chain.issue()
    with pytest.raises(CaInvalid):
        ca.issue_certificate(
            rsa_chain.leaf_key,
            leaf,
            rsa_chain.leaf_key.public_key(),
            PROFILES["smime"],
            email="a@example.org",
        )
    with pytest.raises(KeyMismatch):
        ca.issue_certificate(
            rsa_chain.root_key,
            rsa_chain.issuing,
            rsa_chain.leaf_key.public_key(),
            PROFILES["smime"],
            email="a@example.org",
        )


# --- end-entity certificates --------------------------------------------------------------------


def crl_urls(cert) -> list[str]:
    points = ext(cert, x509.CRLDistributionPoints).value
    return [name.value for point in points for name in point.full_name]


EXPECTED_USAGE = {
    # profile: (digital_signature, content_commitment, encryption bit)
    "smime": (True, False, True),
    "smime-encryption": (False, False, True),
    "smime-signing": (True, True, False),
    "client-auth": (True, False, False),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_leaf_extensions_follow_the_profile(chain, profile):
    leaf = chain.issue(profile)
    leaf.verify_directly_issued_by(chain.issuing)

    constraints = ext(leaf, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca

    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical
    signature, commitment, encryption = EXPECTED_USAGE[profile]
    is_ec = isinstance(chain.leaf_key, ec.EllipticCurvePrivateKey)
    assert usage.value.digital_signature is signature
    assert usage.value.content_commitment is commitment
    assert usage.value.key_encipherment is (encryption and not is_ec)
    assert usage.value.key_agreement is (encryption and is_ec)
    assert not usage.value.data_encipherment
    assert not usage.value.key_cert_sign and not usage.value.crl_sign

    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert not eku.critical
    expected_eku = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if profile == "client-auth"
        else [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    )
    assert list(eku.value) == expected_eku

    assert ext(leaf, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(chain.leaf_key.public_key())
    )
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(chain.issuing, x509.SubjectKeyIdentifier).value.digest
    assert crl_urls(leaf) == [CRL_URL]


def test_leaf_names_serial_and_validity(rsa_chain):
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    leaf = rsa_chain.issue(
        email="Alice@Example.org",
        common_name="Alice Example",
        extra_emails=["alice@example.org", "a.example@example.org"],
        now=now,
    )
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice Example")])
    assert leaf.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) == []
    assert leaf.issuer == rsa_chain.issuing.subject
    san = ext(leaf, x509.SubjectAlternativeName)
    assert not san.critical
    # Repeats differing only in case are dropped; the first spelling wins.
    assert san.value.get_values_for_type(x509.RFC822Name) == [
        "Alice@Example.org",
        "a.example@example.org",
    ]
    assert 0 < leaf.serial_number < 2**159
    assert leaf.serial_number != rsa_chain.issue().serial_number
    assert leaf.not_valid_before_utc == now - datetime.timedelta(minutes=5)
    assert leaf.not_valid_after_utc == now + datetime.timedelta(days=365)


def test_common_name_defaults_to_the_email(rsa_chain):
    leaf = rsa_chain.issue(email="bob@example.org")
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob@example.org"


def test_an_address_too_long_for_a_cn_gets_an_empty_subject_and_a_critical_san(rsa_chain, tmp_path):
    email = "a" * 60 + "@example.org"
    leaf = rsa_chain.issue(email=email)
    assert len(leaf.subject) == 0
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.RFC822Name) == [email]
    assert_verifies(openssl_verify(tmp_path, rsa_chain, leaf, "-purpose", "smimesign"))


def test_given_serial_and_no_crl_url(rsa_chain):
    leaf = rsa_chain.issue(serial=4242, crl_url=None)
    assert leaf.serial_number == 4242
    with pytest.raises(x509.ExtensionNotFound):
        ext(leaf, x509.CRLDistributionPoints)


@pytest.mark.parametrize("serial", [0, -1, 2**159])
def test_bad_serials_are_refused(rsa_chain, serial):
    with pytest.raises(InvalidInput, match="serial"):
        rsa_chain.issue(serial=serial)


@pytest.mark.parametrize(
    "email", ["", "alice", "@example.org", "alice@", "al ice@example.org", "ä@example.org"]
)
def test_bad_emails_are_refused(rsa_chain, email):
    with pytest.raises(InvalidInput, match="Email"):
        rsa_chain.issue(email=email)


def test_bad_crl_url_and_names_are_refused(rsa_chain):
    with pytest.raises(InvalidInput, match="CRL URL"):
        rsa_chain.issue(crl_url="/crl/acme/issuing.crl")
    with pytest.raises(InvalidInput, match="64"):
        rsa_chain.issue(common_name="x" * 65)
    with pytest.raises(InvalidInput, match="64"):
        ca.build_root(pool_key("ec256"), "")


def test_validity_is_clipped_to_the_ca(ec_chain):
    near_end = ec_chain.issuing.not_valid_after_utc - datetime.timedelta(days=10)
    leaf = ec_chain.issue(now=near_end)
    assert leaf.not_valid_after_utc == ec_chain.issuing.not_valid_after_utc

    # Nor does it start before the CA does.
    ca_start = ec_chain.issuing.not_valid_before_utc
    early = ec_chain.issue(now=ca_start + datetime.timedelta(minutes=1))
    assert early.not_valid_before_utc == ca_start


def test_an_expired_ca_issues_nothing(ec_chain):
    after = ec_chain.issuing.not_valid_after_utc
    with pytest.raises(CaInvalid, match="expired"):
        ec_chain.issue(now=after)


def test_naive_datetimes_are_a_programming_error(ec_chain):
    with pytest.raises(ValueError, match="timezone"):
        ec_chain.issue(now=datetime.datetime(2030, 1, 1))


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("key_name", ["ec521", "ed25519"])
def test_profiles_refuse_key_types_they_do_not_list(rsa_chain, profile, key_name):
    with pytest.raises(KeyTypeNotAllowed, match=profile):
        rsa_chain.issue(profile, public_key=pool_key(key_name).public_key())


def test_a_profile_refuses_a_key_type_it_does_not_allow(rsa_chain, ec_chain):
    ec_only = Profile(
        name="ec-only",
        purpose="test",
        validity_days=30,
        allowed_key_types=frozenset({KeyType.EC256}),
        escrow=True,
        extended_key_usages=(ExtendedKeyUsageOID.EMAIL_PROTECTION,),
        signing=True,
        encryption=False,
    )
    issue = functools.partial(
        ca.issue_certificate,
        rsa_chain.issuing_key,
        rsa_chain.issuing,
        profile=ec_only,
        email="a@example.org",
    )
    assert issue(ec_chain.leaf_key.public_key()).not_valid_after_utc
    with pytest.raises(KeyTypeNotAllowed, match="ec256"):
        issue(rsa_chain.leaf_key.public_key())
    with pytest.raises(KeyTypeNotAllowed):
        issue(pool_key("ec384").public_key())


# --- CSRs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["rsa2048-4", "ec256", "ec384"])
def test_csr_round_trip(rsa_chain, key_name):
    key = pool_key(key_name)
    csr = ca.build_csr(key, "carol@example.org", common_name="Carol")
    for data in (pem(csr), csr.public_bytes(serialization.Encoding.DER)):
        loaded = ca.load_csr(data)
        ca.check_csr(loaded)
        assert loaded.public_key() == key.public_key()
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.RFC822Name) == ["carol@example.org"]
    cert = rsa_chain.issue(public_key=csr.public_key(), email="carol@example.org")
    assert keys.key_matches_certificate(key, cert)


def test_a_csr_with_a_tampered_signature_is_refused():
    der = bytearray(
        ca.build_csr(pool_key("rsa2048-4"), "carol@example.org").public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # the last byte of the DER is the last byte of the RSA signature
    csr = ca.load_csr(bytes(der))
    with pytest.raises(CsrInvalid, match="signature"):
        ca.check_csr(csr)


def test_a_csr_signed_by_another_key_is_refused():
    other = ec.generate_private_key(ec.SECP256R1())
    honest = ca.build_csr(pool_key("ec256"), "carol@example.org")
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(honest.subject)
        .sign(other, hashes.SHA256())
    )
    # Splice the honest public key into the forged request: the signature no longer matches it.
    forged_der = forged.public_bytes(serialization.Encoding.DER)
    spki_other = keys.spki_der(other.public_key())
    spliced = forged_der.replace(spki_other, keys.spki_der(pool_key("ec256").public_key()))
    assert spliced != forged_der
    with pytest.raises(CsrInvalid, match="signature"):
        ca.check_csr(ca.load_csr(spliced))


@pytest.mark.parametrize("key_name", ["ec521", "ed25519"])
def test_a_csr_with_a_key_type_we_do_not_certify_is_refused(key_name):
    csr = ca.build_csr(pool_key(key_name), "carol@example.org")
    with pytest.raises(CsrUnsupportedKey, match="rsa2048"):
        ca.check_csr(csr)
    assert issubclass(CsrUnsupportedKey, InvalidInput)


def test_unreadable_or_huge_csrs_are_refused():
    with pytest.raises(CsrInvalid):
        ca.load_csr(b"not a csr")
    with pytest.raises(CsrInvalid):
        ca.load_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    with pytest.raises(TooLarge):
        ca.load_csr(b"0" * (ca.MAX_CSR_BYTES + 1))


# --- CRLs ---------------------------------------------------------------------------------------


def make_crl(chain: Chain, revoked, crl_number=7) -> x509.CertificateRevocationList:
    now = datetime.datetime.now(UTC)
    return ca.build_crl(
        chain.issuing_key,
        chain.issuing,
        revoked,
        crl_number=crl_number,
        this_update=now - datetime.timedelta(minutes=1),
        next_update=now + datetime.timedelta(days=7),
    )


def test_crl_lists_the_revoked_certificate(chain, tmp_path):
    revoked_leaf = chain.issue()
    good_leaf = chain.issue()
    revoked_at = datetime.datetime.now(UTC).replace(microsecond=0)
    crl = make_crl(
        chain,
        [
            ca.RevokedEntry(revoked_leaf.serial_number, revoked_at, "keyCompromise"),
            ca.RevokedEntry(12345, revoked_at, "superseded"),
        ],
    )
    assert crl.is_signature_valid(chain.issuing.public_key())
    assert crl.issuer == chain.issuing.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(chain.issuing, x509.SubjectKeyIdentifier).value.digest
    entry = crl.get_revoked_certificate_by_serial_number(revoked_leaf.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(good_leaf.serial_number) is None

    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    text = subprocess.run(
        ["openssl", "crl", "-in", crl_path, "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    serial_hex = f"{revoked_leaf.serial_number:X}"
    serial_hex = serial_hex.zfill(len(serial_hex) + len(serial_hex) % 2)
    after_serial = text.split(f"Serial Number: {serial_hex}", 1)[1]
    assert "Key Compromise" in after_serial.split("Serial Number:", 1)[0]
    assert "Superseded" in text

    revoked = openssl_verify(tmp_path, chain, revoked_leaf, "-crl_check", "-CRLfile", crl_path)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    good = openssl_verify(tmp_path, chain, good_leaf, "-crl_check", "-CRLfile", crl_path)
    assert_verifies(good)


def test_certtool_verifies_the_crl(rsa_chain, tmp_path):
    crl = make_crl(rsa_chain, [])
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(pem(rsa_chain.issuing))
    result = subprocess.run(
        [
            "certtool",
            "--verify-crl",
            "--load-ca-certificate",
            tmp_path / "issuing.pem",
            "--infile",
            tmp_path / "crl.pem",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("reason", ca.REVOCATION_REASONS)
def test_every_reason_is_written_and_unspecified_is_left_out(rsa_chain, reason):
    crl = make_crl(rsa_chain, [ca.RevokedEntry(99, datetime.datetime.now(UTC), reason)])
    entry = crl.get_revoked_certificate_by_serial_number(99)
    if reason == "unspecified":
        # RFC 5280 5.3.1: absent rather than "unspecified".
        with pytest.raises(x509.ExtensionNotFound):
            entry.extensions.get_extension_for_class(x509.CRLReason)
    else:
        value = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert value.value == reason


def test_bad_crl_input_is_refused(rsa_chain):
    now = datetime.datetime.now(UTC)
    with pytest.raises(InvalidInput, match="revocation reason"):
        make_crl(rsa_chain, [ca.RevokedEntry(1, now, "cACompromise")])
    with pytest.raises(InvalidInput, match="once"):
        make_crl(rsa_chain, [ca.RevokedEntry(1, now, "superseded")] * 2)
    with pytest.raises(InvalidInput, match="CRL number"):
        make_crl(rsa_chain, [], crl_number=-1)
    with pytest.raises(InvalidInput, match="next update"):
        ca.build_crl(
            rsa_chain.issuing_key,
            rsa_chain.issuing,
            [],
            crl_number=1,
            this_update=now,
            next_update=now,
        )
    with pytest.raises(KeyMismatch):
        ca.build_crl(
            rsa_chain.root_key,
            rsa_chain.issuing,
            [],
            crl_number=1,
            this_update=now,
            next_update=now + datetime.timedelta(days=1),
        )
