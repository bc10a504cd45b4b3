"""pytest fixtures that point the real ``huggingface_hub`` client at a loopback Hub.

Re-exported by ``tests/conftest.py`` (``from zoo.testing.fixtures import *``).

- ``hf_sandbox``: a fresh, private HF home for one test. Cache, assets, Xet cache and token paths go to
  ``tmp_path``; no token from the machine or the environment; telemetry and update checks off; Xet off
  (``HF_HUB_DISABLE_XET``: hf_xet is installed and the client would otherwise upload through Xet without
  asking the server); online; and ``ENDPOINT`` set to a closed local port, so nothing can reach the
  real Hub even by mistake.
- ``loopback_hub``: a started ``LoopbackHub`` with the client pointed at it (``ENDPOINT``, the resolve URL
  template, the module-level ``HfApi`` instance, ``HF_ENDPOINT``) and ``HF_TOKEN`` set to the hub's token.
- ``hub_offline_factory``: a callable returning a context manager under which the client behaves as with
  ``HF_HUB_OFFLINE=1``; ``hub_offline``: the same for the whole test.

huggingface_hub reads its environment once, at import (``constants.py``), so environment variables alone
do not reach an already-imported client: the fixtures patch ``huggingface_hub.constants`` (read at call
time by ``hf_hub_download``, ``snapshot_download``, ``HfApi()`` and the request hook that enforces offline
mode) and also set the environment variables, for subprocesses. Everything is undone by ``monkeypatch``.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pytest

from zoo.testing.hub_server import LoopbackHub

__all__ = ["HUB_TOKEN", "hf_sandbox", "loopback_hub", "hub_offline_factory", "hub_offline"]

HUB_TOKEN = "hf_zoo_test"
_UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"  # discard port: connections are refused at once

_CLEARED_ENV = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN", "HF_ENDPOINT",
    "HUGGINGFACE_CO_STAGING", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_STORED_TOKENS_PATH",
)


def _set_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    # `huggingface_hub.create_repo`, `upload_folder`, ... are bound methods of an HfApi built at import.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)


@pytest.fixture
def hf_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HF home under ``tmp_path`` (returned), no tokens, Xet and telemetry off, no real endpoint."""
    import huggingface_hub
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    home.mkdir()
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
        "CHECK_FOR_UPDATE_DONE_PATH": home / ".check_for_update_done",
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": home / ".check_for_skill_update_done",
        "AGENT_HARNESSES_PATH": home / ".agent_harnesses.json",
    }
    flags = {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in {**{k: str(v) for k, v in paths.items()}, **flags}.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # Modules that copied a constant into their own namespace at import.
    for module_name, attribute, value in (
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", paths["HF_HUB_CACHE"]),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", paths["HF_ASSETS_CACHE"]),
    ):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            monkeypatch.setattr(module, attribute, str(value))
    _set_endpoint(monkeypatch, _UNREACHABLE_ENDPOINT)

    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.setenv(name, str(paths[name]))
    for name in ("HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET", "HF_HUB_DISABLE_UPDATE_CHECK"):
        monkeypatch.setenv(name, "1")

    # The shared httpx client pools keep-alive connections; start and end with none.
    huggingface_hub.close_session()
    yield home
    huggingface_hub.close_session()


@pytest.fixture
def loopback_hub(hf_sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A started ``LoopbackHub`` that ``huggingface_hub`` (and ``HF_ENDPOINT`` subprocesses) talk to."""
    scratch = tmp_path / "loopback-hub"
    scratch.mkdir()
    hub = LoopbackHub(token=HUB_TOKEN, tmp_dir=str(scratch)).start()
    try:
        _set_endpoint(monkeypatch, hub.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        yield hub
    finally:
        import huggingface_hub

        huggingface_hub.close_session()
        hub.stop()


@pytest.fixture
def hub_offline_factory(hf_sandbox: Path) -> Callable[[], ContextManager[None]]:
    """``with hub_offline_factory(): ...`` runs the block as if ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import constants

    @contextlib.contextmanager
    def offline() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            # `constants.is_offline_mode()` (used by the request hook, transformers, snapshot_download)
            # returns this module attribute.
            patch.setattr(constants, "HF_HUB_OFFLINE", True)
            patch.setenv("HF_HUB_OFFLINE", "1")
            yield

    return offline


@pytest.fixture
def hub_offline(hub_offline_factory: Callable[[], ContextManager[None]]) -> Iterator[None]:
    """The whole test runs with ``huggingface_hub`` in offline mode (and a fresh, empty cache)."""
    with hub_offline_factory():
        yield
