"""One manager per key and what it uses to start, pause, watch and stop instances.

Imports only the config below it; what happens here is told upward through events."""
