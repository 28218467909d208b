"""Per-task bookkeeping for `async with policy:` when a call needs state between enter and exit.

A breaker or limiter is shared by many tasks, so the start time of one call cannot live on the
object. Each task has its own copy of the context, so a context variable holds a stack of
(owner, ticket) pairs; nesting different policies in one task pops the right ticket.
"""

from __future__ import annotations

from contextvars import ContextVar

_TICKETS: ContextVar[tuple[tuple[object, object], ...]] = ContextVar("flowcontrol_tickets", default=())


def push(owner: object, ticket: object) -> None:
    """Remember `ticket` for the current task's call through `owner`."""
    _TICKETS.set((*_TICKETS.get(), (owner, ticket)))


def pop(owner: object) -> object:
    """Take the newest ticket of `owner` in the current task."""
    stack = _TICKETS.get()
    for index in range(len(stack) - 1, -1, -1):
        if stack[index][0] is owner:
            _TICKETS.set(stack[:index] + stack[index + 1 :])
            return stack[index][1]
    raise RuntimeError("__aexit__ without a matching __aenter__ in this task")
