"""aion operator."""
