# mypy: disable-error-code="no-untyped-call"
# (zeep has no type hints)
"""What the end-to-end test does as the outside world: a grid's own systems and one meter of its own.

Every sender waits for its acknowledgement (202, PUBACK, FTP receipt, SOAP answer), so the test knows exactly what
the platform accepted; the read side must then show exactly that.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import aioftp
import httpx
import orjson
import paho.mqtt.client as paho
import requests
import zeep
from paho.mqtt.enums import CallbackAPIVersion
from zeep.transports import Transport

from libs.events.gsrn import with_check_digit
from stack.dev.channels import BINDING, CSV_HEADER, WSDL, csv_line

Reading = dict[str, Any]


def new_meterpoint() -> str:
    """A GSRN of the test's own, far from the simulator's ids."""
    return with_check_digit("57131398" + "".join(secrets.choice("0123456789") for _ in range(9)))


def reading(meterpoint_id: str, interval_end: datetime, value: Decimal) -> Reading:
    """A 15-minute active-import reading as every channel's contract spells it."""
    return {
        "meterpoint_id": meterpoint_id,
        "register": "active_import",
        "interval_end": interval_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resolution": "PT15M",
        "value": float(value),
        "unit": "kWh",
        "quality": "measured",
    }


class CustomerCentre:
    """The customer centre over SOAP: a zeep client from the committed WSDL, with the run's login."""

    def __init__(self, url: str, client: str, password: str) -> None:
        self._session = requests.Session()
        self._session.auth = (client, password)
        transport = Transport(session=self._session, timeout=10, operation_timeout=10)
        self._service: Any = zeep.Client(str(WSDL), transport=transport).create_service(BINDING, url)

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._session.close()

    def register_and_link(self, name: str, meterpoint_id: str, move_in: date, source: tuple[str, str]) -> str:
        """Register ``meterpoint_id`` delivered by ``source`` (kind, id) and a person called ``name`` who moves in
        there; the customer id."""
        address = {"street": "Nørregade 7", "postcode": "8000", "city": "Aarhus C", "country": "DK"}
        contact = {"email": f"{secrets.token_hex(4)}@example.dk", "address": address}
        customer = self._service.RegisterCustomer(kind="person", name=name, contact=contact)
        # A link needs the meterpoint in the registry, in the run's grid company.
        self._service.RegisterMeterpoint(**self._meterpoint(meterpoint_id, move_in, source))
        self._service.LinkMeterpoint(customerId=customer.customerId, meterpointId=meterpoint_id, moveIn=move_in)
        return str(customer.customerId)

    def assign(self, meterpoint_id: str, move_in: date, source: tuple[str, str]) -> None:
        """Give ``meterpoint_id`` another data source (kind, id), as the grid operator does when a meter changes."""
        current = self._service.GetMeterpoint(meterpointId=meterpoint_id)
        self._service.UpdateMeterpoint(
            expectedVersion=current.version, **self._meterpoint(meterpoint_id, move_in, source)
        )

    @staticmethod
    def _meterpoint(meterpoint_id: str, since: date, source: tuple[str, str]) -> dict[str, Any]:
        kind, source_id = source
        return {
            "meterpointId": meterpoint_id,
            "gridArea": "804",
            "type": "consumption",
            "resolution": "PT15M",
            "settlementMethod": "flex",
            "connection": {"state": "connected", "since": since},
            "dataSource": {"kind": kind, "id": source_id},
        }


def post(base_url: str, api_key: str, path: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """POST a batch to the collection service and return its 202 body (anything else fails the test)."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    answer = httpx.post(f"{base_url}{path}", content=orjson.dumps(list(items)), headers=headers, timeout=10.0)
    assert answer.status_code == 202, (path, answer.status_code, answer.text)
    body: dict[str, Any] = answer.json()
    return body


def publish_over_mqtt(meterpoint_id: str, password: str, port: int, readings: Sequence[Reading]) -> None:
    """Publish ``readings`` as the meter itself (QoS 1) and wait for the PUBACK: collection sends it once Kafka has it.

    The broker reloads its password file on a signal, so the first logins of a new device may still be refused.
    """
    deadline = time.monotonic() + 30
    while True:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"e2e-{meterpoint_id}", protocol=paho.MQTTv5)
        client.username_pw_set(meterpoint_id, password)
        try:
            connected = client.connect("127.0.0.1", port, keepalive=30) == paho.MQTT_ERR_SUCCESS
        except OSError:
            connected = False
        if connected:
            client.loop_start()
            try:
                info = client.publish(f"gridhub/meters/{meterpoint_id}/readings", orjson.dumps(list(readings)), qos=1)
                info.wait_for_publish(timeout=max(1.0, deadline - time.monotonic()))
                if info.is_published():
                    return
            except RuntimeError:  # refused login: paho reports "the client is not currently connected"
                pass
            finally:
                client.disconnect()
                client.loop_stop()
        if time.monotonic() > deadline:
            raise AssertionError(f"no PUBACK for {meterpoint_id}'s readings within 30 s")
        time.sleep(0.5)


async def upload_over_ftp(port: int, login: str, password: str, name: str, readings: Sequence[Reading]) -> Any:
    """Upload ``readings`` as one CSV file into ``/inbox`` and wait for its receipt in ``/outbox``."""
    body = "\n".join([CSV_HEADER, *(csv_line(r) for r in readings)]).encode() + b"\n"
    receipt = PurePosixPath("/outbox") / f"{name}.receipt.json"
    async with asyncio.timeout(60):
        client = aioftp.Client(socket_timeout=10, path_timeout=10)
        try:
            await client.connect("127.0.0.1", port)
            await client.login(login, password)
            async with client.upload_stream(f"/inbox/{name}") as stream:
                await stream.write(body)
            while not await client.exists(receipt):
                await asyncio.sleep(0.2)
            chunks = []
            async with client.download_stream(receipt) as download:
                async for block in download.iter_by_block():
                    chunks.append(block)
            await client.quit()
        finally:
            client.close()
    return orjson.loads(b"".join(chunks))


def interval_ends(first: datetime, count: int) -> list[datetime]:
    """``count`` quarter-hour interval ends from ``first`` on."""
    return [first + timedelta(minutes=15 * n) for n in range(count)]
