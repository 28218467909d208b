"""The service's database as a guarded dependency: a failing PostgreSQL is a `Refused`, not a bug.

`Database.run(operation)` takes a permit of the ``workorders_postgres`` breaker, runs the operation and classifies
what went wrong. Connection failures, timeouts and shutdowns count as breaker failures and raise
`DatabaseUnavailable`; once the breaker is open, calls are refused at once (`CallNotPermitted`). Both are
`Refused`, which the consumers' delivery policy answers by pausing the partition and redelivering later (never
skipping, never dead-lettering), and the REST API by a fast 503 with ``Retry-After``. Other errors (a constraint
or a bug) are no outage: they pass through uncounted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from libs.flowcontrol.breaker import CircuitBreaker
from libs.flowcontrol.errors import Refused

T = TypeVar("T")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused or reset
    TimeoutError,  # pool acquire or connect timed out (asyncio.TimeoutError is TimeoutError)
    asyncpg.PostgresConnectionError,  # the connection died mid-statement
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, statement timeout
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


class DatabaseUnavailable(Refused):
    """PostgreSQL did not answer (down, unreachable, too slow)."""

    reason = "database_unavailable"


class DatabaseBusy(Refused):
    """A transaction lost a serialization or deadlock conflict; a retry in a moment will succeed."""

    reason = "database_busy"


class Database:
    """Runs database operations under the ``workorders_postgres`` breaker (see the module docstring)."""

    def __init__(self, breaker: CircuitBreaker, *, retry_after: float = 1.0) -> None:
        self.breaker = breaker
        self._retry_after = retry_after

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await ``operation()``; `DatabaseUnavailable`, `DatabaseBusy` or `CallNotPermitted` when it cannot run."""
        permit = self.breaker.acquire()
        try:
            result = await operation()
        except asyncpg.exceptions.TransactionRollbackError as error:
            self.breaker.release(permit)
            raise DatabaseBusy(f"database conflict: {type(error).__name__}", retry_after=0.5) from error
        except UNAVAILABLE as error:
            self.breaker.record_failure(permit)
            raise DatabaseUnavailable(
                f"database unavailable: {type(error).__name__}", retry_after=self._retry_after
            ) from error
        except asyncio.CancelledError:
            self.breaker.release(permit)
            raise
        except BaseException:
            # A domain error or a bug: the database answered, so it counts as a success for the breaker.
            self.breaker.record_success(permit)
            raise
        self.breaker.record_success(permit)
        return result
