"""`python -m bench.cold_start`: the benchmark's command line (bench/cold_start/harness.py)."""

import sys

from bench.cold_start.harness import main

if __name__ == "__main__":
    sys.exit(main())
