"""The bridge's settings: one frozen section per component, built once by the loader.

:func:`bridge.config.loader.load_settings` reads the layers (defaults < file < environment <
flags), validates them and cuts them into these sections; each component receives only its own
(the MQTT source its :class:`MqttSettings`, the spool its :class:`SpoolSettings`, and so on) and
never sees the whole object or a pydantic type. The user-facing keys (``api.*``, ``batch.*`` …)
are those of the loader's model; how they map onto the sections is written there.

The defaults here are the defaults: the loader's model takes its own from these classes, so
each is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.limits import MAX_POINTS_PER_REQUEST, TELEMETRY_REQUESTS_PER_MINUTE

Protocol = Literal["v5", "v311"]
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]
WhenFull = Literal["back-pressure", "drop-oldest"]
BacklogOrder = Literal["oldest-first", "live-first"]
BodyShape = Literal["array", "object"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
EventLoop = Literal["auto", "uvloop", "asyncio"]


class Secret:
    """A token or password: its text is only given out by :meth:`reveal`, so no repr, log line
    or dump shows it by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the broker (:mod:`bridge.mqtt.client`)."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The broker connection and session (:class:`bridge.mqtt.source.MqttSource`)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "metriqo-bridge"
    share_group: str | None = None
    protocol: Protocol = "v5"
    session_expiry_s: int = 7 * 86400
    keepalive_s: int = 30
    receive_maximum: int = 1000
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    username: str | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    max_payload_bytes: int = 65536  # larger payloads stream past the wire (mqtt.max_payload_bytes)
    max_packet_size: int = 64 * 1024 * 1024  # v5 Maximum Packet Size: a last guard, far above


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """The HTTP client (:class:`bridge.sender.Sender`)."""

    base_url: str = "https://metriqo.net/api/v2"
    body: BodyShape = "array"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 60.0
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Batching, pacing and retries (:class:`bridge.delivery.Delivery`)."""

    max_points: int = MAX_POINTS_PER_REQUEST
    linger_s: float = 1.0
    order: BacklogOrder = "oldest-first"
    concurrency: int = 4
    requests_per_minute: float = float(TELEMETRY_REQUESTS_PER_MINUTE)
    replicas: int = 1
    adaptive: bool = False  # api.budget_split: adaptive
    retry_min_s: float = 0.5
    retry_max_s: float = 60.0
    single_object: bool = False  # api.body: object
    audit_queries_per_minute: float = 0.0  # api.audit_queries_per_minute; 0: off (audit.py)


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The durable spool (:class:`bridge.spool.store.Spool`)."""

    path: Path = Path("spool.db")  # the loader makes it absolute, inside state_dir by default
    max_bytes: int = 1 << 30
    synchronous: Synchronous = "FULL"
    dedup_window_s: float = 900.0
    when_full: WhenFull = "back-pressure"
    reserve_bytes: int = 32 << 20  # and the WAL is checkpointed at half of it (spool/file.py)
    fair_share: bool = True  # spool/fairshare.py
    fair_share_at: float = 0.8  # of max_bytes
    held_max_bytes: int | None = None  # None: a quarter of max_bytes
    audit_retention_s: float = 86400.0  # spool/audit.py: accepted points kept for verify
    audit_max_rows: int = 500_000  # spool/audit.py: about 100 bytes each
    max_delivered_devices: int = 100_000  # spool/audit.py: devices kept for the devices report

    @property
    def held_budget(self) -> int:
        """Bytes the held points of devices over their fair share may take beyond max_bytes."""
        return self.max_bytes // 4 if self.held_max_bytes is None else self.held_max_bytes


@dataclass(frozen=True, slots=True)
class DeadLetterSettings:
    """The dead letters' own budget in the spool file, and what their log lines show
    (:class:`bridge.spool.deadletters.DeadLetters`, :mod:`bridge.dead_letter_log`).

    They are kept apart from ``SpoolSettings.max_bytes`` (the cap on points waiting for
    delivery), so bad messages can never make the bridge withhold acknowledgements for good
    ones: the file holds at most ``max_bytes`` of waiting data plus this ``max_bytes``.
    """

    max_bytes: int = 64 << 20
    max_count: int = 100_000
    max_age_s: float = 14 * 86400.0
    log_payload_bytes: int = 0  # 0: payloads never appear in the logs


@dataclass(frozen=True, slots=True)
class CommitSettings:
    """The group commit (:class:`bridge.committer.Committer`).

    A commit begins when about 48 messages have come at the flow's rate or ``spacing`` times the
    recent commits' duration after the previous one began, whichever is later, and at most
    ``interval_s`` after it (:mod:`bridge.commit_pacing`). ``backlog`` is half the receive
    window: that many messages waiting are committed at once.
    """

    max_messages: int = 5000
    interval_s: float = 0.05
    spacing: float = 3.0
    backlog: int = 500


@dataclass(frozen=True, slots=True)
class MappingSettings:
    """The mapping file and the mapper's limits (:mod:`bridge.reload`, the mapper)."""

    file: Path = Path("topic-mappings.yaml")
    max_payload_bytes: int = 65536  # mqtt.max_payload_bytes
    max_future_s: float = 86400.0
    reload_interval_s: float = 2.0
    coalesce_grace_s: float = 2.0
    max_device_id_length: int = 128  # characters; bridge/mapping/identifiers.py
    max_metric_name_length: int = 128
    sparkplug_park_max_age_s: float = 600.0  # bridge/sparkplug/parking.py
    sparkplug_park_max_messages: int = 10_000  # per edge node
    sparkplug_park_max_bytes: int = 16 * 1024 * 1024  # per edge node


@dataclass(frozen=True, slots=True)
class SparkplugSettings:
    """Sparkplug B host mode (:mod:`bridge.mqtt.host`): off (consumer mode, the bridge never
    publishes) while ``host_id`` is None."""

    host_id: str | None = None
    rebirth_interval_s: float = 30.0  # per edge node: at most one rebirth request this often
    rebirth_max_per_minute: int = 20  # across all edge nodes

    @property
    def host_mode(self) -> bool:
        return self.host_id is not None


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The metrics and health endpoints (:class:`bridge.status.StatusServer`)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9470


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the API token and the broker password come from (:mod:`bridge.config.secrets`).

    ``origins``: where each of these keys was set (``bridge.yaml:4``, ``environment variable
    METRIQO_BRIDGE_TOKEN_FILE``), for errors that name the setting instead of its value.
    """

    api_token: Secret | None = None
    api_token_file: Path | None = None
    mqtt_password: Secret | None = None
    mqtt_password_file: Path | None = None
    origins: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every section, as the loader cut them.

    ``effective`` is the merged configuration in the user's own keys with every secret
    replaced, as ``run --print-config`` shows it.
    """

    mqtt: MqttSettings = field(default_factory=MqttSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    dead_letters: DeadLetterSettings = field(default_factory=DeadLetterSettings)
    commit: CommitSettings = field(default_factory=CommitSettings)
    mapping: MappingSettings = field(default_factory=MappingSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sparkplug: SparkplugSettings = field(default_factory=SparkplugSettings)
    credentials: Credentials = field(default_factory=Credentials)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"
    stop_timeout_s: float = 10.0
    # Absolute once loaded: the spool's default home and the runtime files (bridge/state.py).
    state_dir: Path = Path("/var/lib/metriqo-bridge")
    log_progress_s: float = 60.0  # 0: no progress lines (bridge/progress.py)
    event_loop: EventLoop = "auto"  # bridge/event_loop.py
    effective: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Dotted key -> where the user set it (file:line, variable, flag); absent: the default.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
