"""One ``TimestepEmbedder`` (zoo.models.embeddings) serves MMDiT, Selftok and BAGEL's ``time_embedder``."""
import math

import pytest
import torch

from zoo.models import bagel
from zoo.models.embeddings import TimestepEmbedder, timestep_embedding


def test_features_are_cos_then_sin_of_dit_frequencies():
    out = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    f = math.exp(-math.log(10000.0) / 2)  # frequencies 1 and 10000**-0.5
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1.0), math.cos(f), math.sin(1.0), math.sin(f)]])
    assert torch.allclose(out, expected, atol=1e-7, rtol=0)


def test_features_equal_diffusers_flip_sin_to_cos_without_shift():
    """BAGEL's embedder was written against diffusers' get_timestep_embedding(flip_sin_to_cos=True,
    downscale_freq_shift=0); the shared one gives the same float32 bits."""
    from diffusers.models.embeddings import get_timestep_embedding

    torch.manual_seed(0)
    for t in (torch.rand(64), torch.linspace(0, 1, 101), torch.tensor([0.0, 1e-4, 0.5, 0.999, 1.0]),
              torch.rand(33) * 1000):
        ref = get_timestep_embedding(t.float(), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.equal(timestep_embedding(t, 256), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedder_output_equals_the_diffusers_path_in_weight_dtype(dtype):
    from diffusers.models.embeddings import get_timestep_embedding

    torch.manual_seed(1)
    embedder = TimestepEmbedder(48).to(dtype)
    t = torch.rand(50)
    ref = embedder.mlp(get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype))
    out = embedder(t)
    assert out.dtype == dtype and torch.equal(out, ref)


def test_bagel_uses_the_shared_embedder_with_its_key_names():
    assert bagel.TimestepEmbedder is TimestepEmbedder
    assert sorted(TimestepEmbedder(8).state_dict()) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight"]
