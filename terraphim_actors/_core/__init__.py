"""Layer 0: plain data (ids, messages, notifications, reply slots and reply addresses,
settlements), the seams between the layers as protocols, argument checks, the codec and the
instrument registry; no tasks, no system."""
