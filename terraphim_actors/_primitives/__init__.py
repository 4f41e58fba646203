"""Layer 1: Trio-level building blocks and plain policies (mailbox, reply slots, timers, dedup
window, circuit breaker, balancing); they know envelopes, not agents."""
