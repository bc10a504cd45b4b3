"""MAGVIT-v2 tokenizer: official key names, lookup-free codes, strict loading, attention through zoo."""
import pytest
import torch

from zoo.errors import ConfigError, ImageInputError
from zoo.models.magvitv2 import MAGVITV2_CONFIG, LFQuantizer, MAGVITv2

TINY = {"encoder": {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": [1, 1], "attn_resolutions": [16], "resolution": 16,
                    "z_channels": 4},
        "decoder": {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": [1, 1], "attn_resolutions": [], "resolution": 16,
                    "z_channels": 4},
        "codebook_dim": 4, "norm_groups": 8}


def test_official_config_has_the_showlab_magvitv2_keys():
    keys = set(MAGVITv2(MAGVITV2_CONFIG).state_dict())
    # a sample of the released checkpoint's names (showlab/Show-o:models/modeling_magvitv2.py, common_modules.py)
    expected = {
        "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.3.conv2.bias",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.3.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight", "encoder.mid.attn_1.proj_out.bias", "encoder.mid.block_2.conv1.weight",
        "encoder.norm_out.weight", "encoder.conv_out.weight", "encoder.quant_conv.weight",
        "decoder.post_quant_conv.weight", "decoder.conv_in.weight", "decoder.mid.attn_1.k.weight",
        "decoder.up.4.block.2.conv1.weight", "decoder.up.1.upsample.conv.weight", "decoder.up.3.block.0.nin_shortcut.weight",
        "decoder.norm_out.bias", "decoder.conv_out.weight", "quantize.embedding", "quantize.power_vals",
    }
    assert expected <= keys
    assert len(keys) == 382  # the official module's state dict has 382 entries
    assert "encoder.down.4.downsample.conv.weight" not in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert not any(".attn.0." in k for k in keys)  # attn_resolutions [5] never matches a level: no level attention


def test_lfq_codes_are_the_sign_bits_msb_first():
    q = LFQuantizer(3)
    assert q.embedding.tolist()[5] == [1.0, -1.0, 1.0]
    assert q.power_vals.tolist() == [4, 2, 1]
    z = torch.tensor([0.3, -0.1, 0.0]).view(1, 3, 1, 1)  # 0 counts as negative
    assert q.get_indices(z).item() == 4
    out = q(z)
    assert out["z"].flatten().tolist() == [1.0, -1.0, -1.0]
    assert q.get_codebook_entry(torch.tensor([[4]])).flatten().tolist() == [1.0, -1.0, -1.0]


def test_codes_decode_and_straight_through_gradient():
    torch.manual_seed(0)
    vq = MAGVITv2(TINY)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = vq.get_code(x)
    assert codes.shape == (2, 64) and codes.dtype == torch.long and 0 <= int(codes.min()) and int(codes.max()) < 16
    assert vq.decode_code(codes).shape == (2, 3, 16, 16)
    out = vq(x)
    loss = (out["reconstruction"] - x).pow(2).mean() + out["quantizer_loss"] + out["entropy_loss"]
    loss.backward()
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # gradient passes the quantiser
    assert torch.equal(out["indices"], codes)


def test_strict_load_and_bad_inputs():
    a, b = MAGVITv2(TINY), MAGVITv2(TINY)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(a.get_code(x), b.get_code(x))
    with pytest.raises(ImageInputError):
        a.get_code(torch.rand(1, 3, 15, 16))
    with pytest.raises(ConfigError):
        MAGVITv2({**TINY, "norm_groups": 5})
    with pytest.raises(ConfigError):
        a.decode_code(torch.tensor([[16] * 64]))
