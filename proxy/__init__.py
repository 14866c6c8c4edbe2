"""A lazy-start reverse proxy for containers: one manager per key, pluggable backends."""

__version__ = "0.1.0"  # the one place the version is declared: pyproject, --version and build_info read it
