"""The proxy in-process on the stub backend (real sockets, real aiohttp): routing, limits, admin API, wire
conformance against nginx, metrics, errors, request ids."""
