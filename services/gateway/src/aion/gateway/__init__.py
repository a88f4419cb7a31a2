"""aion gateway: the public gRPC API (aion.v1)."""

__all__: list[str] = []
