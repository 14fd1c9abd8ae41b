"""Health probes: what the supervisor asks of a running instance, always under a timeout."""
