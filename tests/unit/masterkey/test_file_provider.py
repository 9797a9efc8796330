"""The file master key: modes, exclusive creation, refusal of readable files, wrap/unwrap."""

from __future__ import annotations

import os
import stat

import pytest

from certvault.errors import SealBroken
from certvault.masterkey.file import (
    FileMasterKeyProvider,
    MasterKeyExists,
    MasterKeyExposed,
    MasterKeyMissing,
)
from certvault.masterkey.shares import SharesInvalid, combine_shares, split_secret


def test_created_with_private_modes(tmp_path):
    d = tmp_path / "mk"
    p = FileMasterKeyProvider.create(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "master-v1.key").stat().st_mode) == 0o600
    assert (d / "master-v1.key").stat().st_size == 32
    assert p.version == 1


def test_never_overwrites(tmp_path):
    d = tmp_path / "mk"
    FileMasterKeyProvider.create(d)
    before = (d / "master-v1.key").read_bytes()
    with pytest.raises(MasterKeyExists):
        FileMasterKeyProvider.create(d)
    assert (d / "master-v1.key").read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_a_key_file_others_can_read(tmp_path, mode):
    d = tmp_path / "mk"
    FileMasterKeyProvider.create(d)
    os.chmod(d / "master-v1.key", mode)
    p = FileMasterKeyProvider(d)
    with pytest.raises(MasterKeyExposed):
        p.wrap(b"x", b"aad")
    assert not p.is_available()


def test_refuses_an_open_directory(tmp_path):
    d = tmp_path / "mk"
    FileMasterKeyProvider.create(d)
    os.chmod(d, 0o755)
    with pytest.raises(MasterKeyExposed):
        FileMasterKeyProvider(d).wrap(b"x", b"aad")


def test_refuses_a_symlinked_key(tmp_path):
    d = tmp_path / "mk"
    FileMasterKeyProvider.create(d)
    real = tmp_path / "elsewhere.key"
    os.rename(d / "master-v1.key", real)
    os.symlink(real, d / "master-v1.key")
    with pytest.raises(MasterKeyExposed):
        FileMasterKeyProvider(d).wrap(b"x", b"aad")


def test_missing_key(tmp_path):
    with pytest.raises(MasterKeyMissing):
        FileMasterKeyProvider(tmp_path / "none").wrap(b"x", b"aad")


def test_wrap_binds_associated_data_and_version(tmp_path):
    p = FileMasterKeyProvider.create(tmp_path / "mk")
    blob = p.wrap(b"secret-bytes", b"account:1")
    assert b"secret-bytes" not in blob
    assert p.unwrap(blob, b"account:1") == b"secret-bytes"
    with pytest.raises(SealBroken):
        p.unwrap(blob, b"account:2")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SealBroken):
        p.unwrap(tampered, b"account:1")
    other = FileMasterKeyProvider.create(tmp_path / "other")
    with pytest.raises(SealBroken):
        other.unwrap(blob, b"account:1")


def test_shares_rebuild_the_key_from_any_m(tmp_path):
    p = FileMasterKeyProvider.create(tmp_path / "mk")
    blob = p.wrap(b"data", b"aad")
    shares = p.export_shares(3, 5)
    assert len(shares) == 5
    for combo in ([0, 1, 2], [4, 2, 0], [1, 3, 4]):
        key = combine_shares([shares[i] for i in combo])
        assert FileMasterKeyProvider.opens(key, blob, b"aad")


def test_too_few_wrong_or_foreign_shares_are_refused():
    secret = os.urandom(32)
    shares = split_secret(secret, 2, 3)
    foreign = split_secret(os.urandom(32), 2, 3)
    with pytest.raises(SharesInvalid, match="2 different shares are needed"):
        combine_shares(shares[:1])
    with pytest.raises(SharesInvalid, match="2 different shares are needed"):
        combine_shares([shares[0], shares[0]])
    with pytest.raises(SharesInvalid, match="another set"):
        combine_shares([shares[0], foreign[1]])
    words = shares[1].split()
    words[10] = "academic" if words[10] != "academic" else "acid"
    with pytest.raises(SharesInvalid, match="Share 2 is not a valid share"):
        combine_shares([shares[0], " ".join(words)])
    with pytest.raises(SharesInvalid):
        combine_shares([])


def test_share_errors_never_contain_share_words():
    shares = split_secret(os.urandom(32), 2, 3)
    with pytest.raises(SharesInvalid) as exc:
        combine_shares(shares[:1])
    text = str(exc.value)
    assert not any(word in text.split() for word in shares[0].split()[4:])


def test_bad_thresholds():
    from certvault.errors import InvalidInput

    for m, n in ((0, 3), (4, 3), (1, 3), (2, 17)):
        with pytest.raises(InvalidInput):
            split_secret(os.urandom(32), m, n)


def test_master_key_may_not_live_inside_the_database_directory(tmp_path):
    from certvault.config import Settings
    from certvault.errors import ConfigurationError
    from certvault.services.kernel.ports import master_key_provider

    home = tmp_path / "home"
    with pytest.raises(ConfigurationError, match="must not be inside the database directory"):
        master_key_provider(Settings(home=home, master_key_dir=home / "db" / "keys"))
    assert master_key_provider(Settings(home=home)).name == "file"
