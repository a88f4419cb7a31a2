"""aion executor: model inference (llama.cpp on CPU or CUDA), one model per executor."""

__all__: list[str] = []
