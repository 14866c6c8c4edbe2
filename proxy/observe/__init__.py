"""What the proxy tells about itself: metrics, the request log, logs, usage, webhooks, readiness."""
