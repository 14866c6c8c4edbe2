#!/usr/bin/env bash
# Debian tools the suite uses besides the daemons: nginx (the conformance reference), promtool (metrics
# lint, from the prometheus package), wrk (benchmark smoke runs), etcd (the cluster tests start their own) and
# docker-compose (tests/deploy/test_compose.py runs deploy/compose.yaml's proxy) and busybox-static (the README's
# FROM scratch static-site example, tests/deploy/test_your_app.py), chromium + chromium-driver (headless browser tests).
# Idempotent; installs only what is missing. `bash .ci/tools.sh [all|build]`
set -euo pipefail
STATE_DIR=${LAZY_PROXY_DAEMONS_DIR:-/tmp/lazy-proxy-daemons}
mkdir -p "$STATE_DIR"
log() { printf '[tools] %s\n' "$*" >&2; }
retry() { local n; for n in 1 2 3; do "$@" && return 0; log "attempt $n failed: $*"; sleep $((n * 5)); done; return 1; }

missing=()
# The compiled wheel's build tools first: `tools.sh build` installs only these, so .ci/run can start the wheel early.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)  # tests/proxy/test_compiled.py: mypyc (python -m proxy.compile) compiles C
[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing+=(python3-dev)  # ... against Python.h
if [ "${1:-all}" != build ]; then
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)  # HTTP/2 and TLS tests, bench/protocols*.py
  command -v curl >/dev/null 2>&1 || missing+=(curl)  # tests/proxy/test_h2.py (--http2-prior-knowledge, --http2)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server etcd-client)  # tests start their own (marker etcd)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the face's browser tests (tests/proxy/test_face_browser.py)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # bench/protocols.py (s_time), tests/proxy/test_tls.py
fi
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if [ ! -f "$STATE_DIR/apt-updated" ]; then
  retry apt-get update -qq
  touch "$STATE_DIR/apt-updated"
fi
log "installing ${missing[*]}"
# policy-rc.d keeps the packages' own services (nginx on :80, prometheus on :9090, etcd on :2379) from starting.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
retry apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
