"""aion SDK."""
