"""One random-init AutoencoderKL builder (zoo.models.flux_vae.build_vae) for BAGEL/SRUM and Selftok."""
import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.flux_vae import build_vae
from zoo.vision.selftok.builder import TINY_VAE_CONFIG
from zoo.vision.selftok.vae import build_vae as selftok_build_vae


def test_selftok_builds_the_same_vae_with_zoo_attention():
    torch.manual_seed(0)
    ours = selftok_build_vae(dict(TINY_VAE_CONFIG))
    torch.manual_seed(0)
    shared = build_vae(TINY_VAE_CONFIG)
    a, b = ours.state_dict(), shared.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(ours).__name__ == "AutoencoderKL"
    processors = {type(p).__name__ for p in ours.attn_processors.values()}
    assert processors == {type(p).__name__ for p in shared.attn_processors.values()}


def test_an_unknown_argument_names_where_the_config_came_from():
    with pytest.raises(ConfigError, match=r"^selftok vae.config has an argument AutoencoderKL does not take: .*bogus"):
        selftok_build_vae({**TINY_VAE_CONFIG, "bogus": 1})
    with pytest.raises(ConfigError, match=r"^vae config has an argument AutoencoderKL does not take: .*bogus"):
        build_vae({**TINY_VAE_CONFIG, "bogus": 1})
