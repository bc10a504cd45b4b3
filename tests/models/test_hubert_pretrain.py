import math

import pytest
import torch

from zoo.errors import CheckpointKeysError, ConfigError, ZooError
from zoo.models.checkpoints import hf_to_fairseq_hubert
from zoo.models.hubert_pretrain import (
    GradMultiply, HubertPretrainModel, LabelLengthError, align_labels, compute_span_mask,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=[16] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
NO_DROPOUT = dict(TINY, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16000, 12000, 9000])
    wav = torch.randn(3, 16000, generator=gen)
    for i, n in enumerate(lengths.tolist()):
        wav[i, n:] = 0
    return wav, lengths, gen


def test_label_rate_alignment_is_exact():
    labels = torch.arange(100).reshape(2, 50)
    # 100 Hz labels on 50 Hz frames: every second label (fairseq forward_targets).
    packed, kept = align_labels(labels, [10, 9], [5, 5], 2.0, tolerance=2)
    assert kept == [5, 4]  # 9 labels cover only 4 frames (int(9 / 2)); the 5th frame gets none
    assert packed.tolist() == [0, 2, 4, 6, 8, 50, 52, 54, 56]
    packed, kept = align_labels(labels, [5, 4], [5, 4], 1.0, tolerance=2)
    assert kept == [5, 4] and packed.tolist() == [0, 1, 2, 3, 4, 50, 51, 52, 53]
    with pytest.raises(LabelLengthError):
        align_labels(labels, [4, 10], [5, 10], 2.0, tolerance=2)  # 8 frames short
    with pytest.raises(LabelLengthError):
        align_labels(labels, [30, 10], [5, 5], 2.0, tolerance=2)  # labels for 15 frames, audio has 5
    assert issubclass(LabelLengthError, ZooError)


def test_model_label_rate_100hz_picks_every_second_label():
    torch.manual_seed(0)
    model = HubertPretrainModel(NO_DROPOUT, 10, final_dim=8, label_rate=100.0, layerdrop=0.0).eval()
    assert model.labels_per_frame == 2.0
    wav = torch.randn(1, 3200)  # 9 frames
    labels = torch.arange(18)[None] % 10
    mask = torch.ones(1, 9, dtype=torch.bool)
    out = model(wav, labels=labels, mask_indices=mask)
    assert out["targets_masked"][0].tolist() == [0, 2, 4, 6, 8, 0, 2, 4, 6]
    with pytest.raises(LabelLengthError):
        model(wav, labels=torch.zeros(1, 60, dtype=torch.long), mask_indices=mask)


def test_span_mask_fairseq_counts_and_valid_frames_only():
    gen = torch.Generator().manual_seed(1)
    mask = compute_span_mask(torch.tensor([100, 60, 12]), generator=gen, require_same_masks=False)
    assert mask.shape == (3, 100)
    assert not mask[1, 60:].any() and not mask[2, 12:].any()
    # 8 spans of 10 on 100 frames (int(0.8 * 100 / 10 + u) = 8): at most 80 frames, at least one span.
    assert 10 <= int(mask[0].sum()) <= 80
    # the count rule on spans of one frame, where overlaps cannot hide it: int(0.8 * 100 + u) = 80
    single = compute_span_mask(torch.tensor([100, 5]), mask_length=1, generator=gen, require_same_masks=False)
    assert single.sum(1).tolist() == [80, 4]  # 5 frames: int(4.0 + u) = 4
    assert int(mask[2].sum()) >= 3  # min_masks = 2 spans on a short utterance, capped to what fits
    same = compute_span_mask(torch.tensor([100, 60, 30]), generator=gen)
    assert len(set(same.sum(1).tolist())) == 1  # require_same_masks: equal counts per row


def test_loss_finite_and_masked_accuracy_uses_masked_frames_only():
    torch.manual_seed(0)
    model = HubertPretrainModel(NO_DROPOUT, [20, 7], final_dim=16, layerdrop=0.0).eval()
    wav, lengths, gen = batch()
    frames = model.hubert.frame_lengths(lengths)
    labels = [torch.randint(0, 20, (3, 49), generator=gen), torch.randint(0, 7, (3, 49), generator=gen)]
    mask = compute_span_mask(frames, generator=gen, max_length=49)
    out = model(wav, lengths, labels, frames, mask_indices=mask)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert out["num_masked"] == int(mask.sum())
    masked_targets = torch.cat([labels[0][i, :n][mask[i, :n]] for i, n in enumerate(frames.tolist())])
    assert torch.equal(out["targets_masked"][0], masked_targets)
    correct = sum(int((lg.argmax(-1) == t).sum()) for lg, t in zip(out["logits_masked"], out["targets_masked"]))
    assert out["accuracy_masked"] == pytest.approx(correct / (2 * int(mask.sum())))
    expected = out["loss_masked"] + 10.0 * out["feature_penalty"]
    assert torch.allclose(out["loss"], expected)
    # Logits are cosine / 0.1: bounded by 10.
    assert float(out["logits_masked"][0].detach().abs().max()) <= 10.0 + 1e-4
    # Unmasked labels do not matter with pred_nomask_weight = 0.
    changed = [label.clone() for label in labels]
    for label in changed:
        label[~mask] = 0
    again = model(wav, lengths, changed, frames, mask_indices=mask)
    assert torch.equal(again["loss"], out["loss"]) and again["accuracy_masked"] == out["accuracy_masked"]
    # With a weight on unmasked frames they do.
    model.pred_nomask_weight = 1.0
    both = model(wav, lengths, labels, frames, mask_indices=mask)
    assert both["num_unmasked"] == int(frames.sum()) - int(mask.sum())
    assert torch.allclose(both["loss"], out["loss"] + both["loss_unmasked"])
    assert both["encoder"].last_hidden_state.shape == (3, 49, 32)


def test_adam_steps_lower_the_loss():
    torch.manual_seed(1)
    model = HubertPretrainModel(NO_DROPOUT, 12, final_dim=16, layerdrop=0.0).train()
    wav, lengths, gen = batch(1)
    frames = model.hubert.frame_lengths(lengths)
    labels = torch.randint(0, 12, (3, 49), generator=gen)
    mask = compute_span_mask(frames, generator=gen, max_length=49)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = model(wav, lengths, labels, frames, mask_indices=mask)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_feature_grad_mult_scales_conv_gradients():
    wav, lengths, gen = batch(2)
    labels = torch.randint(0, 5, (3, 49), generator=gen)
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(3)
        model = HubertPretrainModel(NO_DROPOUT, 5, final_dim=8, layerdrop=0.0, feature_grad_mult=mult,
                                    feature_penalty_weight=0.0).eval()
        frames = model.hubert.frame_lengths(lengths)
        mask = torch.zeros(3, 49, dtype=torch.bool)
        mask[:, 3:13] = True
        model(wav, lengths, labels, frames, mask_indices=mask)["loss"].backward()
        grads[mult] = (model.hubert.feature_extractor.conv_layers[2].conv.weight.grad.clone(),
                       model.final_proj.weight.grad.clone())
    assert torch.allclose(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-4, atol=1e-9)
    assert torch.allclose(grads[0.1][1], grads[1.0][1], rtol=1e-5, atol=1e-8)
    x = torch.ones(3, requires_grad=True)
    GradMultiply.apply(x, 0.25).sum().backward()
    assert x.grad.tolist() == [0.25] * 3


def test_random_masking_features_only_and_config_errors():
    torch.manual_seed(4)
    model = HubertPretrainModel(TINY, 5, final_dim=8).train()
    assert model.hubert.config.layerdrop == 0.05
    wav, lengths, gen = batch(3)
    out = model(wav, lengths, generator=gen)
    assert "loss_masked" not in out and torch.allclose(out["loss"], 10 * out["feature_penalty"])
    frames = out["frame_lengths"].tolist()
    assert all(not out["mask_indices"][i, n:].any() and out["mask_indices"][i, :n].any() for i, n in enumerate(frames))
    with pytest.raises(ConfigError):
        HubertPretrainModel(dict(TINY, mask_time_prob=0.0), 5)
    with pytest.raises(ConfigError):
        model(wav, lengths, [torch.zeros(3, 49, dtype=torch.long)] * 2)
    with pytest.raises(LabelLengthError):
        model(wav, lengths, torch.full((3, 49), 7), model.hubert.frame_lengths(lengths))


def test_load_fairseq_pretraining_weights():
    torch.manual_seed(5)
    source = HubertPretrainModel(TINY, [20, 7], final_dim=16)
    fairseq = hf_to_fairseq_hubert(source.hubert.state_dict(), {
        "label_embs_concat": source.label_embs_concat.detach(), "final_proj.weight": source.final_proj.weight.detach(),
        "final_proj.bias": source.final_proj.bias.detach()})
    target = HubertPretrainModel(TINY, [20, 7], final_dim=16)
    target.load_fairseq_state_dict({"model": fairseq, "args": None})
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    fairseq.pop("final_proj.bias")
    with pytest.raises(CheckpointKeysError) as info:
        target.load_fairseq_state_dict(fairseq)
    assert info.value.missing == ["final_proj.bias"]
