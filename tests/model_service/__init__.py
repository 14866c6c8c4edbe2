"""The model service (python -m model_service): parity, routes, batching, debug routes, hostile input."""
