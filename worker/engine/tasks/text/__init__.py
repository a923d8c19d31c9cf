"""Text tasks (issue 12): uploads of text read, bounded and tokenised (`data`)."""
