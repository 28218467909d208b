"""Run every benchmark with its default parameters (`make bench`)."""

import sys

from bench import flowcontrol

if __name__ == "__main__":
    sys.exit(flowcontrol.main(sys.argv[1:]))
