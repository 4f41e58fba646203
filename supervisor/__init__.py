"""OTP supervision trees for Trio tasks (see the supervision issue)."""
