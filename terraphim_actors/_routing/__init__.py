"""Layer 2: from addresses to agents: the directory of names, the router, pools as groups."""
