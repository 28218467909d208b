"""The MQTT contract as an AsyncAPI 3 document, written by ``python -m services.collection.contracts``.

Payload schemas come from the same pydantic models the validator uses; limits from the default settings. The
committed file is ``contracts/asyncapi/collection.yaml``; a contract test fails when it and the code disagree.
"""

from __future__ import annotations

from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML
from pydantic import TypeAdapter

from services.collection.domain import AlarmInput, ReadingInput
from services.collection.settings import MqttSettings

_REF = "#/components/schemas/{model}"
EXAMPLE_METERPOINT = "571313180400000025"

DESCRIPTION = """\
Smart meters (and gateways speaking for one meter) publish interval readings and alarms to the DSO's MQTT
broker; GridHub's collection service consumes them and publishes them to Kafka (`meter.readings.v1`,
`meter.events.v1`).

Devices
- log in with their meterpoint id (GSRN-18) as user name and their own password; the broker's ACL lets a
  device publish only to `gridhub/meters/<its meterpoint>/readings` and `.../events` (anything else is
  refused: PUBACK reason 0x87 Not authorized);
- publish with QoS 1. The broker acknowledges (PUBACK) once it stored the message; the collection service
  acknowledges its own delivery only after Kafka has the readings, so nothing acknowledged is lost.

Payload: one JSON object, or a JSON array of objects, UTF-8. Every item is validated as over REST: GSRN check
digit, `meterpoint_id` equal to the topic's (otherwise the whole message is refused), RFC 3339 timestamps
with an offset, `interval_end` on a boundary of its resolution (in UTC) and not in the future, value
-999999999.999 to 999999999.999 with at most 3 decimals (signed: a negative value is kept and flagged by
validation), an optional `meter_index` (the register's cumulative index at `interval_end`, 0 to 999999999.999,
at most 3 decimals), unit fitting the register, value 0 when quality is `missing`.
A refused message (or the refused items of a batch) is recorded with its reason in `meter.readings.v1.dlq` /
`meter.events.v1.dlq`; valid items of the same message are published. Sending a message again is safe: ids
are deterministic (meterpoint, register, interval end, source), so a resent reading is the same event.

Scope: a device delivers only for a meterpoint whose registered data source is that device (`meterpoints.v1`,
data_source `{kind: device, id: <meterpoint>}`). A reading for a meterpoint assigned to another source (a
head-end, an FTP partner, another device) or to none is recorded in the DLQ with reason `not_in_scope`; one for
an unregistered meterpoint is held there with reason `unknown_meterpoint` and published once it is registered
and an operator redrives the holds. Either way the message is acknowledged: resending cannot change it.

Gap fill: a device subscribes (QoS 1, persistent session) to `gridhub/meters/<its meterpoint>/commands`, the
only commands topic its ACL lets it read. A `reread` command asks it to publish the readings of `register` with
`interval_end` in (`start`, `end`] again (devices hold weeks of load profile); resent readings keep their ids.

Flow control: each device has a quota (readings per second with a burst); a device over it is slowed (its
messages wait), never dropped.
"""


_TIME = {"type": "string", "format": "date-time"}
REREAD_SCHEMA: dict[str, Any] = {
    "title": "RereadCommand",
    "type": "object",
    "required": ["command", "request_id", "meterpoint_id", "start", "end", "register", "resolution", "requested_at"],
    "properties": {
        "command": {"const": "reread"},
        "request_id": {"type": "string", "format": "uuid", "description": "The same id for a repeated request."},
        "meterpoint_id": {"type": "string", "pattern": "^[0-9]{18}$"},
        "start": {**_TIME, "description": "Exclusive: the end of the last interval before the gap (UTC)."},
        "end": {**_TIME, "description": "Inclusive: the end of the gap's last interval (UTC)."},
        "register": {"enum": ["active_import", "active_export", "reactive_import", "reactive_export"]},
        "resolution": {"enum": ["PT15M", "PT1H"]},
        "requested_at": _TIME,
    },
}
"""The JSON of a re-read (``services.collection.gapfill.reread_document``): MQTT command, head-end request, file."""

_EXAMPLE_REREAD = {
    "command": "reread",
    "request_id": "0b9c2a8e-5c1d-8f3a-9d2e-4f6a7b8c9d0e",
    "meterpoint_id": EXAMPLE_METERPOINT,
    "start": "2025-03-01T10:00:00Z",
    "end": "2025-03-01T12:00:00Z",
    "register": "active_import",
    "resolution": "PT15M",
    "requested_at": "2025-03-01T13:05:00Z",
}


def _example_reading(minute: int, value: float) -> dict[str, Any]:
    return {
        "meterpoint_id": EXAMPLE_METERPOINT,
        "register": "active_import",
        "interval_end": f"2025-03-01T10:{minute:02d}:00Z",
        "resolution": "PT15M",
        "value": value,
        "unit": "kWh",
        "quality": "measured",
    }


def document(settings: MqttSettings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for ``settings``' topics and limits."""
    schemas: dict[str, Any] = {}
    for model in (ReadingInput, AlarmInput):
        schema = TypeAdapter(model).json_schema(ref_template=_REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    limit = settings.max_readings_per_message
    prefix = settings.topic_prefix

    def payload(model: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{model}"}
        return {"oneOf": [ref, {"type": "array", "items": ref, "minItems": 1, "maxItems": limit}]}

    def channel(kind: str, message: str, description: str) -> dict[str, Any]:
        return {
            "address": f"{prefix}/{{meterpointId}}/{kind}",
            "description": description,
            "parameters": {
                "meterpointId": {
                    "description": "The device's meterpoint id (GSRN-18), which is also its MQTT user name.",
                    "examples": [EXAMPLE_METERPOINT],
                }
            },
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }

    def operation(channel_name: str, message: str, summary: str) -> dict[str, Any]:
        return {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_name}"},
            "summary": summary,
            "description": f"Consumed through the shared subscription `$share/{settings.share_group}/"
            f"{prefix}/+/{channel_name.removeprefix('meter').lower()}` with QoS 1, a persistent session and manual "
            f"acknowledgement after Kafka's ack (MQTT 5 Receive Maximum {settings.receive_maximum}).",
            "bindings": {"mqtt": {"qos": 1, "bindingVersion": "0.2.0"}},
            "messages": [{"$ref": f"#/channels/{channel_name}/messages/{message}"}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "GridHub collection: MQTT ingress",
            "version": "1.0.0",
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": f"{settings.host}:{settings.port}",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "The local stack's Mosquitto. Production: the DSO's broker over TLS (mqtts, 8883).",
                "security": [{"$ref": "#/components/securitySchemes/devicePassword"}],
            }
        },
        "channels": {
            "meterReadings": channel("readings", "readings", "Interval readings of one meterpoint."),
            "meterEvents": channel("events", "meterEvents", "Alarms of one meterpoint (outage, tamper, ...)."),
            "meterCommands": channel(
                "commands",
                "reread",
                "Commands to one device. Only that device may subscribe (the broker's ACL refuses any other "
                "subscriber: SUBACK 0x87), with QoS 1 and a persistent session, so a command sent while it is away "
                "waits for it.",
            ),
        },
        "operations": {
            "receiveReadings": operation("meterReadings", "readings", "Readings into meter.readings.v1"),
            "receiveMeterEvents": operation("meterEvents", "meterEvents", "Alarms into meter.events.v1"),
            "sendReread": {
                "action": "send",
                "channel": {"$ref": "#/channels/meterCommands"},
                "summary": "Gap fill: ask the device to send a range of readings again",
                "description": "Published with QoS 1 on the service's own session when the validation stage asks "
                "for a gap to be filled (GapFillRequested on meter.commands.v1, routed here when the meterpoint's "
                "data source is the device), paced by a rate limit and guarded by a breaker. The device publishes "
                "the readings with `interval_end` in (`start`, `end`] of `register` again on its readings topic "
                "(same reading ids, so a resend is harmless). The same `request_id` may arrive twice: one resend "
                "answers both.",
                "bindings": {"mqtt": {"qos": 1, "bindingVersion": "0.2.0"}},
                "messages": [{"$ref": "#/channels/meterCommands/messages/reread"}],
            },
        },
        "components": {
            "messages": {
                "readings": {
                    "name": "readings",
                    "title": "Readings",
                    "summary": f"One reading, or an array of 1 to {limit}.",
                    "contentType": "application/json",
                    "payload": payload("ReadingInput"),
                    "examples": [
                        {"name": "one", "payload": _example_reading(15, 0.412)},
                        {"name": "batch", "payload": [_example_reading(15, 0.412), _example_reading(30, 0.388)]},
                    ],
                },
                "reread": {
                    "name": "reread",
                    "title": "Re-read",
                    "summary": "Send the readings of a register with interval_end in (start, end] again.",
                    "contentType": "application/json",
                    "payload": {"$ref": "#/components/schemas/RereadCommand"},
                    "examples": [{"name": "two hours", "payload": _EXAMPLE_REREAD}],
                },
                "meterEvents": {
                    "name": "meterEvents",
                    "title": "Meter events",
                    "summary": f"One alarm, or an array of 1 to {limit}.",
                    "contentType": "application/json",
                    "payload": payload("AlarmInput"),
                    "examples": [
                        {
                            "name": "outage",
                            "payload": {
                                "meterpoint_id": EXAMPLE_METERPOINT,
                                "alarm": "power_failure",
                                "raised_at": "2025-03-02T03:41:00Z",
                            },
                        }
                    ],
                },
            },
            "schemas": dict(sorted({**schemas, "RereadCommand": REREAD_SCHEMA}.items())),
            "securitySchemes": {
                "devicePassword": {
                    "type": "userPassword",
                    "description": "User name = the meterpoint id; one password per device "
                    "(python -m services.collection.commands.devices add <meterpoint>).",
                }
            },
        },
    }


class _Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]  # untyped without types-PyYAML
    """Writes multi-line text as literal blocks and repeats shared values instead of YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(content: dict[str, Any]) -> bytes:
    """The YAML bytes of the committed file."""
    text: str = yaml.dump(content, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return text.encode()
