"""Webhooks: URLs a team registers to be told, with a signed POST, when a run ends."""
