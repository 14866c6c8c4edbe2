"""Cold start to first 200 through the proxy vs the runtime's floor: `python -m bench.cold_start` (harness.py),
with the swarm, startup-boost and pause variants beside it."""
