"""aion executor: model inference (llama.cpp on CPU or CUDA), one model per executor.

From the process down (``.importlinter`` holds these layers):

- ``main``: the composition root (settings → service → ``serving``).
- ``serving``: the gRPC and HTTP servers over a service, the named background
  tasks and their drain order; ``testing`` serves through it on free ports.
- ``servicer`` (gRPC, with ``convert`` for protobuf), ``http`` (the
  OpenAI-compatible API): the edges. ``load_report``: the load on Kafka.
- ``inference``: ``GenerationService`` and ``EmbeddingService``, what the
  edges call (validation, the queue, the model's life).
- ``generation``, ``embedding``: the two pipelines.
- ``validation``, ``stats``, ``backend``: requests and limits, load figures,
  and the model seams and plain types every layer shares.
- ``settings``: ``AION_EXECUTOR_*``.
"""

__all__: list[str] = []
