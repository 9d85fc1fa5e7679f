"""The vLLM worker wrapper: `python -m inference.worker.wrapper --index N`."""
