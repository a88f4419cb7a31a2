"""aion router: one routing decision per task (local pool, external API, or hybrid)."""

__all__: list[str] = []
