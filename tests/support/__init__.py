"""Helpers the tests share (no tests here): admin clients, the conformance fronts and upstream, the engines'
sockets and images, Prometheus, small upstream servers. Fixtures stay in tests/conftest.py."""
