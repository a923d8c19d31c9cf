"""The audit log: who created, changed, deleted, cancelled or downloaded what in a team, and when."""
