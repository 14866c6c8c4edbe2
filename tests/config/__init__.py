"""config.yaml's schema: every mistake names its field, the language (interpolation, durations), the README table."""
