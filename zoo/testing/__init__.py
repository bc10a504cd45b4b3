"""Test helpers shipped with zoo: a loopback Hugging Face Hub and pytest fixtures around it.

``zoo.testing.hub_server.LoopbackHub`` is stdlib-only; ``zoo.testing.fixtures`` needs pytest and
``huggingface_hub`` and is imported explicitly (``from zoo.testing.fixtures import *`` in a conftest).
"""
from zoo.testing.hub_server import LoopbackHub

__all__ = ["LoopbackHub"]
