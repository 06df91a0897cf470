"""A vLLM simulator: vLLM's OpenAI-compatible HTTP server as a client sees it, without a GPU."""

from sim.app import create_app
from sim.config import SimConfig

__all__ = ["SimConfig", "create_app"]
