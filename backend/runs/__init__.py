"""Runs: validated run configs queued for a worker, their progress, metrics and outputs."""
