"""aion gateway."""
