"""What the benchmarks share and the tests may import (the tests import no other bench module's internals).

- common: servers, load generators (wrk, the open loop), ports, CPU pinning, the SUMMARY line
- cluster: an etcd and proxy replicas on 127.0.0.1 (bench.failover, the cluster tests)
- fence: a frozen owner's round (bench.failover --fence, tests/engines/test_cluster_fence.py)
- nginx: the reference nginx/haproxy configs, every nginx.conf built on one frame (bench.overhead,
  bench.protocols, bench.protocols_h2; the conformance suites' nginx)
- launcher: `python -m bench.lib.launcher`, a proxy process on a given config and upstream
- openloop: `python -m bench.lib.openloop`, an open-loop load generator process
- grpc_upstream: `python -m bench.lib.grpc_upstream`, the gRPC upstream (bench.protocols_h2, the HTTP/2 tests)
"""
