"""Teams: who belongs where, and the team-scoped queries every other domain uses."""
