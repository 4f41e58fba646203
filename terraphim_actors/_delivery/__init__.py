"""Layer 3: the delivery guarantees: acceptance, acknowledgement, retries, statistics and
dead letters."""
