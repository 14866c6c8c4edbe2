"""A lazy-start reverse proxy for containers: one manager per key, pluggable backends."""
