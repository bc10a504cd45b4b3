"""CheckpointKeysError summaries and the one strict loader (zoo.hub.load_state_dict_strict)."""
import pytest
import torch

from zoo.errors import CheckpointKeysError, group_keys
from zoo.hub import load_state_dict_strict

LAYER_PARTS = ("attention.k_proj", "attention.v_proj", "attention.q_proj", "attention.out_proj", "layer_norm",
               "feed_forward.intermediate_dense", "feed_forward.output_dense", "final_layer_norm")


class Blocks(torch.nn.Module):
    """A stack of ``depth`` linear blocks plus an embedding: keys like ``layers.3.fc.weight``."""

    def __init__(self, depth=4, width=3):
        super().__init__()
        self.embed = torch.nn.Embedding(5, width)
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"fc": torch.nn.Linear(width, width),
                                                               "norm": torch.nn.LayerNorm(width)})
                                          for _ in range(depth))


def test_a_deeper_model_is_summarised_in_one_line_with_the_likely_cause():
    missing = [f"encoder.layers.{i}.{part}.{p}" for i in range(4, 12) for part in LAYER_PARTS
               for p in ("weight", "bias")]
    error = CheckpointKeysError("hubert.pt", missing)
    lines = str(error).splitlines()
    assert lines[0] == "State dict from hubert.pt does not match the model (128 missing, 0 unexpected, 0 mis-shaped keys)."
    assert lines[1] == "  missing keys (128): encoder.layers.{4..11}.*: 16 keys each"
    assert lines[2].startswith("  Likely cause: the checkpoint has fewer encoder.layers blocks than the model "
                               "(it stops before block 4): it is probably a smaller size")
    assert "--size SIZE" in lines[3] and len(lines) == 4
    assert error.missing == sorted(missing)


def test_group_keys_patterns():
    keys = ["mask_emb", "bn2.weight", "bn2.bias", "layers.0.fc.weight", "layers.1.fc.weight", "layers.2.fc.weight",
            "layers.5.fc.weight", "layers.5.fc.bias", "layers.7.fc.weight", "layers.7.fc.bias"]
    assert group_keys(keys) == ["bn2.{bias,weight}", "mask_emb", "layers.{0..2}.fc.weight",
                                "layers.{5,7}.*: 2 keys each"]


def test_strict_loader_reports_every_problem_and_loads_nothing():
    model = Blocks(depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = Blocks(depth=4, width=3).state_dict()
    state["embed.weight"] = torch.zeros(6, 3)
    state["layers.0.extra"] = "not a tensor"
    with pytest.raises(CheckpointKeysError) as info:
        load_state_dict_strict(model, state, "big.pt", hint=lambda missing, unexpected: f"  {len(unexpected)} extra")
    error = info.value
    assert error.missing == [] and error.mismatched == [("embed.weight", (5, 3), (6, 3))]
    assert error.unexpected == ["layers.0.extra"] + [f"layers.{i}.{k}" for i in (2, 3)
                                                      for k in ("fc.bias", "fc.weight", "norm.bias", "norm.weight")]
    message = str(error)
    assert "entries that are not tensors: ['layers.0.extra']" in message and "  9 extra" in message
    assert "embed.weight: model (5, 3), checkpoint (6, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prefix_is_named_as_the_cause():
    model = Blocks(depth=1)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointKeysError, match="every checkpoint key starts with 'module.'"):
        load_state_dict_strict(Blocks(depth=1), wrapped, "ddp.pt")


def test_weight_norm_spellings_are_normalised_to_the_module():
    legacy = torch.nn.utils.weight_norm(torch.nn.Linear(3, 2))  # weight_g / weight_v
    modern = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 2))
    load_state_dict_strict(modern, legacy.state_dict(), "legacy.pt")
    assert torch.allclose(modern.weight, legacy.weight)
    assert torch.equal(modern.parametrizations.weight.original1, legacy.weight_v)
