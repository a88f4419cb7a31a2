"""aion executor."""
