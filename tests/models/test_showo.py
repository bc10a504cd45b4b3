"""Show-o pieces: token layout, sequences, omni-attention masks, MaskGIT masking and decoding."""
import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models import showo as S

V = S.ShowoVocab(llm_vocab_size=20, codebook_size=8)  # pad 20, soi 21 ... lvg 29, image 30..37, mask 38


def test_show_o_512_layout():
    vocab = S.ShowoVocab(50295, 8192)
    assert vocab.size == 58498 and vocab.mask_id == 58497
    assert vocab.pad_id == 50295 and vocab.soi_id == 50296 and vocab.eoi_id == 50297
    assert vocab.t2i_id == 50300 and vocab.mmu_id == 50301 and vocab.special_id("<|lvg|>") == 50304
    assert vocab.image_offset == 50305
    with_concept = vocab.with_concepts(17)
    assert with_concept.image_offset == 50322 and with_concept.size == 58515 and with_concept.mask_id == 58514


def test_add_showo_tokens_on_a_phi_like_tokenizer():
    from zoo.text import build_tokenizer

    tok = build_tokenizer(["a", "red", "circle"], vocab_size=10, pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                          eos_token="<|endoftext|>", unk_token="<unk>")
    llm = S.add_showo_tokens(tok)
    assert llm == 5
    assert tok.convert_tokens_to_ids(["[PAD]", "<|soi|>", "<|lvg|>"]) == [5, 6, 14]
    assert tok.pad_token == "[PAD]"
    assert S.add_showo_tokens(tok) == 5  # idempotent


def test_t2i_sequences_layout_padding_truncation_and_dropout():
    image = torch.full((3, 8), V.mask_id)
    labels = torch.arange(24).view(3, 8) + V.image_offset
    ids, lab = S.t2i_sequences([[3, 4], [], [5] * 10], image, V, max_text_len=6, bos_id=1, eos_id=1, labels=labels)
    assert ids[0, :7].tolist() == [20, 20, 25, 1, 3, 4, 1]         # [PAD] [PAD] <|t2i|> <|sot|> 3 4 <|eot|>
    assert ids[1, :7].tolist() == [20, 20, 20, 20, 25, 1, 1]       # empty text: <|t2i|> <|sot|> <|eot|>
    assert ids[2, :7].tolist() == [25, 1, 5, 5, 5, 5, 1]           # cut, <|eot|> kept
    assert ids[0, 7].item() == V.soi_id and ids[0, -1].item() == V.eoi_id and ids.shape == (3, 7 + 10)
    assert lab[0, :2].tolist() == [-100, -100] and lab[0, 7].item() == V.soi_id and torch.equal(lab[:, 8:16], labels)
    dropped = S.t2i_sequences([[3, 4]], image[:1], V, 6, 1, 1, labels=labels[:1], cond_dropout_prob=1.0)[0]
    assert dropped[0, :7].tolist() == [20, 20, 20, 20, 25, 1, 1]


def test_t2i_mask_text_causal_image_full_padding_hidden():
    ids = S.t2i_sequences([[3]], torch.full((1, 2), V.mask_id), V, max_text_len=4, bos_id=1, eos_id=2)
    # positions: 0 pad, 1 t2i, 2 sot, 3 "3", 4 eot, 5 soi, 6 img, 7 img, 8 eoi
    keep = S.t2i_attention_mask(ids, V)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1, 1]])
    assert torch.equal(keep, expected)


def test_mmu_mask_is_bidirectional_up_to_eoi():
    ids = torch.cat([S.mmu_prefix(torch.tensor([[V.image_offset, V.image_offset + 1]]), V), torch.tensor([[7, 8]])], 1)
    keep = S.mmu_attention_mask(ids, V)[0, 0].int()
    assert keep[0].tolist() == [1, 1, 1, 1, 1, 0, 0]  # <|mmu|> sees the whole image block
    assert keep[5].tolist() == [1, 1, 1, 1, 1, 1, 0] and keep[6].tolist() == [1] * 7
    with pytest.raises(ConfigError):
        S.mmu_attention_mask(torch.tensor([[1, 2, 3]]), V)


def test_mask_or_random_replace_counts_and_labels():
    tokens = torch.arange(100).view(1, 100) + 1000
    g = torch.Generator().manual_seed(3)
    inputs, labels, ratio = S.mask_or_random_replace_tokens(tokens, 9999, generator=g)
    n = round(100 * float(ratio))
    assert int((inputs == 9999).sum()) == max(n, 1)
    assert torch.equal(labels[inputs == 9999], tokens[inputs == 9999])
    assert bool((labels[inputs != 9999] == -100).all())
    assert math.isclose(float(S.cosine_schedule(torch.tensor(1 / 3))), math.cos(math.pi / 6), rel_tol=1e-6)


class _Toy:
    """A fixed logit table over the image codes: code j has logit ``bias[j]`` everywhere."""

    def __init__(self, bias):
        self.bias, self.calls = bias, []

    def __call__(self, ids, mask):
        self.calls.append(ids.clone())
        logits = torch.full((ids.shape[0], ids.shape[1], V.size), -30.0)
        logits[..., V.image_offset:V.image_offset + 8] = self.bias
        return logits


def test_maskgit_fills_every_token_and_cfg_is_one_plus_g():
    ids = S.t2i_sequences([[3]], torch.full((1, 4), V.mask_id), V, 4, 1, 2)
    toy = _Toy(torch.tensor([0.0, 10.0, 0, 0, 0, 0, 0, 0]))
    codes = S.maskgit_generate(toy, ids, S.t2i_attention_mask(ids, V), V, 4, 4, timesteps=4,
                               generator=torch.Generator().manual_seed(0))
    assert codes.tolist() == [[1, 1, 1, 1]]  # a sharp distribution
    assert len(toy.calls) == 4
    assert int((toy.calls[1][0, -5:-1] == V.mask_id).sum()) == math.floor(4 * math.cos(math.pi / 8))
    # guidance: cond logits c, uncond u -> (1 + g) c - g u picks where c beats u
    class Pair:
        def __call__(self, ids, mask):
            logits = torch.full((ids.shape[0], ids.shape[1], V.size), 0.0)
            logits[0, :, V.image_offset + 2] = 3.0  # cond row prefers code 2 a little
            logits[0, :, V.image_offset + 5] = 3.5
            logits[1, :, V.image_offset + 5] = 3.5  # uncond likes 5 as much
            return logits
    uncond = S.t2i_sequences([[]], torch.full((1, 4), V.mask_id), V, 4, 1, 2)
    both = S.t2i_attention_mask(torch.cat([ids, uncond]), V)
    codes = S.maskgit_generate(Pair(), S.t2i_sequences([[3]], torch.full((1, 4), V.mask_id), V, 4, 1, 2), both, V, 4, 4,
                               uncond_input_ids=uncond, guidance_scale=20.0, timesteps=3,
                               generator=torch.Generator().manual_seed(0))
    assert codes.tolist() == [[2, 2, 2, 2]]


def test_maskgit_returns_requested_steps_and_keeps_fixed_tokens():
    ids = S.t2i_sequences([[3]], torch.full((1, 4), V.mask_id), V, 4, 1, 2)
    ids[0, -5] = V.image_offset + 7  # a given token
    toy = _Toy(torch.zeros(8))
    out = S.maskgit_generate(toy, ids, S.t2i_attention_mask(ids, V), V, 4, 4, timesteps=5,
                             generator=torch.Generator().manual_seed(1), return_steps=[1])
    assert sorted(out) == [1, 4]
    assert out[1][0, 0].item() == 7 and out[4][0, 0].item() == 7
