"""FTP ingest against the real Kafka and PostgreSQL: the FTP server runs in-process, partners use aioftp's client.

A receipt appears in the partner's outbox only after Kafka acknowledged the file's readings and dead letters,
so once it is there, the topics as of now hold exactly what it lists. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioftp
import orjson
import pytest

from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings
from services.collection.settings import Boundaries
from tests.integration.collection.conftest import FtpFactory, FtpService
from tests.integration.collection.support import (
    CSV_HEADER,
    csv_line,
    ftp_login,
    ftp_upload,
    new_meterpoint,
    wait_for_file,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def with_bad_check_digit(meterpoint: str) -> str:
    return meterpoint[:17] + str((int(meterpoint[17]) + 1) % 10)


async def eventually(condition: Any, *, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def expect_code(call: Any, code: str) -> None:
    """``call()`` fails with the FTP reply ``code``."""
    with pytest.raises(aioftp.StatusCodeError) as failure:
        await call()
    assert any(str(received) == code for received in failure.value.received_codes), failure.value


async def test_mixed_lines_give_a_receipt_and_exactly_the_good_readings_on_kafka(
    ftp_service: FtpFactory, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    dlq = await topic_reader("meter.readings.v1.dlq")
    first, second = new_meterpoint(), new_meterpoint()
    lines = [
        CSV_HEADER + ",source",  # 1
        csv_line(first, 1) + ",",  # 2 accepted, default source
        csv_line(first, 2) + ",hes-north",  # 3 accepted
        "",  # 4 blank: ignored
        csv_line(first, 1) + ",",  # 5 duplicate of line 2
        csv_line(first, 3, value=9.5) + ",",  # 6 accepted
        csv_line(first, 3, value=1.0) + ",",  # 7 same reading id as line 6, other value
        csv_line(with_bad_check_digit(second), 1) + ",",  # 8 invalid meterpoint
        csv_line(second, 2, interval_end="2025-03-01T00:20:00Z") + ",",  # 9 misaligned
        csv_line(second, 3, value=-1_000_000_000) + ",",  # 10 out of range
        csv_line(second, 4, interval_end="1740787200") + ",",  # 11 not RFC 3339
        f"{second},active_import,2025-03-01T01:15:00Z,PT15M",  # 12 too few fields
        csv_line(second, 6, unit="kvarh") + ",",  # 13 unit mismatch
        csv_line(second, 7) + ",",  # 14 accepted (after the bad ones)
    ]
    data = ("\r\n".join(lines) + "\r\n").encode() + b"\xff\xfe,broken\n"  # 15 not UTF-8
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, first, second)
        client = await ftp_login(service.port, login, password)
        await ftp_upload(client, "/inbox/readings-2025-03-01.csv", data)
        # The receipt is downloadable from the outbox once the file is processed.
        receipt_path = service.outbox(login) / "readings-2025-03-01.csv.receipt.json"
        await wait_for_file(receipt_path)
        async with client.download_stream("/outbox/readings-2025-03-01.csv.receipt.json") as stream:
            downloaded = b"".join([block async for block in stream.iter_by_block()])
        await client.quit()
    receipt = orjson.loads(downloaded)
    assert receipt["file"] == "readings-2025-03-01.csv"
    assert receipt["user"] == login
    assert receipt["status"] == "processed"
    assert (receipt["accepted"], receipt["duplicates"], receipt["rejected"]) == (4, 1, 8)
    by_line = {entry["line"]: entry for entry in receipt["lines"]}
    assert sorted(by_line) == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert {n for n, e in by_line.items() if e["status"] == "accepted"} == {2, 3, 6, 14}
    assert by_line[5] == {"line": 5, "status": "duplicate", "id": by_line[2]["id"], "duplicate_of": 2}
    reasons = {n: e["reason"] for n, e in by_line.items() if e["status"] == "rejected"}
    assert reasons == {
        7: "conflicting_duplicate",
        8: "invalid_meterpoint",
        9: "misaligned_interval",
        10: "value_out_of_range",
        11: "malformed",
        12: "malformed",
        13: "unit_mismatch",
        15: "invalid_encoding",
    }
    assert all(by_line[n]["detail"] for n in reasons)

    # The receipt came after Kafka's acks: the topic as of now holds exactly the accepted readings.
    ours = {first.encode(), second.encode()}
    records = await readings.read_to_end(lambda record: record.key in ours)
    events = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in records}
    assert sorted(events) == sorted(by_line[n]["id"] for n in (2, 3, 6, 14))
    assert len(records) == 4
    assert events[by_line[3]["id"]]["data"]["source"] == "hes-north"
    assert events[by_line[2]["id"]]["data"]["source"] == "meter"
    assert events[by_line[6]["id"]]["data"]["value"] == 9.5

    # Every refused line is in the DLQ with its reason and line number, its bytes as written.
    letters = await dlq.read_to_end(lambda record: dict(record.headers).get("gridhub.client") == login.encode())
    by_dlq_line = {int(dict(r.headers)["gridhub.line"]): r for r in letters}
    assert {n: dict(r.headers)["dlq.reason"].decode() for n, r in by_dlq_line.items()} == reasons
    assert by_dlq_line[9].value == lines[8].encode()
    assert by_dlq_line[9].key == second.encode()
    assert dict(by_dlq_line[9].headers)["dlq.source.topic"] == f"ftp:{login}/readings-2025-03-01.csv".encode()
    assert dict(by_dlq_line[15].headers)["gridhub.ingress"] == b"ftp"


async def test_a_wrong_header_rejects_the_whole_file_with_a_receipt_saying_so(
    ftp_service: FtpFactory, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    dlq = await topic_reader("meter.readings.v1.dlq")
    meterpoint = new_meterpoint()
    wrong = "meterpoint,register,interval_end,resolution,value,unit,quality"  # "meterpoint" is no column
    data = "\n".join([wrong, csv_line(meterpoint, 1), csv_line(meterpoint, 2)]).encode()
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        client = await ftp_login(service.port, login, password)
        await ftp_upload(client, "/inbox/wrong.csv", data)
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "wrong.csv.receipt.json"))
        await client.quit()
    assert receipt["status"] == "rejected"
    assert receipt["reason"] == "invalid_header"
    assert "'meterpoint'" in receipt["detail"]
    assert "meterpoint_id" in receipt["detail"]
    assert (receipt["accepted"], receipt["duplicates"], receipt["rejected"], receipt["lines"]) == (0, 0, 0, [])
    assert await readings.read_to_end(lambda record: record.key == meterpoint.encode()) == []
    letters = await dlq.read_to_end(lambda record: dict(record.headers).get("gridhub.client") == login.encode())
    assert [(dict(r.headers)["dlq.reason"], r.value) for r in letters] == [(b"invalid_header", wrong.encode())]


async def test_path_traversal_is_refused_and_the_partner_keeps_being_served(ftp_service: FtpFactory) -> None:
    meterpoint = new_meterpoint()
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        other, _ = await service.add_partner()
        client = await ftp_login(service.port, login, password)
        for command in (
            "CWD ..",
            "CWD /inbox/../..",
            f"CWD ../{other}",
            "MLST ../../../../etc/passwd",
            "DELE /../../../etc/hosts",
        ):
            await expect_code(lambda command=command: client.command(command, "2xx"), "550")
        await client.command("PASV", "227")  # a listening data port, so that transfers get as far as the path check
        for command, code in (
            ("MLSD /../..", "550"),
            (f"STOR /../{other}/inbox/x.csv", "550"),
            (f"RETR ../{other}/outbox/x.csv.receipt.json", "550"),
            ("STOR /outbox/x.csv", "553"),  # uploads go into the inbox only
            ("MKD /inbox/sub", "550"),
            ("RNFR /inbox", "550"),
        ):
            await expect_code(lambda command=command: client.command(command, "1xx"), code)
        assert service.metric("gridhub_collection_ftp_refusals_total", reason="path_outside_home") >= 7
        # Still in its home and still served: the next upload is processed.
        assert str(await client.get_current_directory()) == "/"
        await ftp_upload(client, "/inbox/after.csv", f"{CSV_HEADER}\n{csv_line(meterpoint, 1)}\n".encode())
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "after.csv.receipt.json"))
        await client.quit()
    assert receipt["accepted"] == 1
    assert not (service.root / "users" / other / "inbox" / "x.csv").exists()


async def test_anonymous_and_wrong_logins_are_refused(ftp_service: FtpFactory) -> None:
    async with ftp_service() as service:
        login, password = await service.add_partner()
        for user, secret in (
            ("anonymous", "guest@example.org"),
            ("ftp", ""),
            (login, "wrong-password"),
            ("nobody", "x"),
        ):
            client = aioftp.Client(socket_timeout=10)
            await client.connect("127.0.0.1", service.port)
            await expect_code(lambda client=client, user=user, secret=secret: client.login(user, secret), "530")
            await expect_code(lambda client=client: client.command("PWD", "257"), "503")  # not logged in
            client.close()
        assert service.metric("gridhub_collection_ftp_logins_total", outcome="anonymous") == 2
        assert service.metric("gridhub_collection_ftp_logins_total", outcome="failed") == 2
        client = await ftp_login(service.port, login, password)  # the partner itself gets in
        await client.quit()


async def test_an_oversize_file_is_refused_during_upload_and_never_processed(
    ftp_service: FtpFactory, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    body = "\n".join([CSV_HEADER, *(csv_line(meterpoint, q) for q in range(96))]).encode()  # ~9 KB
    small = Boundaries(
        ftp_ingress=BoundaryPolicy(
            quota=QuotaSettings(rate=5000, burst=20_000),
            bulkhead=BulkheadSettings(max_concurrent=4),
            max_body_bytes=4096,
        )
    )
    async with ftp_service(boundaries=small, block_size=4096) as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        client = await ftp_login(service.port, login, password)
        codes: list[str] = []
        try:
            await ftp_upload(client, "/inbox/big.csv", body, block=1024)
        except aioftp.StatusCodeError as refused:
            codes = [str(code) for code in refused.received_codes]
        except ConnectionError:  # the server closed the data connection while we still wrote
            code, _ = await client.command(None, "552")
            codes = [str(code)]
        assert codes == ["552"], "an upload above the size limit was not refused with 552"
        await eventually(lambda: service.metric("gridhub_collection_ftp_uploads_total", outcome="too_large") == 1)
        # The session goes on: a file within the limit is processed.
        await ftp_upload(client, "/inbox/small.csv", "\n".join([CSV_HEADER, csv_line(meterpoint, 1)]).encode())
        await wait_for_file(service.outbox(login) / "small.csv.receipt.json")
        await client.quit()
        assert not (service.outbox(login) / "big.csv.receipt.json").exists()
        assert list((service.root / "spool" / login / "incoming").iterdir()) == []
    records = await readings.read_to_end(lambda record: record.key == meterpoint.encode())
    assert len(records) == 1


async def test_a_partial_upload_is_never_processed(ftp_service: FtpFactory, topic_reader: Any) -> None:
    readings = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    half = "\n".join([CSV_HEADER, *(csv_line(meterpoint, q) for q in range(40))]).encode()[:1500]
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        incoming = service.root / "spool" / login / "incoming"

        # 1. The partner aborts (ABOR) in the middle of the transfer.
        client = await ftp_login(service.port, login, password)
        stream = await client.upload_stream("/inbox/aborted.csv")
        await stream.write(half)
        await eventually(lambda: incoming.exists() and any(incoming.iterdir()))  # the server is receiving
        await client.abort()
        stream.close()

        # 2. The partner's connection drops in the middle of the transfer (its process died).
        second = await ftp_login(service.port, login, password)
        stream = await second.upload_stream("/inbox/dropped.csv")
        await stream.write(half)
        await eventually(lambda: any(incoming.iterdir()))
        second.close()  # the control connection goes first ...
        await eventually(lambda: service.metric("gridhub_collection_ftp_uploads_total", outcome="aborted") == 2)
        stream.close()  # ... then the data connection ends, which looks like the end of the file

        # Neither was kept; a complete upload afterwards is processed as usual.
        await eventually(lambda: list(incoming.iterdir()) == [])
        await ftp_upload(client, "/inbox/complete.csv", half.rsplit(b"\n", 1)[0] + b"\n")
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "complete.csv.receipt.json"))
        await client.quit()
        assert sorted(p.name for p in service.outbox(login).iterdir()) == ["complete.csv.receipt.json"]
        assert service.metric("gridhub_collection_ftp_uploads_total", outcome="completed") == 1
    records = await readings.read_to_end(lambda record: record.key == meterpoint.encode())
    assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(e["id"] for e in receipt["lines"])


async def test_uploads_beyond_the_concurrency_limit_are_refused_at_once(ftp_service: FtpFactory) -> None:
    async with ftp_service(max_uploads_per_user=1) as service:
        login, password = await service.add_partner()
        first, second = await ftp_login(service.port, login, password), await ftp_login(service.port, login, password)
        stream = await first.upload_stream("/inbox/slow.csv")
        await stream.write(f"{CSV_HEADER}\n".encode())
        await second.command("PASV", "227")
        await expect_code(lambda: second.command("STOR /inbox/other.csv", "1xx"), "450")
        await stream.finish()
        await ftp_upload(second, "/inbox/other.csv", f"{CSV_HEADER}\n".encode())  # the slot is free again
        for client in (first, second):
            await client.quit()


__all__ = ["FtpService"]


async def test_a_negative_value_and_a_meter_index_column_reach_kafka_unchanged(
    ftp_service: FtpFactory, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    lines = [
        CSV_HEADER + ",meter_index",
        csv_line(meterpoint, 1, value=-0.75) + ",4200.125",
        csv_line(meterpoint, 2) + ",",  # no index for this one
        csv_line(meterpoint, 3, value=-1_000_000_000) + ",4201",  # beyond the bound
    ]
    async with ftp_service() as service:
        login, password = await service.add_partner()
        await service.register(login, meterpoint)
        client = await ftp_login(service.port, login, password)
        await ftp_upload(client, "/inbox/signed.csv", ("\n".join(lines) + "\n").encode())
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "signed.csv.receipt.json"))
        await client.quit()
    assert (receipt["accepted"], receipt["rejected"]) == (2, 1)
    assert [line["reason"] for line in receipt["lines"] if line["status"] == "rejected"] == ["value_out_of_range"]
    records = await readings.read_to_end(lambda record: record.key == meterpoint.encode())
    data = {orjson.loads(r.value)["data"]["interval_end"]: orjson.loads(r.value)["data"] for r in records}
    assert (data["2025-03-01T00:15:00Z"]["value"], data["2025-03-01T00:15:00Z"]["meter_index"]) == (-0.75, 4200.125)
    assert data["2025-03-01T00:30:00Z"]["meter_index"] is None
