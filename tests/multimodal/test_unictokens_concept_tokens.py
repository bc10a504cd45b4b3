"""Concept rows: insertion with shifted image rows, spliced training equal to the official reset-after-step
method (SGD and AdamW), optimiser state only for the new rows, the official three-file layout."""
import copy

import pytest
import torch

from zoo.errors import CheckpointFormatError, ConfigError, OutputExistsError
from zoo.models.showo import build_phi
from zoo.multimodal.unictokens.concept_tokens import (
    ResetAfterStep, SplicedEmbedding, SplicedLinear, VocabLayout, insert_rows, load_official_rows, read_rows,
    save_official_rows, set_trainable_rows, write_rows,
)

TEXT, IMAGE = 20, 9  # 8 codes + the mask row
LLM = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
       "max_position_embeddings": 64}


def _lm(seed=0):
    torch.manual_seed(seed)
    lm = build_phi(LLM, TEXT + IMAGE)
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


def test_insertion_shifts_image_and_mask_rows_and_copies_code_rows():
    lm = _lm()
    old_e = lm.get_input_embeddings().weight.clone()
    old_w, old_b = lm.lm_head.weight.clone(), lm.lm_head.bias.clone()
    layout = insert_rows(lm, VocabLayout(TEXT, IMAGE), 3)
    assert layout == VocabLayout(23, 9) and lm.config.vocab_size == 32
    e, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    assert isinstance(e, SplicedEmbedding) and isinstance(head, SplicedLinear)
    for new, old in ((e.weight, old_e), (head.weight, old_w), (head.bias, old_b)):
        assert torch.equal(new[:TEXT], old[:TEXT])
        assert torch.equal(new[23:], old[TEXT:])          # 8 codes and the mask row moved up by 3
        assert torch.equal(new[TEXT:23], old[TEXT:23])     # new rows = old rows of image codes 0..2
    assert torch.equal(new[-1], old[-1])  # the mask row stays last
    with pytest.raises(ConfigError):
        insert_rows(lm, VocabLayout(TEXT, IMAGE), 1)  # the layout no longer matches


def _batches(n=4, vocab=32):
    g = torch.Generator().manual_seed(5)
    return [(torch.randint(0, vocab, (2, 7), generator=g), torch.randint(0, vocab, (2, 7), generator=g)) for _ in range(n)]


def _train(lm, params, make_opt, after=None):
    opt = make_opt(params)
    for ids, target in _batches(vocab=lm.config.vocab_size):
        logits = lm(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after:
            after()
    return opt


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-2),
], ids=["sgd", "adamw"])
def test_spliced_rows_train_like_the_official_reset_after_step(make_opt):
    lm = _lm()
    insert_rows(lm, VocabLayout(TEXT, IMAGE), 3)
    reference = copy.deepcopy(lm)
    # the official model: plain modules holding the same inserted tables
    reference.set_input_embeddings(torch.nn.Embedding.from_pretrained(lm.get_input_embeddings().weight.clone(), freeze=False))
    plain = torch.nn.Linear(16, 32)
    plain.weight.data.copy_(lm.lm_head.weight)
    plain.bias.data.copy_(lm.lm_head.bias)
    reference.set_output_embeddings(plain)
    trainable = [20, 22]  # <name> and one <token_i>; row 21 stays frozen (as stage 3 freezes earlier tokens)
    reset = ResetAfterStep(reference, trainable)
    _train(reference, reset.parameters(), make_opt, reset.restore)

    set_trainable_rows(lm, trainable)
    ours = [p for p in lm.parameters() if p.requires_grad]
    assert sum(p.numel() for p in ours) == 2 * 16 + 2 * 16 + 2  # rows only
    opt = _train(lm, ours, make_opt)
    for state in opt.state.values():  # optimiser state exists only for the trainable rows
        for value in state.values():
            if torch.is_tensor(value) and value.dim():
                assert value.shape[0] == 2
    a, b = reference.get_input_embeddings().weight, lm.get_input_embeddings().weight
    torch.testing.assert_close(b, a, rtol=0, atol=2e-6)
    torch.testing.assert_close(lm.lm_head.weight, reference.lm_head.weight, rtol=0, atol=2e-6)
    torch.testing.assert_close(lm.lm_head.bias, reference.lm_head.bias, rtol=0, atol=2e-6)
    assert not torch.equal(b[20], _lm().get_input_embeddings().weight[20])  # the rows did move
    ids = _batches(1)[0][0]
    torch.testing.assert_close(lm(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_only_the_trainable_rows_change_and_state_dict_keeps_the_official_keys():
    lm = _lm()
    insert_rows(lm, VocabLayout(TEXT, IMAGE), 2)
    set_trainable_rows(lm, [21])
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    assert set(before) == set(_lm().state_dict()) and "lm_head.row_weight" not in before
    _train(lm, [p for p in lm.parameters() if p.requires_grad], lambda p: torch.optim.AdamW(p, lr=0.1))
    after = lm.state_dict()
    for key in before:
        changed = ~torch.isclose(before[key], after[key]).reshape(before[key].shape[0], -1).all(-1) \
            if before[key].dim() else torch.tensor([False])
        if key in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
            assert changed.nonzero().flatten().tolist() == [21]
        else:
            assert not bool(changed.any()), key
    # a reload refreshes the trainable copy in place (an optimiser keeps its tensors)
    fresh = _lm(1)
    insert_rows(fresh, VocabLayout(TEXT, IMAGE), 2)
    set_trainable_rows(fresh, [21])
    row = fresh.get_input_embeddings().row_weight
    fresh.load_state_dict(after, strict=True)
    assert fresh.get_input_embeddings().row_weight is row
    assert torch.equal(row[0], after["model.embed_tokens.weight"][21])


def test_write_read_rows_and_official_files_round_trip(tmp_path):
    lm = _lm()
    insert_rows(lm, VocabLayout(TEXT, IMAGE), 3)
    set_trainable_rows(lm, [20, 21, 22])
    rows = {"embed": torch.randn(3, 16), "lm_head_weight": torch.randn(3, 16), "lm_head_bias": torch.randn(3)}
    write_rows(lm, [20, 21, 22], **rows)
    got = read_rows(lm, [20, 21, 22])
    assert all(torch.equal(got[k], rows[k]) for k in rows)
    assert torch.equal(lm.get_input_embeddings().row_weight, rows["embed"])
    paths = save_official_rows(tmp_path / "saves", 15, got)
    assert sorted(p.name for p in paths.values()) == ["epoch_15_embed.pt", "epoch_15_lm_head_bias.pt",
                                                      "epoch_15_lm_head_weight.pt"]
    assert torch.equal(torch.load(paths["embed"], weights_only=True), rows["embed"])  # a plain tensor file
    back = load_official_rows(tmp_path / "saves", num_rows=3, hidden_size=16)
    assert int(back["epoch"]) == 15 and all(torch.equal(back[k], rows[k]) for k in rows)
    with pytest.raises(OutputExistsError):
        save_official_rows(tmp_path / "saves", 15, got)
    with pytest.raises(CheckpointFormatError, match="has 3 rows but 17"):
        load_official_rows(tmp_path / "saves", 15, num_rows=17)
    with pytest.raises(CheckpointFormatError, match="hidden size is 2048"):
        load_official_rows(tmp_path / "saves", 15, hidden_size=2048)
    paths["lm_head_bias"].unlink()
    with pytest.raises(CheckpointFormatError, match="epoch_15_lm_head_bias.pt"):
        load_official_rows(tmp_path / "saves", 15)
    with pytest.raises(ConfigError):
        write_rows(lm, [20], embed=torch.zeros(2, 16))
