"""Saved comparisons of runs, shared with the team."""
