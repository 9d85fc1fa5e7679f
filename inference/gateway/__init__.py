"""The OpenAI-compatible gateway: `python -m inference.gateway.app`."""
