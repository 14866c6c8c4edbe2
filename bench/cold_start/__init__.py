"""Cold start to first 200 through the proxy vs the runtime's floor: `python -m bench.cold_start`.

One way down: __main__ (the command line) -> run (the plain docker/podman/stub run) and the variants
(swarm, boost, pause) -> proxied (the proxy under test) -> harness (floors, polling, clean-up, statistics)."""
