"""The ``file`` master-key provider: 32 random bytes per version in a 0600 file in a 0700 directory.

Safety rules follow certbot's ``safe_open``: the file is created with ``O_CREAT | O_EXCL`` and an
explicit mode, and files or directories that others can read are refused rather than fixed.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certvault.errors import ConfigurationError, SealBroken
from certvault.masterkey import FORMAT_FILE, HEADER

KEY_BYTES = 32
_FORMAT = FORMAT_FILE
_HEADER = HEADER  # format, master-key version
# Another process may add a version (rotation): keys on disk are read again after this long.
_RELOAD_SECONDS = 30.0
_NAME = re.compile(r"^master-v(\d+)\.key$")


class MasterKeyMissing(ConfigurationError):
    """No master key was found; run `certvault init`, or `certvault kek restore-shares`."""

    code = "master_key_missing"


class MasterKeyExposed(ConfigurationError):
    """The master key file or its directory can be read by others; fix its mode to 0600/0700."""

    code = "master_key_exposed"


class MasterKeyExists(ConfigurationError):
    """A master key already exists here; certvault never overwrites one."""

    code = "master_key_exists"


def _check_private(path: Path, *, directory: bool) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise MasterKeyExposed(f"{path} is a symbolic link; the master key must be a plain file.")
    if st.st_uid != os.geteuid():
        raise MasterKeyExposed(f"{path} belongs to another user.")
    if st.st_mode & 0o077:
        kind = "directory" if directory else "file"
        want = "0700" if directory else "0600"
        raise MasterKeyExposed(
            f"The master key {kind} {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"others may read it. Set it to {want}."
        )


def _wrap_with(key: bytes, version: int, data: bytes, aad: bytes) -> bytes:
    header = _HEADER.pack(_FORMAT, version)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(key).encrypt(nonce, data, header + aad)


def _unwrap_with(key: bytes, blob: bytes, aad: bytes) -> bytes:
    header, nonce, ct = blob[: _HEADER.size], blob[_HEADER.size : _HEADER.size + 12], blob[17:]
    try:
        return AESGCM(key).decrypt(nonce, ct, header + aad)
    except InvalidTag:
        raise SealBroken("A wrapped key failed authentication under the master key.") from None


def blob_version(blob: bytes) -> int:
    if len(blob) < _HEADER.size + 12 + 16:
        raise SealBroken("A wrapped key is truncated.")
    fmt, version = _HEADER.unpack(blob[: _HEADER.size])
    if fmt != _FORMAT:
        raise SealBroken("A wrapped key has an unknown format.")
    return int(version)


class FileMasterKeyProvider:
    name = "file"

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._keys: dict[int, bytes] | None = None
        self._loaded_at = 0.0

    # --- creation -----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> FileMasterKeyProvider:
        """Create the directory and a first master key; refuses if any master key exists."""
        return cls._install(directory, os.urandom(KEY_BYTES))

    @classmethod
    def install_restored(cls, directory: Path, key: bytes, version: int) -> FileMasterKeyProvider:
        """Write a master key rebuilt from shares; refuses if any master key exists."""
        if len(key) != KEY_BYTES:
            raise ConfigurationError("A restored master key must be 32 bytes.")
        return cls._install(directory, key, version)

    @staticmethod
    def opens(key: bytes, blob: bytes, aad: bytes) -> bool:
        """Whether ``key`` unwraps ``blob``: how restored shares are checked before install."""
        try:
            _unwrap_with(key, blob, aad)
        except SealBroken:
            return False
        return True

    @classmethod
    def _install(cls, directory: Path, key: bytes, version: int = 1) -> FileMasterKeyProvider:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(directory, directory=True)
        if cls(directory).versions_on_disk():
            raise MasterKeyExists()
        _write_key(directory, version, key)
        return cls(directory)

    # --- rotation -----------------------------------------------------------------------------

    def versions(self) -> list[int]:
        return self.versions_on_disk()

    def create_version(self) -> int:
        """Write ``master-v{N+1}.key`` (0600, O_EXCL); new wraps use it from now on."""
        _check_private(self._dir, directory=True)
        version = max(self._load()) + 1
        _write_key(self._dir, version, os.urandom(KEY_BYTES))
        self._keys = None
        return version

    def retire_version(self, version: int) -> None:
        """Delete ``master-v{version}.key``. Callers check first that no blob uses it and that
        new wraps do not."""
        keys = self._load()
        if version not in keys:
            keys = self._load(fresh=True)  # made by a rotation since this process read them
        if version not in keys:
            raise MasterKeyMissing(f"Master key version {version} is not here.")
        (self._dir / f"master-v{version}.key").unlink()
        _fsync_directory(self._dir)
        self._keys = None

    # --- loading ------------------------------------------------------------------------------

    def versions_on_disk(self) -> list[int]:
        if not self._dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self._dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _load(self, *, fresh: bool = False) -> dict[int, bytes]:
        stale = time.monotonic() - self._loaded_at > _RELOAD_SECONDS
        if self._keys is not None and not fresh and not stale:
            return self._keys
        if not self._dir.is_dir():
            raise MasterKeyMissing()
        _check_private(self._dir, directory=True)
        keys: dict[int, bytes] = {}
        for version in self.versions_on_disk():
            path = self._dir / f"master-v{version}.key"
            _check_private(path, directory=False)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                data = os.read(fd, KEY_BYTES + 1)
            finally:
                os.close(fd)
            if len(data) != KEY_BYTES:
                raise ConfigurationError(f"The master key file {path} is damaged (wrong length).")
            keys[version] = data
        if not keys:
            raise MasterKeyMissing()
        self._keys, self._loaded_at = keys, time.monotonic()
        return keys

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def version(self) -> int:
        return max(self._load())

    def wrap(self, data: bytes, aad: bytes) -> bytes:
        keys = self._load()
        version = max(keys)
        return _wrap_with(keys[version], version, data, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        version = blob_version(blob)
        keys = self._load()
        if version not in keys:
            raise MasterKeyMissing(f"Master key version {version} is not available.")
        return _unwrap_with(keys[version], blob, aad)

    def is_available(self) -> bool:
        try:
            self._load()
        except ConfigurationError:
            return False
        return True

    def export_shares(self, threshold: int, count: int) -> list[str]:
        """Split the master key into ``count`` SLIP-39 shares; any ``threshold`` rebuild it."""
        from certvault.masterkey.shares import split_secret

        keys = self._load()
        return split_secret(keys[max(keys)], threshold, count)


def _write_key(directory: Path, version: int, key: bytes) -> None:
    path = directory / f"master-v{version}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise MasterKeyExists() from None
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
