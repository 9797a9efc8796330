"""Settings from the environment (``CERTVAULT_*``) and files."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CERTVAULT_", extra="ignore")

    home: Path = Path("./var")
    database_url: str | None = None
    master_key_provider: str = "file"
    master_key_dir: Path | None = None
    # The pkcs11 provider (docs/master-key.md): the PIN comes from a 0600 file or the
    # environment, never from a command line.
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token_label: str | None = None
    pkcs11_key_label: str = Field(default="certvault-master", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    pkcs11_pin_file: Path | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_mechanism: str = Field(default="auto", pattern="^(auto|gcm|key-wrap)$")
    audit_head_dir: Path | None = None
    # The audit witness for several nodes: a Redis the database's credentials cannot write.
    audit_witness_url: str | None = None
    # Keys under this prefix: installations sharing one Redis each need their own.
    audit_witness_prefix: str = Field(default="certvault:witness:", min_length=1, max_length=100)
    # Where clients reach certvault; unset, `certvault serve` derives it from the address it
    # serves, and other commands take http://127.0.0.1:<port>, as `make run` serves.
    public_url: str | None = None
    port: int = 8080

    # PKCS#12 written on release: the KDF is the one deliberate cost (DESIGN.md §10). The high
    # count protects a passphrase a person chose; the MAC is written with the same count.
    p12_kdf_rounds: int = Field(default=600_000, ge=1_000, le=10_000_000)
    # A passphrase certvault generated carries 120 random bits: stretching it protects nothing,
    # so its files get OpenSSL's default count (2,048), which keeps them quick to open.
    p12_generated_kdf_rounds: int = Field(default=2_048, ge=1_000, le=100_000)
    # Ceilings checked before any KDF of an uploaded file runs.
    p12_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    p12_max_iterations: int = Field(default=2_000_000, ge=1)
    # Entries per transaction of a bulk import. Each batch costs the same few statements, a
    # commit and a witness write whatever its size: 500 makes those a small share of the import.
    import_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Processes that read the files of a bulk import; 0: one per CPU core. Only an import of at
    # least import_pool_from files starts them (about a tenth of a second, and as much CPU time
    # per worker); a smaller one reads in-process, where a few hundred files take as long.
    import_workers: int = Field(default=0, ge=0, le=256)
    import_pool_from: int = Field(default=1_000, ge=2)

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "certvault@localhost"
    smtp_security: str = Field(default="none", pattern="^(none|starttls|tls)$")
    smtp_timeout: float = 10.0

    # Rate limits that hold across all workers: Redis when configured, else database counters.
    redis_url: str | None = None
    downloads_per_hour_admin: int = Field(default=60, ge=1)
    downloads_per_hour_token: int = Field(default=60, ge=1)
    downloads_per_hour_ip: int = Field(default=120, ge=1)
    logins_per_minute_ip: int = Field(default=30, ge=1)
    logins_per_minute_login: int = Field(default=10, ge=1)
    credential_cache_seconds: int = Field(default=60, ge=0, le=600)
    # Enrollment forms: one-time codes mailed, and code checks, per address and per client.
    enrollment_codes_per_hour_email: int = Field(default=5, ge=1)
    enrollment_codes_per_hour_ip: int = Field(default=30, ge=1)
    enrollment_checks_per_hour_email: int = Field(default=20, ge=1)
    enrollment_checks_per_hour_ip: int = Field(default=60, ge=1)
    # The Private Key Recovery Form (/kv/<account>): requests mail a code or ask an
    # administrator; checks try a code. Per address, per client address, and per account.
    recovery_requests_per_hour_email: int = Field(default=5, ge=1)
    recovery_requests_per_hour_ip: int = Field(default=20, ge=1)
    recovery_requests_per_hour_account: int = Field(default=500, ge=1)
    recovery_checks_per_hour_ip: int = Field(default=30, ge=1)
    recovery_checks_per_hour_account: int = Field(default=1000, ge=1)
    # Set-password links mailed to administrators: how long one works, and how many tries of a
    # link (good or not) one client address gets per hour.
    password_reset_minutes: int = Field(default=30, ge=5, le=1440)
    password_reset_checks_per_hour_ip: int = Field(default=30, ge=1)
    # MS agents: archival requests per agent token, and decryption failures (each one a probe
    # of the exchange key) per agent token and per account.
    agent_requests_per_minute_token: int = Field(default=600, ge=1)
    agent_failures_per_hour_token: int = Field(default=20, ge=1)
    agent_failures_per_hour_account: int = Field(default=100, ge=1)
    # A request at the form is answered no sooner than this, whatever the address: the work
    # for an address with keys (reading certificates, checking chains) takes a few ms more.
    recovery_answer_floor_ms: int = Field(default=120, ge=0, le=5000)

    trusted_proxies: str = ""  # comma-separated addresses whose X-Forwarded-For is believed
    metrics_token: SecretStr | None = None
    mail_send_interval: float = Field(default=10.0, gt=0)

    # argon2 parameters for administrator passwords (RFC 9106 low-memory profile by default).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    # argon2 runs at once per process, and how many more may wait briefly for a turn: each run
    # holds argon2_memory_kib, so a burst of guesses is refused (429 busy) instead of queued.
    password_checks_at_once: int = Field(default=2, ge=1, le=64)
    password_checks_waiting: int = Field(default=4, ge=0, le=256)

    def public_url_for(self, path: str) -> str:
        """The absolute URL of ``path`` (starting with "/") under CERTVAULT_PUBLIC_URL: what every
        URL certvault writes (CRL distribution points, form and Key Vault links) is built with."""
        assert path.startswith("/"), path
        return self.effective_public_url.rstrip("/") + path

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://127.0.0.1:{self.port}"

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def database_dir(self) -> Path:
        return self.home_dir / "db"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.database_dir / 'certvault.sqlite3'}"

    @property
    def effective_master_key_dir(self) -> Path:
        # Kept apart from the database directory so that no database backup carries it.
        return (self.master_key_dir or self.home_dir / "master-key").expanduser().resolve()

    @property
    def effective_audit_head_dir(self) -> Path:
        return (self.audit_head_dir or self.home_dir / "audit-heads").expanduser().resolve()


def load_settings() -> Settings:
    return Settings()
