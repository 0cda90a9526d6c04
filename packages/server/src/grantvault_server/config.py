"""Server configuration: one ``Settings`` object, read once at start-up from ``GRANTVAULT_*``.

Invalid configuration stops start-up with one message that says what to change
(:class:`ConfigError`), instead of a traceback or a half-working server.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

MASTER_KEY_BYTES = 32
MASTER_KEY_FILENAME = "master.key"


class ConfigError(Exception):
    """The configuration cannot work; the message says what to change."""


class SchemaOutOfDate(ConfigError):
    """The database schema is not the one this server needs (run ``grantvault db upgrade``)."""


class Settings(BaseSettings):
    """Every setting of the server. Environment variables carry the ``GRANTVAULT_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="GRANTVAULT_", extra="ignore")

    data_dir: Path = Field(
        default=Path("grantvault-data"),
        description="Folder for the embedded database and the generated master key.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: SQLite file `grantvault.db` in the data dir "
        "(`sqlite:///path.db`). PostgreSQL: `postgresql+asyncpg://user@host/db`.",
    )
    master_key: SecretStr | None = Field(
        default=None, description="Master key: 32 bytes, base64 (standard or URL-safe)."
    )
    master_key_file: Path | None = Field(
        default=None, description="File holding the master key (base64). Mode 0600 expected."
    )
    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8080, ge=1, le=65535, description="Listen port.")
    public_base_url: str | None = Field(
        default=None,
        description="URL users and SDKs reach the server at. Default: http://host:port.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "console"] = Field(default="json", description="Log line format.")
    allow_http_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destination hosts that may be called over plain http (for local testing, "
        'e.g. `127.0.0.1` or `["127.0.0.1", "localhost"]`). Everything else must be https.',
    )
    otel: bool = Field(
        default=False,
        description="Emit OpenTelemetry traces, metrics and logs through FastAPI's native "
        "instrumentation (configure the exporter with the standard OTEL_* variables).",
    )
    clock_skew_seconds: int = Field(
        default=300, ge=30, le=900, description="Allowed clock skew of signed requests."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted."
    )
    user_token_max_lifetime_seconds: int = Field(
        default=86_400,
        ge=300,
        le=2_592_000,
        description="Longest lifetime accepted for an end user's JWT (exp from now, and exp "
        "minus iat). Raise it only for an IdP configured to issue longer-lived tokens.",
    )
    # Abuse limits, per server process (decision 0009): 0 turns a limit off.
    rate_limit_window_seconds: int = Field(
        default=60, ge=1, le=3600, description="Window of every rate limit, in seconds."
    )
    rate_limit_per_key: int = Field(
        default=30_000, ge=0, description="Signed requests per window per API key (0: off)."
    )
    rate_limit_per_app: int = Field(
        default=60_000, ge=0, description="Signed requests per window per app, all keys (0: off)."
    )
    rate_limit_per_ip: int = Field(
        default=600,
        ge=0,
        description="Requests per window per client IP to the hosted pages, callbacks, IdP "
        "webhook and portal sign-in, plus /sdk requests that fail authentication (0: off).",
    )
    trusted_proxies: str = Field(
        default="127.0.0.1",
        description="Addresses or networks of reverse proxies whose X-Forwarded-For names the "
        "client (comma-separated, or `*`); every other peer's X-Forwarded-For is ignored. The "
        "per-IP rate limits and policies' ip_allow use the resulting address.",
    )
    keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="Idle keep-alive timeout of client connections; longer than the clients' "
        "pool expiry (httpx 5 s, alter-sdk and grantvault 30 s) so the client closes first.",
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=1000, description="PostgreSQL connections kept open per process."
    )
    db_max_overflow: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Extra PostgreSQL connections opened under load and closed on return.",
    )
    db_pool_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait for a pooled connection."
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Requests this process works on at once; more wait. Default: 4 x "
        "(db_pool_size + db_max_overflow).",
    )
    queue_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest wait for a slot when max_in_flight are busy; then 503 server_busy.",
    )
    portal_idle_minutes: int = Field(
        default=30,
        ge=1,
        le=1440,
        description="Minutes without a request after which an operator's portal session ends.",
    )
    portal_session_hours: int = Field(
        default=12,
        ge=1,
        le=720,
        description="Hours after sign-in after which a portal session ends, however active.",
    )
    operator_sso_issuer: str | None = Field(
        default=None,
        description="OIDC issuer through which operators sign in to the portal (single "
        "sign-on); unset: no single sign-on.",
    )
    operator_sso_client_id: str | None = Field(
        default=None, description="The portal's client id at the operators' OIDC provider."
    )
    operator_sso_client_secret: SecretStr | None = Field(
        default=None, description="The portal's client secret at the operators' OIDC provider."
    )
    operator_sso_client_secret_file: Path | None = Field(
        default=None, description="File holding that client secret (instead of the variable)."
    )
    operator_sso_groups_claim: str = Field(
        default="groups",
        min_length=1,
        description="ID-token claim listing the operator's groups at the IdP.",
    )
    operator_sso_role_map: dict[str, Literal["owner", "admin", "auditor"]] = Field(
        default_factory=dict,
        description="JSON object mapping an IdP group to an operator role, e.g. "
        '{"vault-owners": "owner", "vault-auditors": "auditor"}; the highest role wins.',
    )
    operator_sso_allowed_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only operators whose verified email is in one of these domains "
        "may sign in by single sign-on (comma-separated or a JSON list).",
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of extra CA certificates trusted for every outbound call "
        "(providers, OIDC discovery, JWKS, revocation), added to the public roots: for a "
        "GitHub Enterprise Server or IdP behind an internal CA. SSL_CERT_FILE is not read.",
    )

    @field_validator("allow_http_hosts", "operator_sso_allowed_domains", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("not a valid JSON list") from None
            return [h.strip() for h in text.split(",") if h.strip()]
        return value

    @field_validator("ca_bundle", "operator_sso_client_secret_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``GRANTVAULT_CA_BUNDLE=""`` (a variable cleared in a compose file) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def is_embedded(self) -> bool:
        """True when running on the embedded default (SQLite file in the data dir)."""
        return self.database_url is None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'grantvault.db'}"

    @property
    def effective_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = self.host.strip()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address in a URL (RFC 3986 §3.2.2)
        return f"http://{host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_max_in_flight(self) -> int:
        """Requests worked on at once: by default four per database connection, enough to
        keep every connection busy while the others parse, sign and answer."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return 4 * (self.db_pool_size + self.db_max_overflow)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one actionable :class:`ConfigError`."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        raise ConfigError(f"Invalid configuration: {exc}.") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"GRANTVAULT_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}.") from None
    url = settings.effective_database_url
    if not url.startswith(("sqlite:///", "sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        raise ConfigError(
            "GRANTVAULT_DATABASE_URL must start with `sqlite:///` (a file path follows) or "
            "`postgresql+asyncpg://`."
        )
    # Built here, once per start, so a bad bundle stops the server (and the CLI) with one
    # message instead of failing the first provider call; see ``outbound``.
    from grantvault_server import outbound

    try:
        outbound.configure(settings.ca_bundle)
    except outbound.CaBundleError as exc:
        raise ConfigError(f"Invalid configuration: {exc}") from None
    return settings


@dataclass(frozen=True)
class MasterKeySource:
    """Where the master key came from, for messages (never the key itself)."""

    key: bytes
    origin: str
    generated: bool = False


def decode_master_key(text: str, origin: str) -> bytes:
    """Decode a base64 master key and check its length."""
    cleaned = text.strip()
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != MASTER_KEY_BYTES:
        raise ConfigError(
            f"The master key from {origin} is not 32 bytes of base64. "
            "Generate one with `grantvault master-key generate`."
        )
    return raw


def generate_master_key_text() -> str:
    """A fresh random master key, base64 encoded."""
    return base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode()


def write_key_file(path: Path, text: str) -> None:
    """Write a key file atomically with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def resolve_master_key(settings: Settings, *, allow_generate: bool) -> MasterKeySource:
    """Find the master key: env, then file, then (embedded default only) the data-dir key file.

    Outside the embedded default there is no fallback: a vault that invented a key would
    write data nobody can read after a restart.
    """
    if settings.master_key is not None:
        return MasterKeySource(
            decode_master_key(settings.master_key.get_secret_value(), "GRANTVAULT_MASTER_KEY"),
            "GRANTVAULT_MASTER_KEY",
        )
    path = settings.master_key_file
    if path is None and settings.is_embedded:
        path = settings.data_dir / MASTER_KEY_FILENAME
    if path is None:
        raise ConfigError(
            "No master key. Set GRANTVAULT_MASTER_KEY (base64) or GRANTVAULT_MASTER_KEY_FILE; "
            "generate one with `grantvault master-key generate`."
        )
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"The master key file {path} is readable by other users (mode {mode:o}); "
                f"run `chmod 600 {path}`."
            )
        return MasterKeySource(decode_master_key(path.read_text(), str(path)), str(path))
    if settings.master_key_file is not None or not allow_generate:
        raise ConfigError(f"The master key file {path} does not exist.")
    if (settings.data_dir / "grantvault.db").exists():
        raise ConfigError(
            f"The database in {settings.data_dir} exists but its master key file {path} is "
            "missing. Restore the key file from your backup; a new key cannot read old data."
        )
    text = generate_master_key_text()
    write_key_file(path, text)
    return MasterKeySource(decode_master_key(text, str(path)), str(path), generated=True)
