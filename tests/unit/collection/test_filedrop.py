"""File processing without Kafka or FTP: a fake publisher, a fake clock and files in a temporary spool.

The rules: the receipt appears only after Kafka acknowledged every batch of the file; while Kafka refuses or
fails, processing pauses on the same batch and resumes by itself; a partner over its quota is slowed, not
refused; a restart processes what is left in the spool again, with the same event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.events.records import KafkaRecord
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from services.collection.adapters.kafka import PublishFailed
from services.collection.domain import ValidationRules
from services.collection.filedrop import FileJob, FileProcessor, Spool
from services.collection.handlers import Pipeline
from services.collection.metrics import CollectionMetrics
from services.collection.settings import FtpSettings
from tests.unit.collection.scoping import assigned_view

METERPOINT = "571313180400000025"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PIPELINE = Pipeline(rules=ValidationRules(), event_source="/gridhub/collection", max_batch_items=100)
HEADER = "meterpoint_id,register,interval_end,resolution,value,unit,quality"


def csv(quarters: range, *, bad: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    rows = [HEADER]
    for quarter in quarters:
        value = "-1000000000" if quarter in bad else f"{quarter * 0.25:.2f}"
        end = f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z"
        rows.append(f"{METERPOINT},active_import,{end},PT15M,{value},kWh,measured")
    return ("\n".join(rows) + "\n").encode()


class ScriptedPublisher:
    """Fails with the scripted errors first, then keeps what it is given."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.published: list[KafkaRecord] = []

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.published.extend(records)


async def eventually(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    # File reads run in a thread, so real time has to pass for them; the fake clock only replaces the waits.
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def drop(spool: Spool, content: bytes, name: str = "readings.csv", user: str = "hes-north") -> FileJob:
    upload = spool.new_upload(user)
    upload.write_bytes(content)
    return spool.commit(user, upload, name, NOW)


def processor(
    tmp_path: Path, publisher: ScriptedPublisher, clock: FakeClock, *, quota: Quota | None = None, batch_lines: int = 4
) -> tuple[FileProcessor, Spool, CollectorRegistry]:
    registry = CollectorRegistry()
    spool = Spool(tmp_path)
    subject = FileProcessor(
        FtpSettings(root=tmp_path, batch_lines=batch_lines),
        spool=spool,
        publisher=publisher,
        pipeline=PIPELINE,
        quota=quota if quota is not None else Quota(1000, 1000, clock=clock),
        metrics=CollectionMetrics(registry),
        clock=clock,
        wall_clock=lambda: NOW,
    )
    return subject, spool, registry


async def test_the_receipt_comes_only_after_kafka_took_every_batch_and_processing_pauses_while_it_cannot(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher(CallNotPermitted("breaker open", retry_after=5.0), PublishFailed("no broker"))
    subject, spool, registry = processor(tmp_path, publisher, clock)
    job = drop(spool, csv(range(1, 11), bad={3}))
    receipt = spool.outbox("hes-north") / "readings.csv.receipt.json"

    task = asyncio.create_task(subject.process(job))
    await eventually(lambda: publisher.calls == 1)
    await clock.settle()
    assert subject.paused
    assert registry.get_sample_value("gridhub_collection_ftp_paused") == 1
    assert not receipt.exists()
    await clock.advance(5.0)  # the breaker's retry_after
    await eventually(lambda: publisher.calls == 2)
    await clock.settle()
    assert subject.paused
    assert not receipt.exists()
    await clock.advance(0.5)  # the backoff after a failed publish; then the batch goes through
    await asyncio.wait_for(task, 5.0)

    assert not subject.paused
    assert registry.get_sample_value("gridhub_collection_ftp_paused") == 0
    document = orjson.loads(receipt.read_bytes())
    assert (document["accepted"], document["duplicates"], document["rejected"]) == (9, 0, 1)
    assert [entry["line"] for entry in document["lines"]] == list(range(2, 12))
    assert document["lines"][2] == {
        "line": 4,
        "status": "rejected",
        "reason": "value_out_of_range",
        "detail": document["lines"][2]["detail"],
    }
    events = [r for r in publisher.published if r.topic == "meter.readings.v1"]
    letters = [r for r in publisher.published if r.topic == "meter.readings.v1.dlq"]
    assert sorted(orjson.loads(r.value)["id"] for r in events) == sorted(
        e["id"] for e in document["lines"] if e["status"] == "accepted"
    )
    assert [dict(letter.headers)["gridhub.line"] for letter in letters] == [b"4"]
    assert not job.path.exists()  # the spooled file is gone once its receipt is out


async def test_a_partner_over_its_quota_is_slowed_not_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher()
    subject, spool, registry = processor(tmp_path, publisher, clock, quota=Quota(10, 4, clock=clock))
    job = drop(spool, csv(range(1, 13)))  # 12 lines: 3 batches of 4 against a burst of 4 at 10 per second

    task = asyncio.create_task(subject.process(job))
    await eventually(lambda: clock.sleepers == 1)
    assert publisher.calls == 1  # the first batch went through on the burst
    await clock.advance(0.4)
    await eventually(lambda: clock.sleepers == 1 and publisher.calls == 2)
    await clock.advance(0.4)
    await asyncio.wait_for(task, 5.0)
    assert publisher.calls == 3
    assert registry.get_sample_value("gridhub_collection_ftp_quota_waits_total") == 2
    assert len(publisher.published) == 12


async def test_a_restart_processes_the_spool_again_with_the_same_ids_and_drops_unfinished_uploads(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    first = ScriptedPublisher()
    subject, spool, _ = processor(tmp_path, first, clock)
    job = drop(spool, csv(range(1, 6)))
    (job.path.parent.parent / "incoming").mkdir(exist_ok=True)
    unfinished = spool.new_upload("hes-north")
    unfinished.write_bytes(b"half a fi")
    content = job.path.read_bytes()
    await subject.process(job)

    # As if the service had died after publishing but before the receipt: the file is back in the spool.
    again = drop(spool, content)
    recovered = spool.recover()
    assert [(j.user, j.name, j.upload_id) for j in recovered] == [("hes-north", "readings.csv", again.upload_id)]
    assert not unfinished.exists()
    second = ScriptedPublisher()
    restarted, _, _ = processor(tmp_path, second, clock)
    await restarted.process(recovered[0])
    assert [r.value for r in second.published] == [r.value for r in first.published]


@pytest.mark.parametrize("content", [b"", b"meterpoint,value\n571313180400000025,1\n", b"\xff\xfe\n"])
async def test_a_file_without_a_usable_header_is_rejected_whole(tmp_path: Path, content: bytes) -> None:
    publisher = ScriptedPublisher()
    subject, spool, registry = processor(tmp_path, publisher, FakeClock())
    receipt = orjson.loads((await subject.process(drop(spool, content))).read_bytes())
    assert (receipt["status"], receipt["reason"], receipt["lines"]) == ("rejected", "invalid_header", [])
    assert [r.topic for r in publisher.published] == ["meter.readings.v1.dlq"]
    assert registry.get_sample_value("gridhub_collection_ftp_files_total", {"outcome": "rejected"}) == 1


class CountingPublisher:
    """Keeps nothing: counts records, so that memory measured is the processor's own."""

    def __init__(self) -> None:
        self.records = 0

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        self.records += len(records)


async def test_a_file_is_streamed_not_loaded_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    import tracemalloc

    publisher = CountingPublisher()
    spool = Spool(tmp_path)
    subject = FileProcessor(
        FtpSettings(root=tmp_path, batch_lines=250),
        spool=spool,
        publisher=publisher,
        pipeline=PIPELINE,
        quota=Quota(1e9, 1e9),
        metrics=CollectionMetrics(CollectorRegistry()),
        wall_clock=lambda: NOW,
    )

    def drop_lines(lines: int, name: str) -> FileJob:
        upload = spool.new_upload("hes-north")
        with upload.open("w") as file:  # written line by line: the test does not hold the file either
            file.write(HEADER + "\n")
            for n in range(lines):
                end = datetime(2020, 1, 1, tzinfo=UTC) + (n + 1) * timedelta(minutes=15)
                file.write(f"{METERPOINT},active_import,{end:%Y-%m-%dT%H:%M:%SZ},PT15M,0.5,kWh,measured\n")
        return spool.commit("hes-north", upload, name, NOW)

    async def peak_while_processing(job: FileJob) -> int:
        tracemalloc.start()
        try:
            await subject.process(job)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    await subject.process(drop_lines(500, "warm-up.csv"))  # one-time allocations (caches, threads) out of the way
    small, large = drop_lines(1000, "small.csv"), drop_lines(20_000, "large.csv")
    large_size = large.path.stat().st_size
    small_peak = await peak_while_processing(small)
    large_peak = await peak_while_processing(large)
    assert publisher.records == 21_500
    assert large_size > 1_500_000
    # Twenty times the lines, about the same memory: one batch at a time, the receipt goes to disk.
    assert large_peak < small_peak * 1.5 + 256 * 1024, (small_peak, large_peak, large_size)


async def test_lines_out_of_the_partners_scope_are_rejected_or_held_in_the_receipt(tmp_path: Path) -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher()
    other = "571313180400009172"
    view = assigned_view(other, source="someone-else", kind="ftp_partner")
    registry = CollectorRegistry()
    spool = Spool(tmp_path)
    subject = FileProcessor(
        FtpSettings(root=tmp_path, batch_lines=4),
        spool=spool,
        publisher=publisher,
        pipeline=Pipeline(rules=ValidationRules(), event_source="/gridhub/collection", max_batch_items=100, scope=view),
        quota=Quota(1000, 1000, clock=clock),
        metrics=CollectionMetrics(registry),
        clock=clock,
        wall_clock=lambda: NOW,
    )
    content = csv(range(1, 3)) + f"{other},active_import,2025-03-01T00:15:00Z,PT15M,1.0,kWh,measured\n".encode()
    receipt = orjson.loads((await subject.process(drop(spool, content))).read_bytes())
    assert [(line["status"], line.get("reason")) for line in receipt["lines"]] == [
        ("held", "unknown_meterpoint"),
        ("held", "unknown_meterpoint"),
        ("rejected", "not_in_scope"),  # another partner's meterpoint
    ]
    assert (receipt["accepted"], receipt["rejected"], receipt["held"]) == (0, 1, 2)
    assert {record.topic for record in publisher.published} == {"meter.readings.v1.dlq"}
