"""Settings from environment variables ``HEALTH_*``, with embedded defaults.

With nothing set the service runs on one machine: a SQLite file under ``var/`` and the
in-process message bus. Production sets ``HEALTH_DATABASE_URL`` (PostgreSQL) and
``HEALTH_REDIS_URL``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from health.core.bus import bus_namespace

VAR_DIR = Path("var")


class IceServer(BaseModel):
    """One STUN or TURN server, as WebRTC's ``RTCIceServer`` dictionary."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALTH_", extra="ignore")

    #: SQLAlchemy async URL: ``sqlite+aiosqlite:///var/health.db`` or
    #: ``postgresql+asyncpg://user:pass@host/db``. ``postgresql://`` is accepted and given
    #: the asyncpg driver.
    database_url: str = f"sqlite+aiosqlite:///{VAR_DIR}/health.db"
    #: ``redis://host:6379/0``; unset means the in-process bus (one process only).
    redis_url: str | None = None
    #: This deployment's prefix on a Redis server that others share; unset: named after
    #: ``database_url`` (``health.core.bus.bus_namespace``). Set it when the processes of one
    #: deployment name their database differently (one by host name, one by address).
    bus_namespace: str | None = None
    #: The public base of the FHIR API, used in Location headers and Bundle links when set;
    #: otherwise taken from each request.
    fhir_base_url: str | None = None
    #: Largest page a search or history may return (``_count`` is capped to it).
    max_page_size: int = 1000
    default_page_size: int = 50
    #: Largest request body accepted, in bytes (a Bundle of a few thousand entries fits).
    max_body_bytes: int = 64 * 1024 * 1024

    #: Key that signs access tokens and session cookies (hex, 32+ bytes). Unset: a key made
    #: once and kept in ``var/secret.key``, shared by the workers of one machine.
    secret_key: str | None = None
    #: Issuer of access tokens: this service's public base URL.
    issuer: str = "https://fhir.yinchuan-health.cn"
    #: Lifetime of an access token and of a web session, in seconds.
    access_token_ttl: int = 15 * 60
    session_ttl: int = 8 * 60 * 60
    #: Lifetime of a refresh token (``offline_access``), in seconds.
    refresh_token_ttl: int = 7 * 24 * 60 * 60
    #: How long a specialist keeps seeing a shared record after the consult's Consent ends.
    consent_grace_seconds: int = 24 * 60 * 60
    #: Whether a read waits for its audit records to commit before it answers. Off: they
    #: commit with the audit writer's next batch (a crash can lose the batch in flight);
    #: writes, logins refused at the token endpoint and break-glass always commit with theirs.
    audit_reads_wait: bool = False
    #: How long a break-glass opening lasts.
    break_glass_seconds: int = 60 * 60
    #: Failed logins before an account is locked, and for how long.
    lockout_after: int = 5
    lockout_seconds: int = 15 * 60
    #: Login attempts allowed per client address per minute (all accounts together).
    logins_per_address_per_minute: int = 20
    #: Origins allowed to call the API from a browser (comma-separated); none by default.
    cors_origins: str = ""
    #: Send cookies with ``Secure`` (HTTPS only). Unset: always, except on plain HTTP to this
    #: machine's own loopback address (``make run``), where browsers would drop them.
    secure_cookies: bool | None = None

    #: STUN/TURN servers for consult video, a JSON list of ``RTCIceServer``:
    #: ``[{"urls": "turn:turn.example.cn:3478", "username": "u", "credential": "p"}]``.
    #: None by default: peers use their own addresses only, and nothing needs the internet.
    ice_servers: list[IceServer] = []
    #: coturn's ``static-auth-secret``: TURN servers listed without a username then get
    #: per-participant credentials that expire after ``turn_credential_seconds``.
    turn_secret: str | None = None
    turn_credential_seconds: int = 12 * 60 * 60
    #: The illness-poverty rule file (TOML); unset: the defaults shipped in health/poverty.
    poverty_rules: Path | None = None

    #: Who tells people about their consults: ``log`` (the service's log only: the embedded
    #: default, nothing leaves the machine), ``sms`` or ``wechat`` (an HTTP gateway).
    notifier: Literal["log", "sms", "wechat"] = "log"
    #: The gateway's URL (``sms``, ``wechat``): messages are POSTed there as JSON.
    notify_gateway_url: str | None = None
    #: Sent as ``Authorization: Bearer <token>`` to the gateway, when set.
    notify_gateway_token: str | None = None
    #: Outbox delivery: attempts before a message is a dead letter, the first retry's wait
    #: (doubling each time, up to the cap), and how often each worker looks for due messages.
    outbox_max_attempts: int = 10
    outbox_retry_base_seconds: float = 2.0
    outbox_retry_max_seconds: float = 3600.0
    outbox_poll_seconds: float = 1.0
    #: How long a worker holds a message it is delivering; past it, another worker may take
    #: the message over (the holder died). Keep it above the slowest receiver's timeout.
    outbox_lease_seconds: float = 60.0
    #: Whether ``health serve`` delivers the outbox itself (the embedded default); production
    #: sets it false and runs ``health worker`` processes instead.
    deliver_in_serve: bool = True

    #: The poverty household registry's endpoint for illness-poverty flag changes (建档立卡 /
    #: 防返贫监测 system); unset: the changes wait in the outbox (and ``health registry
    #: export`` writes them as files).
    registry_url: str | None = None
    #: Signs every delivery (HMAC-SHA256 over timestamp and body, ``X-Signature``).
    registry_secret: str | None = None
    #: Seconds to wait for the registry's answer before trying again later.
    registry_timeout_seconds: float = 10.0

    # Consult media on weak links, recording and files shared in calls (consult.quality,
    # consult.recording, consult.shared_files).
    #: Most a participant may send / receive, kbit/s, by role (``"*"``: everyone else), as
    #: JSON: ``{"village_doctor": 500, "*": 1500}``. The village uplink is the constraint.
    consult_send_kbps: dict[str, int] = {"village_doctor": 500, "*": 1500}
    consult_receive_kbps: dict[str, int] = {"village_doctor": 1200, "*": 4000}
    #: Loss (%) either way at which a participant's call goes audio only, and at or under
    #: which (for ``consult_recover_seconds``) video comes back.
    consult_audio_only_loss_percent: float = 5.0
    consult_video_loss_percent: float = 2.0
    #: A bandwidth estimate under this (kbit/s) also means audio only.
    consult_min_video_kbps: int = 150
    consult_recover_seconds: float = 10.0
    #: No packet from a participant for this long: their link dropped ("reconnecting").
    consult_stall_seconds: float = 4.0
    #: How long a dropped participant's place is kept for them to reconnect.
    consult_reconnect_seconds: float = 60.0
    #: Where call recordings are written (every worker of a host must see the same folder).
    consult_recording_dir: Path = VAR_DIR / "recordings"
    #: Largest image or PDF shared in a call.
    consult_max_file_bytes: int = 8 * 1024 * 1024
    #: A room's owner renews its lease on the bus every third of this; a worker that dies
    #: leaves its rooms to another worker this long after.
    consult_room_lease_seconds: float = 15.0

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.split(":///", 1)[1]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def bus_prefix(self) -> str:
        """The namespace this deployment's processes use on the bus."""
        return bus_namespace(self.database_url, self.bus_namespace)


@cache
def get_settings() -> Settings:
    return Settings()
