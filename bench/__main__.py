"""Run every benchmark (`make bench`), each in a process of its own, and write bench/results/README.md.

    uv run python -m bench                     # scale 1: about 15 minutes on 2 cores; reports in bench/results/
    uv run python -m bench --scale 3           # a larger run: durations and volumes x3, roughly three times as long
    GRIDHUB_BENCH_SCALE=3 uv run python -m bench   # the same (--scale wins over the environment)
    uv run python -m bench --quick             # every benchmark as a smoke test (no scale); writes nothing unless --out
    uv run python -m bench --only demo --only domino

Each benchmark gets the scale as ``--scale`` and says in its report what it multiplies (readings, seconds per phase,
overload seconds...); rates stay as they are. Prints the machine first, then each benchmark's report (its parameters,
absolute figures and ratios), then the headline figures, which also go into the README of the results folder with
links to every report and plot (and the scale, when it is not 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SCALE_ENV, add_scale_option, machine, scale_of


@dataclass(frozen=True)
class Benchmark:
    name: str
    measures: str
    report: str  # file name in the results folder
    plots: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark("flowcontrol", "flow-control policies and the REST middleware against none", "flowcontrol.md"),
    Benchmark("readside", "read-side materialization against aiokafka -> COPY; produce -> queryable", "readside.md"),
    Benchmark(
        "collection", "REST and MQTT ingest against a raw aiokafka batch producer; RSS under load", "collection.md"
    ),
    Benchmark(
        "vee",
        "VEE validation against the read side's projection of the same readings; reading -> validated interval",
        "vee.md",
    ),
    Benchmark(
        "demo",
        "the talk's demo: fast producer, fast/slow consumers, drop_new, backpressure",
        "demo.md",
        ("demo.png", "demo-a.png", "demo-b.png", "demo-c.png", "demo-d.png"),
    ),
    Benchmark(
        "domino",
        "slow customers SOAP behind work orders: flow control off, edge only, on",
        "domino.md",
        ("domino.png",),
    ),
    Benchmark(
        "pipeline",
        "REST -> Kafka -> read side: sustainable rate, latency at 25/50/80 %, 10x overload (60 s at scale 1)",
        "pipeline.md",
        ("pipeline.png",),
    ),
)
BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}
ROOT = Path(__file__).parent.parent


@dataclass
class Outcome:
    benchmark: Benchmark
    returncode: int | None  # None: not run (not selected, or not in this checkout)
    seconds: float = 0.0


def available(benchmark: Benchmark) -> bool:
    return importlib.util.find_spec(f"bench.{benchmark.name}") is not None


def child_command(benchmark: Benchmark, quick: bool, out: Path | None, scale: float) -> list[str]:
    """The child's command line: ``python -m bench.<name>`` with this run's options."""
    line = [sys.executable, "-m", f"bench.{benchmark.name}"]
    if quick:
        line.append("--quick")
    else:
        line += ["--scale", repr(scale)]
    if out is not None:
        # The older benchmarks take the report's file, the newer ones a folder for report and plots.
        line += ["--out", str(out / benchmark.report if not benchmark.plots else out)]
    return line


def run(benchmark: Benchmark, quick: bool, out: Path | None, scale: float) -> Outcome:
    """``python -m bench.<name>``, its output passed through."""
    if not available(benchmark):
        print(f"\n## {benchmark.name}: not in this checkout, skipped\n", flush=True)
        return Outcome(benchmark, None, 0.0)
    command = child_command(benchmark, quick, out, scale)
    print(f"\n{'=' * 100}\n$ {' '.join(command[1:])}\n", flush=True)
    started = time.monotonic()
    # The scale goes on the command line only: with --quick the child is not told it again (nor warns again).
    environment = {name: value for name, value in os.environ.items() if name != SCALE_ENV}
    result = subprocess.run(command, cwd=ROOT, env=environment, check=False)
    return Outcome(benchmark, result.returncode, time.monotonic() - started)


# --- headline figures, read back from the reports ---------------------------------------------------------------------


def _find(pattern: str, text: str) -> re.Match[str] | None:
    return re.search(pattern, text, re.MULTILINE)


def _flowcontrol(text: str, folder: Path) -> str:
    in_process = _find(r"\*\*ratio guarded / plain\*\* \| \*\*([\d.]+)\*\* \(\+([\d.]+) µs\)", text)
    wire = _find(r"\*\*ratio guarded / plain\*\* \| \*\*([\d.]+)\*\* \| \*\*[\d.]+\*\* \| \| \*\*([\d.]+)\*\*", text)
    parts = []
    if in_process:
        parts.append(f"middleware: ratio {float(in_process[1]):.2f} per request in process (+{in_process[2]} µs)")
    if wire:
        parts.append(
            f"server CPU per request ratio {float(wire[2]):.2f} over HTTP, throughput ratio {float(wire[1]):.2f}"
        )
    return "; ".join(parts)


def _readside(text: str, folder: Path) -> str:
    ratio = _find(r"\*\*Ratio read side / baseline: ([\d.]+)\*\*", text)
    rows = re.findall(r"^\| (baseline|read side)[^|]*\| [\d.]+ \| ([\d,]+) \|", text, re.MULTILINE)
    latency = _find(r"^\| (\d+) ms \| (\d+) ms \| (\d+) ms \|", text)
    parts = []
    if ratio:
        rates = {name: value for name, value in rows}
        parts.append(
            f"materialization at ratio {ratio[1]} of aiokafka -> COPY ({rates.get('read side', '?')} vs "
            f"{rates.get('baseline', '?')} readings/s)"
        )
    if latency:
        parts.append(f"produce -> queryable p50 {latency[1]} ms, p99 {latency[2]} ms")
    return "; ".join(parts)


def _vee(text: str, folder: Path) -> str:
    ratio = _find(r"\*\*Ratio VEE / read side: ([\d.]+)\*\*", text)
    rows = dict(re.findall(r"^\| (read side|VEE):[^|]*\| [\d.]+ \| ([\d,]+) \|", text, re.MULTILINE))
    latency = _find(r"^\| (\d+) ms \| (\d+) ms \| (\d+) ms \| ([\d,]+) readings/s \| (yes|\*\*no\*\*) \|", text)
    parts = []
    if ratio:
        parts.append(
            f"validation at ratio {ratio[1]} of the read side's projection ({rows.get('VEE', '?')} vs "
            f"{rows.get('read side', '?')} readings/s, same readings, same run)"
        )
    if latency:
        behind = "" if latency[5] == "yes" else ", VEE falling behind even there"
        parts.append(
            f"reading -> validated interval p50 {latency[1]} ms, p99 {latency[2]} ms at {latency[4]} readings/s{behind}"
        )
    return "; ".join(parts)


def _collection(text: str, folder: Path) -> str:
    parts = []
    for path, label in (("REST", "REST"), ("MQTT", "MQTT")):
        row = _find(rf"^\| {path}[^|]*\| ([\d.]+k) \| ([\d.]+k) \| ([\d.]+) \|", text)
        if row:
            parts.append(
                f"{label} ingest {row[1]} readings/s, ratio {row[3]} of a raw aiokafka batch producer ({row[2]})"
            )
    scope = _find(r"^Scope check .*\*\*ratio ([\d.]+)\*\*", text)
    if scope:
        parts.append(f"scope check: REST ratio {scope[1]} with / without")
    fairness = _find(r"\*\*fairness: beside / alone\*\* \| \*\*([\d.]+)\*\*", text)
    if fairness:
        parts.append(f"MQTT fairness with a device at 20x its quota {fairness[1]}")
    before, peak = _find(r"^\| before \| (\d+) \|", text), _find(r"^\| peak during the overload \| (\d+) \|", text)
    if before and peak:
        parts.append(f"RSS under 10x REST load {before[1]} -> {peak[1]} MiB")
    return "; ".join(parts) or _generic(text, folder)


def _generic(text: str, folder: Path) -> str:
    """Bold ratio lines of a report whose layout this file does not know."""
    found = [line.strip() for line in text.splitlines() if "**" in line and "ratio" in line.lower()]
    return "; ".join(re.sub(r"\s+", " ", line.replace("**", "")).strip("| ") for line in found[:3])


def _demo(text: str, folder: Path) -> str:
    data = _json(folder / "demo.json")
    if not data:
        return ""
    b, c, d = data.get("b", {}), data.get("c", {}), data.get("d", {})
    return (
        f"(b) unbounded: {b.get('slow_in_memory', 0):,} readings in memory at the end, committed but unhandled; "
        f"(c) drop_new: {c.get('lost', 0):,} of {c.get('accepted', 0):,} lost (dropped, counted); "
        f"(d) backpressure: {d.get('lost', 0)} of {d.get('accepted', 0):,} lost, producer slowed by 429s "
        "(reconciled by reading id)"
    )


def _domino(text: str, folder: Path) -> str:
    data = _json(folder / "domino.json")
    if not data:
        return ""
    parts = []
    for mode, figures in data.items():
        parts.append(
            f"{mode}: creates answered in time {100 * figures['create_ok']:.0f} %, crews' reads ok "
            f"{100 * figures['read_ok']:.0f} %, customer centre ok {100 * figures['centre_ok']:.0f} %, "
            f"RSS +{figures['rss_growth']:.0f} MiB"
        )
    return "; ".join(parts)


def _pipeline(text: str, folder: Path) -> str:
    data = _json(folder / "pipeline.json")
    if not data:
        return ""
    o = data["overload"]

    def peak(service: str) -> float:
        return float(max(o[f"{service}_rss_peak_first_half"], o[f"{service}_rss_peak_second_half"]))

    latency = ", ".join(
        f"{row['share']:.0%}: p50 {row['p50'] * 1000:.0f} / p99 {row['p99'] * 1000:.0f} ms" for row in data["latency"]
    )
    return (
        f"sustainable {data['sustainable']:,.0f} readings/s; arrival -> queryable {latency}; 10x overload: "
        f"{o['accepted'] / max(o['offered'], 1):.0%} admitted, **{o['lost']} lost** of {o['acked_total']:,} "
        f"acknowledged, p99 of admitted {o['p99']:.1f} s, RSS ingress {o['ingress_rss_start']:.0f} -> "
        f"{peak('ingress'):.0f} MiB, read side {o['readside_rss_start']:.0f} -> {peak('readside'):.0f} MiB, "
        f"recovered in {o['recovered_after']:.1f} s"
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


HEADLINES: dict[str, Callable[[str, Path], str]] = {
    "flowcontrol": _flowcontrol,
    "collection": _collection,
    "readside": _readside,
    "vee": _vee,
    "demo": _demo,
    "domino": _domino,
    "pipeline": _pipeline,
}


def _run_line(text: str) -> str:
    match = _find(r"^Run (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text)
    return match[1] if match else "?"


def readme(folder: Path, outcomes: list[Outcome], quick: bool, total: float, scale: float = 1.0) -> str:
    info = machine()
    option = " --quick" if quick else "" if scale == 1 else f" --scale {scale:g}"
    lines = [
        "# Benchmark results" + (" (quick smoke run: not measurements)" if quick else ""),
        "",
        f"Collected {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m bench{option}` "
        f"({total:.0f} s) on {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['os']}, "
        f"Python {info['python']}. Kafka, PostgreSQL and the benchmarks share the machine; judge by the ratios.",
        "",
    ]
    if scale != 1 and not quick:
        lines += [
            f"**Scale {scale:g}**: the benchmarks run this time ran their durations and volumes x{scale:g} of the "
            "default run, rates unchanged; each report's parameters say what its scale multiplies (reports of an "
            "earlier run state their own).",
            "",
        ]
    lines += [
        "| benchmark | measures | run (UTC) | headline | report | plots | took |",
        "|---|---|---|---|---|---|---:|",
    ]
    for outcome in outcomes:
        benchmark = outcome.benchmark
        report = folder / benchmark.report
        text = report.read_text() if report.exists() else ""
        if outcome.returncode is None:
            headline = HEADLINES.get(benchmark.name, _generic)(text, folder) if text else "not run"
            took = "earlier run" if text else "-"
        elif outcome.returncode != 0:
            headline, took = f"**failed (exit {outcome.returncode})**", f"{outcome.seconds:.0f} s"
        else:
            headline = HEADLINES.get(benchmark.name, _generic)(text, folder) or "see the report"
            took = f"{outcome.seconds:.0f} s"
        link = f"[{benchmark.report}]({benchmark.report})" if text else "-"
        plots = ", ".join(f"[{plot}]({plot})" for plot in benchmark.plots if (folder / plot).exists()) or "-"
        lines.append(
            f"| {benchmark.name} | {benchmark.measures} | {_run_line(text) if text else '-'} | {headline} | {link} | "
            f"{plots} | {took} |"
        )
    lines += ["", "The demo plot: [demo.png](demo.png) (one column per scenario).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark as a smoke test, not a measurement")
    parser.add_argument("--only", choices=sorted(BY_NAME), action="append", help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, help=f"folder for reports, plots and README.md (default: {RESULTS})")
    add_scale_option(parser, "every benchmark's durations and volumes")
    args = parser.parse_args(argv)
    scale = scale_of(parser, args)
    selected = [BY_NAME[name] for name in args.only] if args.only else list(BENCHMARKS)
    info = machine()
    print(f"Machine: {info['cores']} cores, {info['cpu']}, {info['memory']}, {info['os']}, Python {info['python']}")
    mode = " (quick)" if args.quick else f" (scale {scale:g})"
    print("Benchmarks: " + ", ".join(b.name for b in selected) + mode, flush=True)
    started = time.monotonic()
    ran = {benchmark.name: run(benchmark, args.quick, args.out, scale) for benchmark in selected}
    outcomes = [ran.get(benchmark.name) or Outcome(benchmark, None) for benchmark in BENCHMARKS]
    total = time.monotonic() - started
    folder = args.out or (None if args.quick else RESULTS)
    print(f"\n{'=' * 100}\nAll benchmarks took {total:.0f} s.")
    if folder is not None:
        text = readme(folder, outcomes, args.quick, total, scale)
        (folder / "README.md").write_text(text)
        print(text)
        print(f"written to {folder / 'README.md'}")
    failed = [o.benchmark.name for o in outcomes if o.returncode not in (0, None)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
