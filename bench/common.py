"""Helpers shared by the benchmarks and the aggregator: the run's scale (``--scale`` / ``GRIDHUB_BENCH_SCALE``), the
machine, RSS, an in-process uvicorn, percentiles, rates from cumulative counters, and matplotlib on the Agg backend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

RESULTS = Path(__file__).parent / "results"
_PAGE = os.sysconf("SC_PAGE_SIZE")
SCALE_ENV = "GRIDHUB_BENCH_SCALE"

BENCH_TENANT = "5790000000012"
"""The grid company the benchmarks' keys and meterpoints belong to."""


# --- the scale of a run -----------------------------------------------------------------------------------------------


def parse_scale(text: str) -> float:
    """``text`` as a scale factor: a finite number above 0, else `argparse.ArgumentTypeError` saying why."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a number above 0, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"scale must be a finite number above 0, not {text!r}")
    return value


def add_scale_option(parser: argparse.ArgumentParser, scales: str) -> None:
    """``--scale FACTOR``; ``scales`` says what the factor multiplies in this benchmark."""
    parser.add_argument(
        "--scale",
        type=parse_scale,
        metavar="FACTOR",
        help=f"multiply {scales} by FACTOR (> 0; default: ${SCALE_ENV}, else 1); rates stay; --quick ignores it",
    )


def scale_of(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> float:
    """The run's scale: ``--scale``, else ``$GRIDHUB_BENCH_SCALE``, else 1; 1 under ``--quick`` (a smoke test stays
    tiny). A bad value in the environment is a usage error, as a bad option is."""
    scale: float | None = args.scale
    if scale is None:
        text = (os.environ if environ is None else environ).get(SCALE_ENV, "").strip()
        try:
            scale = parse_scale(text) if text else 1.0
        except argparse.ArgumentTypeError as error:
            parser.error(f"{SCALE_ENV}: {error}")
    if getattr(args, "quick", False):
        if scale != 1:
            emit(f"--quick ignores the scale ({scale:g}): a smoke test stays tiny")
        return 1.0
    return scale


def scaled_count(value: int, factor: float, *, multiple: int = 1) -> int:
    """``value`` times ``factor``, rounded to a ``multiple`` (at least one ``multiple``)."""
    return max(multiple, round(value * factor / multiple) * multiple)


def scale_line(scale: float, quick: bool, scales: str) -> str:
    """The report's parameter line for the scale."""
    if quick:
        return "- scale: does not apply to --quick"
    if scale == 1:
        return f"- scale: 1, the default (`--scale` multiplies {scales})"
    return f"- scale: {scale:g} ({scales} x{scale:g} of the default run; rates unchanged)"


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, OS and Python: what every report states first."""
    memory, cpu = "?", platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "memory": memory,
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def machine_line() -> str:
    """One line for the top of a report."""
    info = machine()
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {info['cores']} cores ({info['cpu']}), {info['memory']}, "
        f"Python {info['python']}; Kafka, PostgreSQL and the benchmark share the machine."
    )


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default) in MiB, from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/statm").read_text().split()
    return int(fields[1]) * _PAGE / 2**20


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (any order); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def rates(times: Sequence[float], counts: Sequence[float], window: float = 1.0) -> list[float]:
    """Per-second rate of a cumulative counter over the trailing ``window`` seconds, one value per sample."""
    result: list[float] = []
    start = 0
    for index, now in enumerate(times):
        while start < index and times[start] < now - window:
            start += 1
        span = now - times[start]
        result.append((counts[index] - counts[start]) / span if span > 0 else 0.0)
    return result


def bound_socket() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 and an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "on") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn (httptools) on an ephemeral port of this event loop; yields its base URL."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan=lifespan, log_level="warning", access_log=False, http="httptools", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()  # raises why it stopped
            raise RuntimeError("uvicorn stopped before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start within 30 s")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display; PNG files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def emit(text: str) -> None:
    """Print progress to stderr (stdout carries the report)."""
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def private_topics(bootstrap: str, names: Sequence[str], *, partitions: int = 6) -> AsyncIterator[list[str]]:
    """Create ``names`` for one run and delete them after it: a benchmark's load never lands in the platform's
    topics, where ``make run``'s read side would have to chew through it."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names])
        try:
            yield list(names)
        finally:
            await admin.delete_topics(list(names))
    finally:
        await admin.close()
