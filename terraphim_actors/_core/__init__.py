"""Layer 0: plain data (ids, messages, notifications) and argument checks; no tasks, no system."""
