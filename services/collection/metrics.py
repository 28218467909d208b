"""The collection service's own Prometheus series (the flow-control ones come from ``libs.flowcontrol``).

Labels are bounded: channel (rest, mqtt, ftp), kind (reading, alarm), outcome and reason are closed sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.collection.domain import Accepted, Duplicate, Held, ItemOutcome, Rejected


class CollectionMetrics:
    """Counters of items by outcome, rejections by reason, MQTT state and publish latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter(
            "gridhub_collection_items_total",
            "Readings and alarms received, by channel, kind and outcome (accepted, duplicate_in_batch, rejected, held: "
            "valid but for an unregistered meterpoint, in the DLQ for a redrive).",
            ["channel", "kind", "outcome"],
            registry=registry,
        )
        self.rejections = Counter(
            "gridhub_collection_rejections_total",
            "Refused items and messages by channel and reason (not_in_scope and unknown_meterpoint from the scope "
            "check among them).",
            ["channel", "reason"],
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "gridhub_collection_mqtt_connected",
            "1 while the MQTT ingress is connected to the broker.",
            registry=registry,
        )
        self.mqtt_messages = Counter(
            "gridhub_collection_mqtt_messages_total",
            "MQTT messages by what happened to them: acked (published), dead_lettered (published to the DLQ, acked), "
            "parked (over the device quota, waiting in the device's lane), quota_exceeded (over the quota with no room "
            "in a lane: published to the DLQ with that reason, acked), stale (connection gone before the ack; "
            "redelivered).",
            ["outcome"],
            registry=registry,
        )
        self.mqtt_parked = Gauge(
            "gridhub_collection_mqtt_parked_messages",
            "MQTT messages of devices over their quota parked in their lanes now (PUBACK waiting).",
            registry=registry,
        )
        self.mqtt_broker = Gauge(
            "gridhub_collection_mqtt_broker",
            "The broker's own counters from $SYS/broker (as the broker last published them): stored_messages "
            "(queued, in flight and retained), dropped_messages (since the broker started; queue limits), "
            "connected_clients.",
            ["counter"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "gridhub_collection_publish_seconds",
            "Time from handing records to the producer until Kafka acknowledged all of them.",
            ["channel"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.kafka_paused = Gauge(
            "gridhub_collection_mqtt_paused",
            "1 while the MQTT ingress holds its messages because Kafka refuses or fails publishes.",
            registry=registry,
        )

        self.ftp_logins = Counter(
            "gridhub_collection_ftp_logins_total",
            "FTP logins by outcome: ok, failed (unknown user or wrong password), anonymous (refused), invalid (a "
            "name outside the login pattern, refused at USER), throttled (too many password checks from the "
            "address), busy (too many connections of the user).",
            ["outcome"],
            registry=registry,
        )
        self.ftp_uploads = Counter(
            "gridhub_collection_ftp_uploads_total",
            "FTP uploads by outcome: completed (queued for processing), too_large (cut off at the size limit), "
            "aborted (ABOR, lost connection, data error), busy (too many uploads), queue_full, not_allowed.",
            ["outcome"],
            registry=registry,
        )
        self.ftp_refusals = Counter(
            "gridhub_collection_ftp_refusals_total",
            "FTP commands and connections refused by reason: path_outside_home, not_allowed, bad_name, "
            "user_after_login (USER once logged in), address_cap (too many connections not logged in from one "
            "address), login_timeout (closed: no login in time), foreign_data_peer (a data connection from "
            "another address than the control connection's), tls_required, tls_injection (plain text behind "
            "AUTH TLS), tls_handshake_failed.",
            ["reason"],
            registry=registry,
        )
        self.ftp_unauthenticated = Gauge(
            "gridhub_collection_ftp_unauthenticated_connections",
            "FTP control connections open that have not logged in (yet).",
            registry=registry,
        )
        self.ftp_files = Counter(
            "gridhub_collection_ftp_files_total",
            "Dropped files by what processing did: processed (receipt written), rejected (invalid header, receipt "
            "written), failed (an error; the file stays in the spool and is processed again on restart).",
            ["outcome"],
            registry=registry,
        )
        self.ftp_queued_files = Gauge(
            "gridhub_collection_ftp_queued_files",
            "Files uploaded and waiting for (or in) processing.",
            registry=registry,
        )
        self.gapfill_requests = Counter(
            "gridhub_collection_gapfill_requests_total",
            "Gap-fill requests (meter.commands.v1) by route (device, head_end, ftp_partner) and outcome: routed, "
            "refused (not_in_scope, unknown_meterpoint: dead-lettered), dropped (an open request removed to keep "
            "its source's bound: the oldest go first).",
            ["route", "outcome"],
            registry=registry,
        )
        self.ftp_paused = Gauge(
            "gridhub_collection_ftp_paused",
            "File processors waiting for Kafka (breaker open or publishes failing); their files wait in the spool.",
            registry=registry,
        )
        self.ftp_quota_waits = Counter(
            "gridhub_collection_ftp_quota_waits_total",
            "Times a file's batch waited for its partner's quota (processing slowed, nothing refused).",
            registry=registry,
        )

        self.view_entries = Gauge(
            "gridhub_collection_meterpoint_view_entries",
            "Meterpoints in the local scope view (fed from meterpoints.v1).",
            registry=registry,
        )
        self.view_capacity = Gauge(
            "gridhub_collection_meterpoint_view_capacity",
            "The most meterpoints the scope view takes (COLLECTION_SCOPE__CAPACITY).",
            registry=registry,
        )
        self.view_full = Gauge(
            "gridhub_collection_meterpoint_view_full",
            "1 while the scope view is full and refuses new meterpoints (their readings are held).",
            registry=registry,
        )
        self.view_caught_up = Gauge(
            "gridhub_collection_meterpoint_view_caught_up",
            "1 once the scope view has read meterpoints.v1 up to its end offsets at start.",
            registry=registry,
        )
        self.view_lag = Gauge(
            "gridhub_collection_meterpoint_view_lag",
            "Records of meterpoints.v1 the scope view has not applied yet (behind the high watermark).",
            registry=registry,
        )
        self.view_records = Counter(
            "gridhub_collection_meterpoint_view_records_total",
            "meterpoints.v1 records by what the view did: added, updated, stale (an older or equal version, skipped), "
            "removed (tombstone), refused (view full), malformed (skipped).",
            ["outcome"],
            registry=registry,
        )

    def count(self, channel: str, kind: str, outcomes: Iterable[ItemOutcome]) -> None:
        """Count one batch's outcomes."""
        accepted = duplicates = held = 0
        reasons: dict[str, int] = {}
        for outcome in outcomes:
            if type(outcome) is Accepted:
                accepted += 1
            elif type(outcome) is Duplicate:
                duplicates += 1
            elif type(outcome) is Rejected:
                reasons[outcome.reason] = reasons.get(outcome.reason, 0) + 1
            elif type(outcome) is Held:
                held += 1
        if accepted:
            self.items.labels(channel, kind, "accepted").inc(accepted)
        if duplicates:
            self.items.labels(channel, kind, "duplicate_in_batch").inc(duplicates)
        for reason, count in reasons.items():
            self.items.labels(channel, kind, "rejected").inc(count)
            self.rejections.labels(channel, reason).inc(count)
        if held:
            self.items.labels(channel, kind, "held").inc(held)
            self.rejections.labels(channel, "unknown_meterpoint").inc(held)
