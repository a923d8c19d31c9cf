"""Models: uploaded teachers (and students produced by runs), versioned by name within a team."""
