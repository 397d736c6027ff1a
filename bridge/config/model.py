"""The settings as the user writes them: sections and keys, types, bounds, defaults and what
each key does. pydantic validates them here and nowhere else; the description of every field
is what ``docs/reference/configuration.md`` is generated from.

The defaults come from the runtime sections in :mod:`bridge.settings`, so each is written
once; :mod:`bridge.config.loader` cuts a validated model into those sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bridge import settings as rt
from bridge.limits import MAX_IDENTIFIER_CHARS, MAX_POINTS_PER_REQUEST

_MQTT = rt.MqttSettings()
_TLS = rt.TlsSettings()
_SENDER = rt.SenderSettings()
_DELIVERY = rt.DeliverySettings()
_SPOOL = rt.SpoolSettings()
_DEAD = rt.DeadLetterSettings()
_COMMIT = rt.CommitSettings()
_MAPPING = rt.MappingSettings()
_HTTP = rt.HttpSettings()
_SPARKPLUG = rt.SparkplugSettings()
_TOP = rt.Settings()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsModel(_Section):
    """TLS to the broker."""

    enabled: bool = Field(_TLS.enabled, description="connect to the broker over TLS")
    ca_file: Path | None = Field(
        _TLS.ca_file, description="CA bundle that signed the broker's certificate (PEM)"
    )
    cert_file: Path | None = Field(
        _TLS.cert_file, description="client certificate for mutual TLS (with `key_file`)"
    )
    key_file: Path | None = Field(_TLS.key_file, description="the client certificate's key")
    verify: bool = Field(
        _TLS.verify,
        description="check the broker's certificate and name; `false` logs a warning at start",
    )


class MqttModel(_Section):
    """The broker connection and session."""

    host: str = Field(_MQTT.host, description="broker host name or IP address")
    port: int = Field(_MQTT.port, ge=1, le=65535, description="broker port (8883 for TLS)")
    client_id: str = Field(
        _MQTT.client_id,
        min_length=1,
        max_length=128,
        description="fixed client id: the broker keeps this id's session. Give each bridge its "
        "own; `{hostname}` is replaced by the host name",
    )
    share_group: str | None = Field(
        _MQTT.share_group,
        description="subscribe through the shared subscription `$share/<group>/<filter>`: the "
        "broker hands each message to one bridge of the group (see scaling out)",
    )
    protocol: Literal["v5", "v311"] = Field(
        _MQTT.protocol,
        description="`v5` (clean start off + Session Expiry) or `v311` (clean session off)",
    )
    session_expiry_s: int = Field(
        _MQTT.session_expiry_s,
        ge=60,
        le=0xFFFFFFFF,
        description="how long the broker keeps the session (and queued messages) while the "
        "bridge is away (v5)",
    )
    keepalive_s: int = Field(
        _MQTT.keepalive_s,
        ge=5,
        le=65535,
        description="MQTT keepalive; a hung broker is detected within about twice this",
    )
    receive_maximum: int = Field(
        _MQTT.receive_maximum,
        ge=1,
        le=65535,
        description="window of unacknowledged messages: sent as Receive Maximum (v5) and "
        "enforced by the bridge itself, which stops reading the socket when this many messages "
        "await their spool commit (some brokers overshoot it). Half of it waiting is committed "
        "at once",
    )
    connect_timeout_s: float = Field(
        _MQTT.connect_timeout_s, gt=0, description="wait this long for CONNACK"
    )
    reconnect_min_s: float = Field(
        _MQTT.reconnect_min_s, gt=0, description="reconnect backoff floor (full jitter, forever)"
    )
    reconnect_max_s: float = Field(_MQTT.reconnect_max_s, gt=0, description="reconnect backoff cap")
    username: str | None = Field(_MQTT.username, description="broker user name")
    password: SecretStr | None = Field(
        None, description="broker password (prefer `password_file`); never printed"
    )
    password_file: Path | None = Field(
        None,
        description="file holding the broker password (`chmod 600`, in a directory only its "
        "owner can write)",
    )
    tls: TlsModel = TlsModel()
    max_payload_bytes: int = Field(
        _MAPPING.max_payload_bytes,
        ge=16,
        le=256 * 1024 * 1024,
        description="larger payloads are dead-lettered as `too_large` before parsing; they "
        "stream past the bridge without being held in memory (it keeps their first 64 KiB)",
    )
    max_packet_size: int = Field(
        _MQTT.max_packet_size,
        ge=1024,
        le=268_435_455,
        description="sent as Maximum Packet Size in CONNECT (v5): the broker then drops larger "
        "packets for this bridge *silently*, so keep it far above `max_payload_bytes` (a "
        "payload between the two is received, counted and dead-lettered as `too_large`); a "
        "last guard against absurd packets, not the size cap. 268435455 (the MQTT maximum) "
        "sends no effective limit",
    )


class ApiModel(_Section):
    """The Metriqo API."""

    base_url: str = Field(
        _SENDER.base_url,
        description="the API's base URL; `http://` is refused unless the host is loopback or "
        "`api.allow_http` is true",
    )
    token: SecretStr | None = Field(
        None, description="the API token (prefer `token_file`); never printed"
    )
    token_file: Path | None = Field(
        None,
        description="file holding the API token (`chmod 600`, in a directory only its owner can "
        "write); re-read when it changes, so a rotated token is used without a restart",
    )
    body: Literal["array", "object"] = Field(
        _SENDER.body,
        description="`array`: one JSON array of objects per request; `object`: one object per "
        "request (for APIs that only take the single-object form)",
    )
    connect_timeout_s: float = Field(
        _SENDER.connect_timeout_s, gt=0, description="per request: connecting"
    )
    read_timeout_s: float = Field(
        _SENDER.read_timeout_s, gt=0, description="per request: the longest silence while reading"
    )
    total_timeout_s: float = Field(
        _SENDER.total_timeout_s, gt=0, description="per request: the whole exchange"
    )
    requests_per_minute: float = Field(
        _DELIVERY.requests_per_minute,
        gt=0,
        description="client-side pacing: requests are spaced so that no 60 s window holds more "
        "than this; with several bridges, set it to the organization's budget and "
        "`api.replicas` to their number",
    )
    concurrency: int = Field(_DELIVERY.concurrency, ge=1, le=64, description="requests in flight")
    retry_min_s: float = Field(
        _DELIVERY.retry_min_s, gt=0, description="retry backoff floor (full jitter, no limit)"
    )
    retry_max_s: float = Field(_DELIVERY.retry_max_s, gt=0, description="retry backoff cap")
    allow_http: bool = Field(
        False,
        description="allow plain `http://` to a host that is not loopback (the token then "
        "travels unencrypted)",
    )
    ca_file: Path | None = Field(
        _SENDER.ca_file, description="CA bundle for the API, instead of the system's"
    )
    replicas: int = Field(
        _DELIVERY.replicas,
        ge=1,
        le=1000,
        description="bridges sharing `api.requests_per_minute` (see scaling out)",
    )
    audit_queries_per_minute: float = Field(
        _DELIVERY.audit_queries_per_minute,
        ge=0,
        le=300,
        description="background `verify`: GET /metrics queries a minute that check one random "
        "minute of the audit of accepted points each, counted in "
        "`verify_checks_total{result}`; 0 (the default) turns it off. Within the metrics "
        "budget (300/min) shared with the `verify` command",
    )
    budget_split: Literal["static", "adaptive"] = Field(
        "adaptive" if _DELIVERY.adaptive else "static",
        description="`static`: each bridge paces at `requests_per_minute / replicas`; "
        "`adaptive`: each starts there and probes up to the whole budget, halving once per run "
        "of 429s",
    )


class BatchModel(_Section):
    """Packing points into requests."""

    max_points: int = Field(
        _DELIVERY.max_points,
        ge=1,
        le=MAX_POINTS_PER_REQUEST,
        description="data points per request (the API takes at most 100)",
    )
    linger_s: float = Field(
        _DELIVERY.linger_s,
        ge=0,
        le=300,
        description="a partial batch is sent when its oldest point has waited this long",
    )
    backlog_order: Literal["oldest-first", "live-first"] = Field(
        _DELIVERY.order,
        description="which waiting points go first: `oldest-first` (each device's points reach "
        "the API in time order) or `live-first` (the newest first, so dashboards stay current "
        "while a backlog drains with the capacity left over)",
    )


class SpoolModel(_Section):
    """The durable spool."""

    path: Path | None = Field(
        None,
        description="the SQLite file (default: `spool.db` in `state_dir`); a `.lock` file "
        "beside it keeps a second bridge out. A relative path is taken from the working "
        "directory and logged as an absolute path at start",
    )
    max_bytes: int = Field(
        _SPOOL.max_bytes, ge=1 << 20, description="the cap; what happens at it: `when_full`"
    )
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = Field(
        _SPOOL.synchronous,
        description="SQLite durability: `FULL` survives power loss, `NORMAL` only process crashes",
    )
    commit_max_messages: int = Field(
        _COMMIT.max_messages, ge=1, description="messages per group commit at most"
    )
    commit_interval_s: float = Field(
        _COMMIT.interval_s,
        ge=0,
        le=1.0,
        description="the most time between the beginnings of two commits while messages wait: "
        "a live flow waits for about 48 messages or `commit_spacing`, whichever is longer, but "
        "never longer than this; a quiet flow and a backlog are committed at once; 0 commits "
        "whenever anything waits",
    )
    commit_spacing: float = Field(
        _COMMIT.spacing,
        ge=1.0,
        le=100.0,
        description="a commit begins this many times the recent commits' duration after the "
        "previous one began (at most `commit_interval_s`): 1 begins it as soon as the previous "
        "one ended (classic group commit); larger values make fewer, larger commits, each an "
        "fsync and a few pages written, at some latency",
    )
    dedup_window_s: float = Field(
        _SPOOL.dedup_window_s,
        ge=0,
        description="how long ids of delivered points are remembered, to discard broker "
        "redeliveries",
    )
    when_full: Literal["back-pressure", "drop-oldest"] = Field(
        _SPOOL.when_full,
        description="at the cap: `back-pressure` withholds MQTT acknowledgements (the broker "
        "keeps the messages); `drop-oldest` deletes the oldest waiting points (those of a device "
        "over its fair share first), counted in `points_dropped_total{reason}`",
    )
    fair_share: bool = Field(
        _SPOOL.fair_share,
        description="near the cap, keep one device from taking the room of the others: a "
        "device over its share of the spool is held back (`back-pressure`) or loses its own "
        "oldest points first (`drop-oldest`), and a backlog is sent fairly across devices",
    )
    fair_share_at: float = Field(
        _SPOOL.fair_share_at,
        gt=0,
        le=1,
        description="fraction of `max_bytes` from which a device over its share is held back "
        "(`back-pressure`); the room above it stays for the devices within their share",
    )
    held_max_bytes: int | None = Field(
        _SPOOL.held_max_bytes,
        ge=0,
        description="room for held points, on top of `max_bytes` (default: a quarter of "
        "`max_bytes`); when it is used up the spool is full for every device",
    )
    audit_retention_s: float = Field(
        _SPOOL.audit_retention_s,
        ge=60,
        description="how long the audit of accepted points (count, sum, min, max per device, "
        "metric and minute) is kept for `verify`, counted from the minute of the points' "
        "timestamps",
    )
    audit_max_rows: int = Field(
        _SPOOL.audit_max_rows,
        ge=1,
        description="rows of that audit kept at most (about 100 bytes each, within `max_bytes`); "
        "beyond it the oldest minutes go first",
    )
    max_delivered_devices: int = Field(
        _SPOOL.max_delivered_devices,
        ge=1,
        description="devices kept in the spool's table of delivered devices (for `devices`); "
        "beyond it the least recently delivered are evicted and counted",
    )
    reserve_bytes: int = Field(
        _SPOOL.reserve_bytes,
        ge=0,
        description="disk kept free beside the spool and given back when the disk is full, so "
        "delivered points can still be deleted; 0: none. SQLite's write-ahead log is "
        "checkpointed every half of it (at most 16 MiB, at least 1 MiB): a larger reserve "
        "writes less per point",
    )


class DeadLettersModel(_Section):
    """The dead letters' own budget, apart from `spool.max_bytes`."""

    max_bytes: int = Field(
        _DEAD.max_bytes,
        ge=1 << 20,
        description="disk the dead letters may take in the spool file, on top of "
        "`spool.max_bytes` (which they never count toward); beyond it the oldest are pruned",
    )
    max_count: int = Field(
        _DEAD.max_count, ge=1, description="dead letters kept at most; beyond it the oldest go"
    )
    max_age_s: float = Field(
        _DEAD.max_age_s,
        ge=60,
        description="dead letters received longer ago than this are pruned, checked every second",
    )
    log_payload_bytes: int = Field(
        _DEAD.log_payload_bytes,
        ge=0,
        le=4096,
        description="show up to this many bytes of a dead-lettered payload in its log line, "
        "escaped; 0 (the default) keeps payloads out of the logs, as they can be sensitive",
    )


class MappingModel(_Section):
    """The mapping file."""

    file: Path = Field(_MAPPING.file, description="the mapping file")
    max_future_s: float = Field(
        _MAPPING.max_future_s,
        ge=0,
        description="reject timestamps further ahead of the receive time",
    )
    reload_interval_s: float = Field(
        _MAPPING.reload_interval_s,
        ge=0,
        description="how often the mapping file is checked for changes; 0: only on SIGHUP",
    )
    coalesce_grace_s: float = Field(
        _MAPPING.coalesce_grace_s,
        ge=0,
        description="how long after its end a coalescing window waits for late readings",
    )
    max_device_id_length: int = Field(
        _MAPPING.max_device_id_length,
        ge=1,
        le=MAX_IDENTIFIER_CHARS,
        description="longest device id sent, in characters (at most 256); a longer one (or one "
        "with control or bidi characters) is dead-lettered as `bad_device_id`",
    )
    max_metric_name_length: int = Field(
        _MAPPING.max_metric_name_length,
        ge=1,
        le=MAX_IDENTIFIER_CHARS,
        description="longest metric name sent, in characters (at most 256); a longer one (or one "
        "with control or bidi characters) is dropped as `bad_metric_name`, the message's other "
        "metrics are kept",
    )
    sparkplug_park_max_age_s: float = Field(
        _MAPPING.sparkplug_park_max_age_s,
        gt=0,
        description="how long a Sparkplug DATA message whose aliases no BIRTH defined yet waits "
        "for that BIRTH; then it is dead-lettered as `sparkplug_unknown_alias`",
    )
    sparkplug_park_max_messages: int = Field(
        _MAPPING.sparkplug_park_max_messages,
        ge=1,
        description="most Sparkplug DATA messages waiting for a BIRTH per edge node; beyond it "
        "the oldest is dead-lettered as `sparkplug_unknown_alias`",
    )
    sparkplug_park_max_bytes: int = Field(
        _MAPPING.sparkplug_park_max_bytes,
        ge=1024,
        description="most payload bytes of Sparkplug DATA messages waiting for a BIRTH per edge "
        "node; beyond it the oldest is dead-lettered as `sparkplug_unknown_alias`",
    )


class HttpModel(_Section):
    """The metrics and health endpoints."""

    enabled: bool = Field(
        _HTTP.enabled,
        description="serve `/metrics`, `/healthz`, `/readyz`, `/debug/unmatched`, "
        "`/debug/top-devices`",
    )
    host: str = Field(_HTTP.host, description="address to listen on")
    port: int = Field(_HTTP.port, ge=0, le=65535, description="port; 0 takes any free port")


class SparkplugModel(_Section):
    """Sparkplug B host mode: off by default (consumer mode: the bridge never publishes)."""

    host_id: str | None = Field(
        _SPARKPLUG.host_id,
        min_length=1,
        max_length=128,
        pattern=r"^[^/+#]+$",
        description="turns on the Sparkplug 3.0 host mode under this host id: the bridge "
        "publishes its retained `spBv1.0/STATE/<host_id>` birth after connecting (the death is "
        "its MQTT Will, and is published on a clean stop) and asks edge nodes for a rebirth "
        "(`Node Control/Rebirth` NCMD) when it sees an unknown alias or a seq gap. The broker "
        "must let the bridge publish there (docs/guide/sparkplug.md). Unset: consumer mode",
    )
    rebirth_interval_s: float = Field(
        _SPARKPLUG.rebirth_interval_s,
        ge=1,
        description="host mode: at most one rebirth request per edge node this often",
    )
    rebirth_max_per_minute: int = Field(
        _SPARKPLUG.rebirth_max_per_minute,
        ge=1,
        description="host mode: at most this many rebirth requests per minute across all edge "
        "nodes; those held back are counted (`sparkplug_rebirth_requests_held_total`)",
    )


class SettingsModel(_Section):
    """All settings."""

    mqtt: MqttModel = MqttModel()
    api: ApiModel = ApiModel()
    batch: BatchModel = BatchModel()
    spool: SpoolModel = SpoolModel()
    dead_letters: DeadLettersModel = DeadLettersModel()
    mapping: MappingModel = MappingModel()
    http: HttpModel = HttpModel()
    sparkplug: SparkplugModel = SparkplugModel()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        _TOP.log_level, description="`DEBUG`, `INFO`, `WARNING` or `ERROR`"
    )
    log_format: Literal["text", "json"] = Field(
        _TOP.log_format,
        description="`text` for a terminal or journald, `json` (one object per line) for log "
        "collectors; `LOG_FORMAT=json` also works",
    )
    state_dir: Path | None = Field(
        None,
        description="the state directory: the spool's default home, and the runtime file "
        "through which `health`, `backup` and `dead-letters` find the running bridge. Default: "
        "`/var/lib/metriqo-bridge` for root and in the container image, else "
        "`$XDG_STATE_HOME/metriqo-bridge` (`~/.local/state/metriqo-bridge`)",
    )
    log_progress_s: float = Field(
        _TOP.log_progress_s,
        ge=0,
        description="seconds between progress lines (received, delivered, waiting) at INFO; "
        "0 turns them off",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        _TOP.event_loop,
        description="`auto`: uvloop where it is installed (a dependency on Linux and macOS), "
        "else asyncio's own loop; `uvloop` (refused at start when it is not installed) or "
        "`asyncio` to choose",
    )
    stop_timeout_s: float = Field(
        _TOP.stop_timeout_s,
        gt=0,
        description="graceful-stop budget: delivering what waits after SIGTERM",
    )
