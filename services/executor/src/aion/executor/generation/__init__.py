"""Text generation on llama.cpp, from admission to decoded text, layer by layer.

- ``scheduler``: admission (the queue limit) and the slots of the streams
  decoded together; the load figures of generation.
- ``llama_backend``: the ``backend.GenerationBackend`` over llama.cpp: asyncio
  streams handed to the decode loop's thread and back.
- ``decode_loop``: ``DecodeLoop``, the one thread that decodes every open
  stream together (continuous batching).
- ``gguf_model``: the GGUF model, its context, tokenizer, chat template and
  samplers, over llama.cpp's C API.
- ``stop_sequences``: stop sequences over streamed text.
"""

__all__: list[str] = []
