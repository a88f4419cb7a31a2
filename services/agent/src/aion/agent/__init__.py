"""aion agent."""
