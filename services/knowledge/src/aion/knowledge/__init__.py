"""aion knowledge."""
