"""aion knowledge service: documents, chunks and search per tenant and knowledge base."""

__all__: list[str] = []
