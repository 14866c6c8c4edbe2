"""What a user runs: `python -m proxy` and its operator errors, deploy/ (compose, Prometheus rules and
dashboard), the README's "run your own app" examples, and every benchmark's smoke run."""
