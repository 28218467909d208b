"""Run every benchmark with its default parameters (`make bench`); `--quick` runs each as a smoke test."""

import sys

from bench import flowcontrol, readside

BENCHMARKS = (flowcontrol, readside)

if __name__ == "__main__":
    sys.exit(max(benchmark.main(sys.argv[1:]) for benchmark in BENCHMARKS))
