"""The operator commands besides `run`: check, produce, outcomes, replay, verify, broker."""
