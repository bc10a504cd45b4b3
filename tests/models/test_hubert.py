import pytest
import torch
import transformers

from zoo.errors import AudioInputError, ConfigError
from zoo.models.hubert import HubertConfig, HubertModel, compute_span_mask, pack, unpack

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=[16] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
BASE_WIDTH_2_LAYERS = dict(num_hidden_layers=2)  # hubert-base widths, 2 layers


def make_pair(seed=0, **overrides):
    torch.manual_seed(seed)
    config = HubertConfig(**overrides)
    ours = HubertModel(config).eval()
    reference = transformers.HubertModel(transformers.HubertConfig(**config.to_dict())).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


def max_diff(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("overrides", [
    TINY,
    BASE_WIDTH_2_LAYERS,
    dict(TINY, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
    dict(TINY, num_conv_pos_embeddings=15),  # odd kernel: no trimming
], ids=["tiny", "base-width", "stable-layer-norm", "odd-pos-kernel"])
def test_single_utterance_matches_transformers(overrides):
    ours, reference = make_pair(**overrides)
    samples = 8000 if overrides is BASE_WIDTH_2_LAYERS else 5123
    wav = torch.randn(1, samples, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(wav, output_hidden_states=True)
        want = reference(wav, output_hidden_states=True)
    assert got.last_hidden_state.shape == want.last_hidden_state.shape
    assert max_diff(got.last_hidden_state, want.last_hidden_state) < 1e-5
    assert len(got.hidden_states) == len(want.hidden_states) == ours.config.num_hidden_layers + 1
    for mine, theirs in zip(got.hidden_states, want.hidden_states):
        assert max_diff(mine, theirs) < 1e-5
    assert got.frame_lengths.tolist() == [want.last_hidden_state.shape[1]]


def test_state_dict_keys_and_shapes_equal_transformers():
    ours, reference = make_pair(**BASE_WIDTH_2_LAYERS)
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert mine == theirs
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in mine
    assert mine["masked_spec_embed"] == (768,)
    assert mine["feature_extractor.conv_layers.0.layer_norm.weight"] == (512,)
    assert "feature_extractor.conv_layers.1.layer_norm.weight" not in mine
    # No masking configured: transformers has no masked_spec_embed, nor do we.
    no_mask = HubertModel(HubertConfig(**TINY, mask_time_prob=0.0))
    assert "masked_spec_embed" not in no_mask.state_dict()


@pytest.mark.parametrize("overrides", [TINY, dict(TINY, do_stable_layer_norm=True, feat_extract_norm="layer")])
def test_padded_batch_equals_unbatched(overrides):
    ours, reference = make_pair(**overrides)
    gen = torch.Generator().manual_seed(2)
    waves = [torch.randn(n, generator=gen) for n in (6000, 2345, 4801, 400)]
    batch = torch.zeros(len(waves), 6000)
    for i, wave in enumerate(waves):
        batch[i, : len(wave)] = wave
    lengths = torch.tensor([len(w) for w in waves])
    with torch.no_grad():
        out = ours(batch, lengths, output_hidden_states=True)
        assert out.last_hidden_state.shape[1] == ours.frame_lengths(6000)
        for i, wave in enumerate(waves):
            alone = ours(wave[None], output_hidden_states=True)
            theirs = reference(wave[None]).last_hidden_state[0]
            n = int(out.frame_lengths[i])
            assert n == alone.last_hidden_state.shape[1] == int(ours.frame_lengths(len(wave)))
            assert max_diff(out.last_hidden_state[i, :n], alone.last_hidden_state[0]) < 1e-5
            assert max_diff(out.last_hidden_state[i, :n], theirs) < 1e-5
            assert not out.last_hidden_state[i, n:].any()
            for batched, single in zip(out.hidden_states, alone.hidden_states):
                assert max_diff(batched[i, :n], single[0]) < 1e-5
                assert not batched[i, n:].any()


def test_equal_length_batch_matches_transformers():
    ours, reference = make_pair(**TINY)
    batch = torch.randn(3, 4160, generator=torch.Generator().manual_seed(3))  # 4160 = 13 * 320
    with torch.no_grad():
        assert max_diff(ours(batch).last_hidden_state, reference(batch).last_hidden_state) < 1e-5
        odd = batch[:, :4000]  # not a multiple of the total stride
        assert max_diff(ours(odd, torch.tensor([4000] * 3)).last_hidden_state,
                        reference(odd).last_hidden_state) < 1e-5


def test_masked_spec_embed_at_mask_time_indices():
    ours, reference = make_pair(**TINY)
    wav = torch.randn(2, 4800, generator=torch.Generator().manual_seed(4))
    frames = int(ours.frame_lengths(4800))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 7] = True
    with torch.no_grad():
        got = ours(wav, mask_time_indices=mask).last_hidden_state
        want = reference(wav, mask_time_indices=mask).last_hidden_state
        plain = ours(wav).last_hidden_state
    assert max_diff(got, want) < 1e-5
    assert max_diff(got, plain) > 1e-3
    # The embedding really is substituted: changing it changes only masked runs' outputs.
    with torch.no_grad():
        ours.masked_spec_embed.zero_()
        features, lengths = ours.extract_features(wav)
        hidden = ours.feature_projection(features)
        masked = ours.mask_features(hidden, lengths, mask)
    assert torch.equal(masked[2:5], torch.zeros(3, 32))
    assert torch.equal(masked[frames + 7], torch.zeros(32))
    assert torch.equal(masked[5:frames], hidden[5:frames])
    with pytest.raises(ConfigError):
        HubertModel(HubertConfig(**TINY, mask_time_prob=0.0)).eval()(wav, mask_time_indices=mask)


def test_output_layer_stops_early():
    ours, _ = make_pair(**dict(TINY, num_hidden_layers=3))
    wav = torch.randn(1, 3000)
    with torch.no_grad():
        full = ours(wav, output_hidden_states=True)
        for k in range(4):
            assert torch.equal(ours(wav, output_layer=k).last_hidden_state, full.hidden_states[k])
    with pytest.raises(ConfigError):
        ours(wav, output_layer=4)


def test_batch_gradients_equal_per_utterance_gradients():
    torch.manual_seed(5)
    model = HubertModel(HubertConfig(**TINY)).eval()
    waves = [torch.randn(n) for n in (3000, 1700)]
    batch = torch.zeros(2, 3000)
    batch[0], batch[1, :1700] = waves[0], waves[1]
    # A random linear read-out (a sum of squares is ~constant after LayerNorm: no gradient signal).
    readout = torch.randn(2, 9, 32)
    out = model(batch, torch.tensor([3000, 1700]))
    (out.last_hidden_state * readout).sum().backward()
    batched = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert set(batched) == {k for k, _ in model.named_parameters()} - {"masked_spec_embed"}
    model.zero_grad()
    for i, wave in enumerate(waves):
        single = model(wave[None]).last_hidden_state
        (single * readout[i : i + 1, : single.shape[1]]).sum().backward()
    for name, param in model.named_parameters():
        if name == "masked_spec_embed":
            continue
        scale = float(param.grad.abs().max())
        assert float((batched[name] - param.grad).abs().max()) <= 1e-4 * scale + 1e-7, name


def test_training_mode_layerdrop_and_masking():
    torch.manual_seed(6)
    model = HubertModel(HubertConfig(**TINY, layerdrop=1.0)).train()
    wav = torch.randn(2, 3200)
    out = model(wav, output_hidden_states=True)
    # Every layer dropped: all hidden states are the embeddings.
    assert all(torch.equal(h, out.hidden_states[0]) for h in out.hidden_states)
    model = HubertModel(HubertConfig(**TINY, mask_time_prob=0.5, mask_time_length=2)).train()
    out = model(wav, torch.tensor([3200, 2000]))
    out.last_hidden_state.sum().backward()
    assert model.masked_spec_embed.grad is not None and model.masked_spec_embed.grad.abs().sum() > 0
    assert model.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0


def test_frame_lengths_and_errors():
    model = HubertModel(HubertConfig(**TINY))
    assert model.frame_lengths(400) == 1 and model.frame_lengths(399) == 0 and model.frame_lengths(16000) == 49
    assert model.frame_lengths(torch.tensor([0, 399, 400, 719, 720, 16000])).tolist() == [0, 0, 1, 1, 2, 49]
    with pytest.raises(AudioInputError):
        model(torch.randn(1, 399))
    with pytest.raises(AudioInputError):
        model(torch.randn(2, 1000), torch.tensor([1000, 300]))
    with pytest.raises(AudioInputError):
        model(torch.randn(2, 1000), torch.tensor([1000]))


def test_config_round_trip_and_validation():
    config = HubertConfig(**TINY)
    assert HubertConfig.from_dict(config.to_dict()) == config
    assert HubertConfig().to_dict()["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2]
    assert HubertConfig().receptive_field == 400 and HubertConfig().total_stride == 320
    with pytest.raises(ConfigError):
        HubertConfig.from_dict({"hidden_size": 32, "bogus": 1})
    hf_dict = transformers.HubertConfig(**TINY).to_dict()
    assert HubertConfig.from_dict(hf_dict, strict=False) == HubertConfig(**dict(TINY, feat_proj_dropout=0.0))
    with pytest.raises(ConfigError):
        HubertConfig(conv_dim=[4, 4], conv_kernel=[3], conv_stride=[2])
    with pytest.raises(ConfigError):
        HubertConfig(feat_extract_norm="batch")


def test_span_mask_and_pack_helpers():
    gen = torch.Generator().manual_seed(7)
    mask = compute_span_mask(torch.tensor([50, 20, 5]), 0.5, 4, min_masks=1, generator=gen, max_length=60)
    assert mask.shape == (3, 60)
    assert not mask[0, 50:].any() and not mask[1, 20:].any() and not mask[2, 5:].any()
    # 5 frames, spans of 4, min_masks 1: exactly one span, at start 0 or 1
    assert mask[2, :5].tolist() in ([True] * 4 + [False], [False] + [True] * 4)
    # spans of 1 frame: int(0.5 * 100 / 1 + u) = 50 distinct frames, whatever u is
    assert int(compute_span_mask(torch.tensor([100]), 0.5, 1, generator=gen).sum()) == 50
    # an utterance shorter than one span is masked whole (the span is cut to fit)
    assert compute_span_mask(torch.tensor([7]), 0.5, 10, min_masks=1, generator=gen).tolist() == [[True] * 7]
    x = torch.arange(12.0).reshape(2, 3, 2)
    packed = pack(x, [3, 1])
    assert packed.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert unpack(packed, [3, 1], 3).tolist() == [[[0, 1], [2, 3], [4, 5]], [[6, 7], [0, 0], [0, 0]]]


def test_positional_conv_gradients_equal_stock_autograd():
    from zoo.models.hubert import _GroupedConvCPU

    gen = torch.Generator().manual_seed(8)
    for kernel, padding in ((16, 8), (15, 7)):
        x = torch.randn(1, 12, 30, generator=gen, requires_grad=True)
        weight = torch.randn(12, 3, kernel, generator=gen, requires_grad=True)
        bias = torch.randn(12, generator=gen, requires_grad=True)
        upstream = torch.randn(1, 12, 30 + 2 * padding - kernel + 1, generator=gen)
        torch.nn.functional.conv1d(x, weight, bias, padding=padding, groups=4).backward(upstream)
        want = [t.grad.clone() for t in (x, weight, bias)]
        for t in (x, weight, bias):
            t.grad = None
        out = _GroupedConvCPU.apply(x, weight, bias, padding, 4)
        assert torch.allclose(out, torch.nn.functional.conv1d(x, weight, bias, padding=padding, groups=4))
        out.backward(upstream)
        for got, expected in zip((x.grad, weight.grad, bias.grad), want):
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
