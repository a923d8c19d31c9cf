"""Webhooks as both sides need them: which addresses may be reached, and run events."""
