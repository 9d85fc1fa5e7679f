"""Tests against one real vLLM CPU worker, started once for the modules of this folder and stopped after them."""
