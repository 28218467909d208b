"""One realistic example of every event type: shown in the contracts and used by tests and simulators.

Fixed ids and times keep the generated schema files stable.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from libs.events.customers import (
    Address,
    Contact,
    CustomerKind,
    CustomerRegistered,
    CustomerUpdated,
    MeterpointLinked,
    MeterpointUnlinked,
)
from libs.events.envelope import CloudEvent, make_event
from libs.events.gsrn import with_check_digit
from libs.events.meter import MeterAlarm, MeterAlarmRaised, MeterReadingReceived, Quality, Register, Resolution, Unit
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from libs.events.series import (
    EstimationMethod,
    GapFillRequested,
    IntervalStatus,
    MeterSeriesValidated,
    PublicationReason,
    QuantityQuality,
    RuleCode,
    SeriesPoint,
)
from libs.events.workorders import (
    TimeWindow,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderResult,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderType,
)

METERPOINT = with_check_digit("57131318040000002")
"""A Danish-style GSRN (GS1 prefix 57), check digit computed."""
OTHER_METERPOINT = with_check_digit("57131318040000917")
CUSTOMER = "C-100234"
WORK_ORDER = "WO-2025-000117"
COLLECTION = "/gridhub/collection"
CUSTOMERS = "/gridhub/customers"
WORKORDERS = "/gridhub/workorders"
VEE = "/gridhub/vee"
GRID_COMPANY = "5790000000012"
"""A grid company's GLN-13 (check digit computed): the owner of the example meterpoints."""


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def _id(n: int) -> str:
    return f"3f1c2d7e-8a41-4b6f-9c0d-{n:012x}"


def example_events() -> list[CloudEvent[Any]]:
    """One event of each type, in catalogue order."""
    address = Address(street="Vestergade 12, 2. tv", postcode="8000", city="Aarhus C", country="DK")
    return [
        make_event(
            MeterReadingReceived.create(
                meterpoint_id=METERPOINT,
                register=Register.ACTIVE_IMPORT,
                interval_end=_at(1, 10, 15),
                resolution=Resolution.PT15M,
                value=0.412,
                unit=Unit.KWH,
                quality=Quality.MEASURED,
                source="collection.mqtt",
            ),
            source=COLLECTION,
            time=_at(1, 10, 16),
        ),
        make_event(
            MeterAlarmRaised.create(
                meterpoint_id=METERPOINT,
                alarm=MeterAlarm.LONG_OUTAGE,
                raised_at=_at(2, 3, 41),
                source="hes-north-01",
                details="Supply lost for 3 h 12 min on all phases",
            ),
            source=COLLECTION,
            time=_at(2, 3, 42),
        ),
        make_event(
            CustomerRegistered(
                customer_id=CUSTOMER,
                kind=CustomerKind.PERSON,
                name="Mette Hansen",
                contact=Contact(email="mette.hansen@example.dk", phone="+4520123456", address=address),
                version=1,
                grid_company=GRID_COMPANY,
            ),
            source=CUSTOMERS,
            id=_id(1),
            time=_at(3, 9),
        ),
        make_event(
            CustomerUpdated(
                customer_id="C-100871",
                kind=CustomerKind.ORGANISATION,
                name="Fjordvarme A/S",
                contact=Contact(
                    email="drift@fjordvarme.example.dk",
                    address=Address(street="Havnevej 4", postcode="9000", city="Aalborg", country="DK"),
                ),
                version=3,
            ),
            source=CUSTOMERS,
            id=_id(2),
            time=_at(3, 9, 30),
        ),
        make_event(
            MeterpointLinked(customer_id=CUSTOMER, meterpoint_id=METERPOINT, move_in=date(2025, 4, 1)),
            source=CUSTOMERS,
            id=_id(3),
            time=_at(3, 10),
        ),
        make_event(
            MeterpointUnlinked(customer_id="C-100871", meterpoint_id=OTHER_METERPOINT, move_out=date(2025, 3, 31)),
            source=CUSTOMERS,
            id=_id(4),
            time=_at(3, 10, 5),
        ),
        make_event(
            WorkOrderCreated(
                work_order_id=WORK_ORDER,
                meterpoint_id=METERPOINT,
                type=WorkOrderType.REPLACE_METER,
                description="Meter reports clock errors since its last firmware update",
            ),
            source=WORKORDERS,
            id=_id(5),
            time=_at(3, 11),
        ),
        make_event(
            WorkOrderScheduled(
                work_order_id=WORK_ORDER,
                meterpoint_id=METERPOINT,
                type=WorkOrderType.REPLACE_METER,
                crew="crew-aarhus-3",
                window=TimeWindow(start=_at(5, 7), end=_at(5, 11)),
            ),
            source=WORKORDERS,
            id=_id(6),
            time=_at(3, 14),
        ),
        make_event(
            WorkOrderStarted(
                work_order_id=WORK_ORDER,
                meterpoint_id=METERPOINT,
                type=WorkOrderType.REPLACE_METER,
                crew="crew-aarhus-3",
                started_at=_at(5, 8, 20),
            ),
            source=WORKORDERS,
            id=_id(7),
            time=_at(5, 8, 21),
        ),
        make_event(
            WorkOrderCompleted(
                work_order_id=WORK_ORDER,
                meterpoint_id=METERPOINT,
                type=WorkOrderType.REPLACE_METER,
                crew="crew-aarhus-3",
                completed_at=_at(5, 9, 5),
                result=WorkOrderResult.SUCCEEDED,
                new_meter_serial="KAM-68219934",
            ),
            source=WORKORDERS,
            id=_id(8),
            time=_at(5, 9, 6),
        ),
        make_event(
            WorkOrderCancelled(
                work_order_id="WO-2025-000131",
                meterpoint_id=OTHER_METERPOINT,
                type=WorkOrderType.DISCONNECT,
                reason="Customer paid the outstanding balance",
            ),
            source=WORKORDERS,
            id=_id(9),
            time=_at(6, 12),
        ),
        make_event(
            MeterpointRegistered(
                meterpoint_id=METERPOINT,
                grid_company=GRID_COMPANY,
                grid_area="804",
                type=MeterpointType.CONSUMPTION,
                resolution=Resolution.PT15M,
                settlement_method=SettlementMethod.FLEX,
                connection=Connection(state=ConnectionState.CONNECTED, since=date(2024, 6, 1)),
                data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-north"),
                version=1,
            ),
            source=CUSTOMERS,
            id=_id(10),
            time=_at(1, 8),
        ),
        make_event(
            MeterpointUpdated(
                meterpoint_id=OTHER_METERPOINT,
                grid_company=GRID_COMPANY,
                grid_area="804",
                type=MeterpointType.EXCHANGE,
                neighbour_grid_area="791",
                resolution=Resolution.PT1H,
                connection=Connection(state=ConnectionState.CONNECTED, since=date(2023, 1, 1)),
                data_source=DataSource(kind=SourceKind.FTP_PARTNER, id="mdm-partner"),
                version=4,
            ),
            source=CUSTOMERS,
            id=_id(11),
            time=_at(2, 8),
        ),
        make_event(_example_series(), source=VEE, time=datetime(2025, 3, 2, 6, 0, tzinfo=UTC)),
        make_event(
            GapFillRequested(
                request_id=GapFillRequested.id_of(
                    METERPOINT, Register.ACTIVE_IMPORT, _at(1, 10, 15), _at(1, 12, 15), 1
                ),
                meterpoint_id=METERPOINT,
                grid_company=GRID_COMPANY,
                data_source=DataSource(kind=SourceKind.DEVICE, id=METERPOINT),
                register=Register.ACTIVE_IMPORT,
                resolution=Resolution.PT15M,
                start=_at(1, 10, 15),
                end=_at(1, 12, 15),
                attempt=1,
                requested_at=_at(1, 13, 0),
            ),
            source=VEE,
            time=_at(1, 13, 0),
        ),
    ]


def _example_series() -> MeterSeriesValidated:
    """2025-03-01 in Copenhagen (UTC+1): 96 quarter-hours, 8 of them (10:00-12:00 local) estimated linearly."""
    points = []
    for position in range(1, 97):
        if 41 <= position <= 48:
            points.append(
                SeriesPoint(
                    position=position,
                    quantity=0.4,
                    quality=QuantityQuality.ESTIMATED,
                    status=IntervalStatus.ESTIMATED,
                    version=1,
                    method=EstimationMethod.LINEAR,
                    rules=(RuleCode.GAP,),
                )
            )
        else:
            points.append(
                SeriesPoint(
                    position=position,
                    quantity=0.412,
                    quality=QuantityQuality.AS_PROVIDED,
                    status=IntervalStatus.MEASURED,
                    version=1,
                )
            )
    day = date(2025, 3, 1)
    return MeterSeriesValidated(
        series_id=MeterSeriesValidated.id_of(METERPOINT, Register.ACTIVE_IMPORT, day, 1),
        meterpoint_id=METERPOINT,
        grid_company=GRID_COMPANY,
        grid_area="804",
        meterpoint_type=MeterpointType.CONSUMPTION,
        register=Register.ACTIVE_IMPORT,
        resolution=Resolution.PT15M,
        time_zone="Europe/Copenhagen",
        day=day,
        start=datetime(2025, 2, 28, 23, 0, tzinfo=UTC),
        end=datetime(2025, 3, 1, 23, 0, tzinfo=UTC),
        version=1,
        reason=PublicationReason.DEADLINE,
        final=False,
        points=tuple(points),
    )
