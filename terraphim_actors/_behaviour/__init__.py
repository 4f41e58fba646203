"""Layer 5: what users write against: Agent and Context (OTP's gen_server), refs, child specs."""
