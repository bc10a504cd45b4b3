"""Shared fixtures: the loopback Hugging Face Hub (see zoo/testing/fixtures.py)."""
from zoo.testing.fixtures import *  # noqa: F401,F403  (pytest collects the fixtures by name)
