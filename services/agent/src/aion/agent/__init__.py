"""aion agent service: the agent registry and the task lifecycle."""

__all__: list[str] = []
