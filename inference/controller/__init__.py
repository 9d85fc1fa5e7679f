"""The hot-swap controller: `python -m inference.controller.service`."""
