"""The admin API, its OpenAPI document and request bodies, and `python -m proxy ctl` for a shell."""
