"""The bridge's Prometheus metrics: one prefix, base units, ``_total`` counters, bounded labels.

Labels are rule names (bounded by the mapping file), reasons (a fixed vocabulary) and status
classes — never a topic or device id. One :class:`BridgeMetrics` per bridge, on its own registry,
so tests and embedded uses never share state.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from bridge import __version__
from bridge.spool.dlbudget import PRUNE_REASONS

PREFIX = "metriqo_bridge_"


class BatchHistogram(Histogram):
    """A histogram that also takes many values in one call (:meth:`observe_many`).

    ``Histogram.observe`` takes a lock and walks the buckets for every value (0.64 us);
    the delivery lag is observed for every record of every accepted request, 25 of them a
    request in a backlog. :meth:`observe_many` counts a request's values per bucket first and
    adds each bucket's count once (0.14 us a value). It works on ``Histogram``'s own bucket
    and sum values (not its public API): tests/unit/test_metrics.py checks that the exposition
    is the one ``observe`` gives, so a prometheus-client that changes them fails there, not in
    silence.
    """

    def observe_many(self, values: Iterable[float]) -> None:
        """``observe`` every value, in one pass (unlabelled histograms only)."""
        bounds = self._upper_bounds  # ascending, +Inf last: every value finds a bucket
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe
            total += value
        self._sum.inc(total)
        for bucket, n in zip(self._buckets, counts, strict=True):
            if n:
                bucket.inc(n)


# Every reason a dead letter can carry. Their series exist at 0 from the start, so dashboards
# and `increase()` alerts see the first dead letter of a kind as a change, not a new series.
DEAD_LETTER_REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "missing_timestamp",
    "bad_timestamp",
    "boolean_value",
    "not_numeric",
    "not_boolean",
    "not_text",
    "unmapped_value",
    "non_finite",
    "conversion_failed",
    "out_of_range",
    "too_large",
    "no_metrics",
    "not_a_list",
    "duplicate_reading",
    "bad_device_id",
    "bad_metric_name",
    "unmatched",
    "api_rejected",
    "bad_sparkplug",  # a Sparkplug B payload or topic that cannot be decoded (bridge.sparkplug)
)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
DROP_REASONS = ("spool_full", "over_share")
RELOAD_RESULTS = ("success", "failure")
TOKEN_UNUSABLE_REASONS = ("reload", "send")

# What an operator should make of each metric when it moves, beside its HELP text: the metrics
# reference (docs/reference/metrics.md) is generated from the registry and these notes, and a
# test keeps every note's name an exported metric.
OPERATOR_NOTES: dict[str, str] = {
    "timestamps_replaced": "a device clock is off; its points carry the receive time",
    "mapping_failures": "fix the device or the rule; the payloads are in the dead letters",
    "duplicate_points_suppressed": "normal after reconnects",
    "spool_points": "growing means the API is slower than intake, or unreachable",
    "spool_oldest_point_age_seconds": "the delivery lag right now",
    "spool_corrupt_moved_aside": "the readings in the moved file were not sent: keep the file "
    "(`<spool>.corrupt-<time>`) and investigate",
    "points_dropped": "only with `spool.when_full: drop-oldest`; anything above 0 is lost data: "
    "raise `spool.max_bytes` or fix delivery; `over_share`: from a device over its fair share "
    "(`GET /debug/top-devices` names it)",
    "points_held_back": "the saving of `deadband` rules: values that did not move; a rule "
    "that holds back nearly everything may have too wide a band",
    "spool_points_held": "a device over its fair share near the cap; released as delivery "
    "frees room (`GET /debug/top-devices` names it)",
    "spool_devices_over_share": "above 0: one device sends far more than the others while the "
    "spool nears its cap",
    "mqtt_connects": "rising fast means a flapping link",
    "mqtt_puback_fences": "rises while messages are acknowledged in a live flow; flat for most "
    "of a backlog drain is expected (mosquitto 2.0 answers the PINGREQ behind every message it "
    "queued ahead of it); flat in a live flow means the broker reads no PUBACK (their receive "
    "times stay in the spool's `unacked` table)",
    "mqtt_session_lost": "messages queued at the broker while the bridge was away may be gone: "
    "check the broker's persistence and `persistent_client_expiration`",
    "batch_points": "near 100 while a backlog drains",
    "spool_commit_messages": "large groups while a backlog drains, small ones in a quiet "
    "live flow: grouping follows the load; groups of one in a busy flow mean each message "
    "pays its own fsync",
    "spool_commit_duration_seconds": "a slow disk shows here first (and in publish-to-API "
    "latency); seconds per commit mean the spool's storage cannot keep up",
    "config_reloads": "a failure means the running rules are older than the file: fix the file "
    "(the log names line and key)",
    "api_pacing_rate_requests_per_second": "halved once per run of 429s, doubled back every "
    "Retry-After period once requests are accepted; staying low means the bridges together "
    "exceed the organization's budget",
    "spool_drain_eta_seconds": "`+Inf` while delivery is stalled",
    "dead_letters_pruned": "`max_age` is the retention working; `max_bytes`, `max_count` or "
    "`disk_full` mean dead letters arrive faster than the budget keeps them: fix the source, "
    "or raise `dead_letters.*`",
    "delivery_paused": "the API refuses the token (401/403) or the URL is wrong (404/3xx); data "
    "keeps spooling",
    "token_unusable": "`reload`: the token file changed but is unusable, the previous token is "
    "still in use (the log says why); `send`: the token cannot go into an HTTP header, delivery "
    "is paused",
}


class BridgeMetrics:
    """All metrics, registered on ``registry``.

    Why this class is long: it is the catalogue, one declaration per metric and nothing else;
    split, the reference page and a reader would have to gather it from several places.
    """

    # One statement per metric: the list is the catalogue, so its length is not complexity.
    def __init__(self, registry: CollectorRegistry | None = None) -> None:  # noqa: PLR0915
        # The *_created samples double every counter's series in the text format and no
        # dashboard or alert of ours reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.build_info = Info(p + "build", "Version of the bridge", registry=r)
        self.build_info.info({"version": __version__})
        self.verify_checks = Counter(
            p + "verify_checks_total",
            "Minutes of accepted points checked against GET /metrics by the background audit "
            "(api.audit_queries_per_minute), by result (the verdict): agree, gap, missing, "
            "extra, avg, or error (the query failed)",
            ["result"],
            registry=r,
        )
        for verdict in ("agree", "gap", "missing", "extra", "avg", "error"):
            self.verify_checks.labels(verdict)
        self.messages_received = Counter(
            p + "messages_received_total", "MQTT messages received", registry=r
        )
        self.messages_committed = Counter(
            p + "messages_committed_total",
            "Messages committed to the spool (points or dead letter) and acknowledged",
            registry=r,
        )
        self.messages_unmatched = Counter(
            p + "messages_unmatched_total", "Messages whose topic matched no rule", registry=r
        )
        self.messages_ignored = Counter(
            p + "messages_ignored_total",
            "Messages dropped on purpose by an ignore rule (acknowledged, not dead-lettered); "
            'rule="(outside every rule\'s filter)": let in by a subscription covering '
            "overlapping rule filters but matching none of them",
            ["rule"],
            registry=r,
        )
        self.readings_skipped = Counter(
            p + "readings_skipped_total",
            "Readings left out by a readings rule's 'where' conditions",
            ["rule"],
            registry=r,
        )
        self.sparkplug_values_skipped = Counter(
            p + "sparkplug_values_skipped_total",
            "Sparkplug metric values that are no number (is_null, text without a map, bytes ...),"
            " by the decoder's reason: left out on purpose, not dead-lettered",
            ["rule", "reason"],
            registry=r,
        )
        self.sparkplug_births = Counter(
            p + "sparkplug_births_total",
            "Sparkplug NBIRTH and DBIRTH messages whose aliases were taken in",
            ["rule", "type"],
            registry=r,
        )
        self.sparkplug_session_events = Counter(
            p + "sparkplug_session_events_total",
            "Sparkplug session events by rule: seq_gap (messages of an edge node lost or out of "
            "order), node_death, device_death, stale_death (an NDEATH of an earlier session), "
            "birth_after_death",
            ["rule", "event"],
            registry=r,
        )
        self.sparkplug_parked = Counter(
            p + "sparkplug_parked_total",
            "Sparkplug DATA messages parked until the BIRTH that defines their aliases",
            ["rule"],
            registry=r,
        )
        self.sparkplug_parked_messages = Gauge(
            p + "sparkplug_parked_messages",
            "Sparkplug DATA messages waiting for the BIRTH that defines their aliases",
            registry=r,
        )
        self.sparkplug_rebirth_requests = Counter(
            p + "sparkplug_rebirth_requests_total",
            "Sparkplug host mode: Node Control/Rebirth NCMDs sent to edge nodes, by what asked "
            "for them: unknown_alias (DATA parked) or seq_gap",
            ["reason"],
            registry=r,
        )
        self.sparkplug_rebirth_held = Counter(
            p + "sparkplug_rebirth_requests_held_total",
            "Sparkplug host mode: rebirth requests not sent, by why: limited (the rate limit held "
            "them back), not_connected (a later message asks again) or off (the broker refused "
            "the host's STATE)",
            ["why"],
            registry=r,
        )
        self.timestamps_replaced = Counter(
            p + "timestamps_replaced_total",
            "Payload timestamps replaced by the receive time (timestamp.on_invalid: receive_time)",
            ["rule"],
            registry=r,
        )
        self.points_mapped = Counter(
            p + "points_mapped_total", "Data points produced by mapping", ["rule"], registry=r
        )
        self.mapping_failures = Counter(
            p + "mapping_failures_total",
            "Metrics or messages that could not be mapped",
            ["rule", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            p + "dead_letters_total", "Dead-letter records written", ["reason"], registry=r
        )
        self.dead_letters_pruned = Counter(
            p + "dead_letters_pruned_total",
            "Dead letters deleted by their budget, by limit (max_age, max_count, max_bytes, "
            "disk_full)",
            ["reason"],
            registry=r,
        )
        self.dead_letters_stored = Gauge(
            p + "dead_letters_stored", "Dead letters kept in the spool", registry=r
        )
        self.dead_letters_bytes = Gauge(
            p + "dead_letters_stored_bytes",
            "Bytes of the spool taken by dead letters (not counted toward spool.max_bytes)",
            registry=r,
        )
        self.duplicates_suppressed = Counter(
            p + "duplicate_points_suppressed_total",
            "Points already in the spool (MQTT redelivery), stored once",
            registry=r,
        )
        self.spool_points = Gauge(
            p + "spool_points", "Data points waiting in the spool", registry=r
        )
        self.spool_bytes = Gauge(p + "spool_bytes", "Bytes used by the spool database", registry=r)
        self.spool_oldest_age = Gauge(
            p + "spool_oldest_point_age_seconds",
            "Age of the oldest waiting point since it was received",
            registry=r,
        )
        self.spool_full = Gauge(
            p + "spool_full", "1 while the spool is full and MQTT intake is paused", registry=r
        )
        self.spool_moved_aside = Gauge(
            p + "spool_corrupt_moved_aside",
            "1 when this start found the spool corrupt and moved it aside (never deleted)",
            registry=r,
        )
        self.points_dropped = Counter(
            p + "points_dropped_total",
            "Waiting points deleted unsent, by reason (spool_full: the drop-oldest policy; "
            "over_share: the same, from a device over its fair share)",
            ["reason"],
            registry=r,
        )
        self.points_held = Counter(
            p + "points_held_total",
            "Points committed and acknowledged but held back: their device was over its fair "
            "share of a spool near its cap",
            registry=r,
        )
        self.points_held_back = Counter(
            p + "points_held_back_total",
            "Points not sent on purpose, by rule and reason (deadband: the value stayed within "
            "the rule's deadband since the last sent one; acknowledged, not stored, not "
            "dead-lettered)",
            ["rule", "reason"],
            registry=r,
        )
        self.spool_points_held = Gauge(
            p + "spool_points_held",
            "Points held back in the spool (not yet handed to delivery); part of spool_points",
            registry=r,
        )
        self.spool_devices_over_share = Gauge(
            p + "spool_devices_over_share",
            "Devices over their fair share of the spool while it is near its cap",
            registry=r,
        )
        self.intake_paused_seconds = Counter(
            p + "intake_paused_seconds_total",
            "Time MQTT acknowledgements were withheld because the spool was full",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            p + "mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_connects = Counter(
            p + "mqtt_connects_total", "Successful broker connections", registry=r
        )
        self.mqtt_puback_fences = Counter(
            p + "mqtt_puback_fences_total",
            "PINGREQ fences the broker answered: each proves it read the PUBACKs written before",
            registry=r,
        )
        self.mqtt_session_lost = Counter(
            p + "mqtt_session_lost_total",
            "Reconnects where the broker had no session (queued messages may be lost)",
            registry=r,
        )
        self.requests = Counter(
            p + "api_requests_total", "API requests by status class", ["status_class"], registry=r
        )
        self.points_delivered = Counter(
            p + "points_delivered_total", "Points accepted by the API", registry=r
        )
        self.points_written_mismatch = Counter(
            p + "points_written_mismatch_total",
            "Accepted requests whose points_written differed from the points sent",
            registry=r,
        )
        self.batch_points = Histogram(
            p + "batch_points",
            "Data points per API request",
            buckets=(1, 5, 10, 25, 50, 75, 90, 100),
            registry=r,
        )
        self.commit_messages = Histogram(
            p + "spool_commit_messages",
            "Messages per group commit to the spool (one transaction each)",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.commit_duration = Histogram(
            p + "spool_commit_duration_seconds",
            "Time of one group commit, from taking its messages to the end of the transaction "
            "(the PUBACKs follow)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.request_duration = Histogram(
            p + "api_request_duration_seconds",
            "API request latency",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.delivery_lag = BatchHistogram(
            p + "delivery_lag_seconds",
            "Time from MQTT receive to API acceptance",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.config_reloads = Counter(
            p + "config_reloads_total",
            "Mapping file reloads by result (success, failure)",
            ["result"],
            registry=r,
        )
        self.config_last_reload_ok = Gauge(
            p + "config_last_reload_successful",
            "1 if the last mapping reload succeeded (or none was tried), 0 if it failed",
            registry=r,
        )
        self.config_last_reload_ok.set(1)
        self.config_last_reload_time = Gauge(
            p + "config_last_reload_success_timestamp_seconds",
            "When the running mapping was loaded (Unix time)",
            registry=r,
        )
        self.pacing_rate = Gauge(
            p + "api_pacing_rate_requests_per_second",
            "Current client-side request rate limit (halved on 429s, doubling back)",
            registry=r,
        )
        self.rate_limited = Counter(
            p + "api_rate_limited_total", "Requests the API answered 429", registry=r
        )
        self.rate_limited_pause = Counter(
            p + "api_rate_limited_pause_seconds_total",
            "Time delivery was paused because the API answered 429",
            registry=r,
        )
        self.drain_eta = Gauge(
            p + "spool_drain_eta_seconds",
            "Estimated time to deliver what waits at the recent delivery rate (+Inf: stalled)",
            registry=r,
        )
        self.delivery_paused = Gauge(
            p + "delivery_paused",
            "1 while delivery is paused by an auth or configuration error from the API",
            registry=r,
        )
        self.token_unusable = Counter(
            p + "token_unusable_total",
            "API tokens the bridge refused itself, by reason (reload: a changed token file, "
            "the previous token kept; send: a token an HTTP header cannot carry, nothing sent)",
            ["reason"],
            registry=r,
        )

        # Fixed vocabularies start at 0 (rule-labelled series appear with their first event).
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for reason in PRUNE_REASONS:
            self.dead_letters_pruned.labels(reason)
        for status_class in STATUS_CLASSES:
            self.requests.labels(status_class)
        for reason in DROP_REASONS:
            self.points_dropped.labels(reason)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        for reason in TOKEN_UNUSABLE_REASONS:
            self.token_unusable.labels(reason)
        # The standard process_* metrics (RSS, CPU, open fds, start time) and python_info, so
        # one scrape shows memory and CPU beside throughput; Linux only, silently absent elsewhere.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def bind_spool_age(self, oldest_age: Callable[[], float]) -> None:
        """Compute the oldest-point age at scrape time."""
        self.spool_oldest_age.set_function(oldest_age)
