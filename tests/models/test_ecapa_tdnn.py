"""WeSpeaker-named ECAPA-TDNN and DINO head (wenet-e2e/wespeaker:wespeaker/models/ecapa_tdnn.py)."""
import pytest
import torch

from zoo.models.dino_head import DINOHead
from zoo.models.ecapa_tdnn import ECAPATDNN, ecapa_config


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_wespeaker():
    # wenet-e2e/wespeaker:examples/voxceleb/v3/dino/README.md: ECAPA_TDNN_GLOB_c512 6.19M, c1024 14.65M.
    assert _count(ECAPATDNN(**ecapa_config("ecapa512"))) == pytest.approx(6.19e6, rel=0.01)
    assert _count(ECAPATDNN(**ecapa_config("ecapa1024"))) == pytest.approx(14.65e6, rel=0.01)


def test_wespeaker_key_names():
    keys = set(ECAPATDNN(**ecapa_config("tiny")).state_dict())
    for key in ["layer1.conv.weight", "layer1.bn.running_var", "layer2.se_res2block.0.conv.weight",
                "layer2.se_res2block.1.convs.6.weight", "layer2.se_res2block.1.bns.6.num_batches_tracked",
                "layer3.se_res2block.2.bn.bias", "layer4.se_res2block.3.linear1.weight",
                "layer4.se_res2block.3.linear2.bias", "conv.weight", "pool.linear1.weight", "pool.linear2.bias",
                "bn.running_mean", "linear.weight", "bn2.weight"]:
        assert key in keys, key
    assert not any("convs.7" in k for k in keys)  # scale 8 -> 7 convs
    big = ECAPATDNN(**ecapa_config("ecapa512")).state_dict()
    assert tuple(big["pool.linear1.weight"].shape) == (128, 4608, 1)  # global context: 3 x 1536
    assert tuple(big["pool.linear2.weight"].shape) == (1536, 128, 1)
    assert tuple(big["bn.weight"].shape) == (3072,)
    assert tuple(big["linear.weight"].shape) == (192, 3072)
    no_bn2 = ECAPATDNN(**ecapa_config("tiny", emb_bn=False)).state_dict()
    assert not any(k.startswith("bn2.") for k in no_bn2)


def test_dino_head_keys_and_weight_norm():
    head = DINOHead(192, 4096)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["mlp.0.weight"] == (2048, 192)
    assert shapes["mlp.1.running_mean"] == (2048,)
    assert shapes["mlp.3.weight"] == (2048, 2048)
    assert shapes["mlp.4.weight"] == (2048,)
    assert shapes["mlp.6.weight"] == (256, 2048)
    assert shapes["last_layer.weight_g"] == (4096, 1)
    assert shapes["last_layer.weight_v"] == (4096, 256)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer: g fixed at 1
    assert torch.all(head.last_layer.weight_g == 1)
    # matches torch's legacy weight_norm numerics
    reference = torch.nn.utils.weight_norm(torch.nn.Linear(256, 4096, bias=False))
    with torch.no_grad():
        reference.weight_v.copy_(head.last_layer.weight_v)
        reference.weight_g.fill_(1)
    x = torch.randn(3, 256)
    assert torch.allclose(head.last_layer(x), reference(x), atol=1e-6)
    out = head.eval()(torch.randn(4, 192))
    assert out.shape == (4, 4096)


def test_padded_batch_equals_one_at_a_time():
    torch.manual_seed(0)
    model = ECAPATDNN(**ecapa_config("tiny"))
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    feats = torch.randn(3, 90, 80)
    lengths = torch.tensor([90, 61, 37])
    with torch.no_grad():
        _, batched = model(feats, lengths)
        for i in range(3):
            _, single = model(feats[i:i + 1, :lengths[i]])
            assert torch.allclose(batched[i], single[0], atol=1e-4), i
