"""UniCTokens model: official Show-o/MAGVIT-v2 checkpoints (real key names, tiny size) load strictly, the concept
adapter on a Hub base, the inference API, and cached decoding equal to the official full recompute."""
import io
import json

import pytest
import torch

import zoo
from zoo.cards import add_card, remove_card
from zoo.errors import CheckpointKeysError, ConfigError, OutputExistsError
from zoo.models.showo import mmu_attention_mask
from zoo.multimodal.unictokens.builder import SIZES
from zoo.registry import get_family

FAMILY = get_family("unictokens")


def tiny(**overrides):
    torch.manual_seed(0)
    return FAMILY.build(FAMILY.make_config("tiny", overrides))


def _bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _official(model):
    """The model's weights as the official files hold them: the Showo module and MAGVITv2 separately."""
    state = model.state_dict()
    showo = {k: v for k, v in state.items() if k.startswith("showo.")}
    vq = {k[len("vq_model."):]: v for k, v in state.items() if k.startswith("vq_model.")}
    return showo, vq


@pytest.fixture
def tiny_card():
    add_card({"name": "show-o-tiny-test", "family": "unictokens", "size": "tiny", "description": "test",
              "weights": {"repo_id": "showlab/show-o-tiny", "filename": "pytorch_model.bin"},
              "config": {"vq_weights": {"repo_id": "showlab/magvitv2-tiny", "filename": "pytorch_model.bin"}}})
    yield "show-o-tiny-test"
    remove_card("show-o-tiny-test")


def test_official_layout_loads_strictly_from_the_hub(loopback_hub, tiny_card):
    reference = tiny().eval()
    showo, vq = _official(reference)
    assert "showo.model.embed_tokens.weight" in showo and "showo.lm_head.bias" in showo
    assert "showo.model.layers.1.self_attn.dense.weight" in showo and "showo.model.final_layernorm.bias" in showo
    assert "encoder.conv_in.weight" in vq and "quantize.power_vals" in vq
    loopback_hub.add_file("showlab/show-o-tiny", "pytorch_model.bin", _bytes(showo))
    loopback_hub.add_file("showlab/magvitv2-tiny", "pytorch_model.bin", _bytes(vq))
    model = zoo.load(tiny_card)
    ids = torch.randint(0, model.vocab.size, (1, 12))
    torch.testing.assert_close(model.logits(ids, None), reference.logits(ids, None), rtol=0, atol=0)
    bf16 = zoo.load(tiny_card, dtype="bfloat16")
    assert bf16.showo.model.embed_tokens.weight.dtype == torch.bfloat16

    del showo["showo.lm_head.bias"]
    showo["showo.lm_head.biass"] = torch.zeros(3)
    loopback_hub.add_file("showlab/show-o-tiny", "pytorch_model.bin", _bytes(showo))
    with pytest.raises(CheckpointKeysError) as info:
        zoo.load(tiny_card, revision="main", local_files_only=False)
    assert "showo.lm_head.bias" in info.value.missing and "showo.lm_head.biass" in info.value.unexpected


def test_sharded_folder_converts(tmp_path):
    from zoo.cli import main

    reference = tiny().eval()
    showo, vq = _official(reference)
    folder = tmp_path / "show-o"
    folder.mkdir()
    keys = sorted(showo)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, part in halves.items():
        torch.save({k: showo[k] for k in part}, folder / name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in halves.items() for k in part}}))
    torch.save(vq, tmp_path / "vq.bin")
    assert main(["convert", "unictokens", str(folder), str(tmp_path / "out"), "--size", "tiny",
                 f"vq_weights.path={tmp_path / 'vq.bin'}"]) == 0
    model = zoo.load(str(tmp_path / "out"))
    ids = torch.randint(0, model.vocab.size, (1, 9))
    assert torch.equal(model.logits(ids, None), reference.logits(ids, None))


def _concept_model(base_name: str):
    model = tiny(base=base_name) if base_name else tiny()
    model.insert_concept("bo", "star", tokens=[3, 2])
    torch.manual_seed(1)
    n, d = model.num_concept_rows, model.showo.get_input_embeddings().weight.shape[1]
    model.set_concept_rows({"embed": torch.randn(n, d), "lm_head_weight": torch.randn(n, d),
                            "lm_head_bias": torch.randn(n)})
    return model


def test_concept_adapter_round_trips_on_its_hub_base(loopback_hub, tmp_path):
    base = tiny()
    base.push_to_hub("alice/shapes-base")
    model = _concept_model("hf-hub:alice/shapes-base")
    assert model.is_adapter
    assert sorted(model.state_dict()) == ["concept.embed", "concept.lm_head_bias", "concept.lm_head_weight"]
    assert model.state_dict()["concept.embed"].shape == (6, 64)
    model.push_to_hub("alice/bo")
    loaded = zoo.load("hf-hub:alice/bo")
    assert loaded.concept_name == "bo" and loaded.concept["tokens"] == [3, 2]
    for key, value in model.concept_rows().items():
        assert torch.equal(loaded.concept_rows()[key], value)
    ids = torch.tensor([[loaded.concept_ids[0], 5, loaded.vocab.image_offset + 3, loaded.vocab.mask_id]])
    assert torch.equal(loaded.logits(ids, None), model.logits(ids, None))
    assert loaded.tokenizer.convert_tokens_to_ids("<token_4>") == loaded.concept_ids[5]

    # the official per-concept files -> the same adapter through `zoo convert ... --base`
    from zoo.cli import main
    from zoo.multimodal.unictokens.concept_tokens import save_official_rows

    save_official_rows(tmp_path / "saves/bo/task", 15, model.concept_rows())
    out = tmp_path / "adapter"
    assert main(["convert", "unictokens", str(tmp_path / "saves/bo/task"), str(out), "--size", "tiny",
                 "--base", "hf-hub:alice/shapes-base"]) == 0
    converted = zoo.load(str(out))
    assert converted.concept_name == "bo" and converted.concept["tokens"] == [5]  # 6 rows: <bo> + 5 tokens
    assert torch.equal(converted.concept_rows()["embed"], model.concept_rows()["embed"])
    assert main(["convert", "unictokens", str(tmp_path / "saves/bo/task"), str(out), "--size", "tiny",
                 "--base", "hf-hub:alice/shapes-base"]) == 2  # exists: needs --overwrite
    assert main(["convert", "unictokens", str(tmp_path / "saves/bo/task"), str(tmp_path / "x"), "--size", "tiny",
                 "--base", "hf-hub:alice/shapes-base", "concept.tokens=[16]"]) == 2  # 17 rows asked, 6 found


def test_full_model_with_concept_saves_the_official_layout(tmp_path):
    model = _concept_model(None)
    keys = set(model.state_dict())
    assert "showo.model.embed_tokens.weight" in keys and not any("row_" in k for k in keys)
    assert model.state_dict()["showo.lm_head.weight"].shape[0] == model.vocab.size
    model.save_pretrained(tmp_path / "m")
    loaded = zoo.load(str(tmp_path / "m"))
    assert torch.equal(loaded.concept_rows()["lm_head_bias"], model.concept_rows()["lm_head_bias"])
    with pytest.raises(OutputExistsError):
        model.save_pretrained(tmp_path / "m")


def test_inference_api_and_errors():
    model = _concept_model(None)
    model.train()
    images = model.generate_image("A photo of <bo>.", concept="bo", steps=3, guidance=2.0, seed=3, num_images=2)
    assert len(images) == 2 and images[0].size == (32, 32) and model.training  # the train flag is restored
    again = model.generate_image("A photo of <bo>.", concept="bo", steps=3, guidance=2.0, seed=3, num_images=2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    assert model.concept_prompt("a <sks> on a rug", "bo") == "a <token_0><token_1><token_2><token_3><token_4> <bo> on a rug"
    assert model.system_prefix() == "<bo> is <token_0><token_1><token_2>."
    answer = model.answer(images[0], "What color is <bo>?", concept="bo", max_new_tokens=4)
    assert isinstance(answer, str)
    verdict = model.recognize(images[0], "bo")
    assert verdict["answer"] in ("yes", "no") and 0.0 <= verdict["probability"] <= 1.0
    with pytest.raises(ConfigError, match="not <kiki>"):
        model.recognize(images[0], "kiki")


def test_cached_decoding_equals_the_official_full_recompute():
    model = tiny().eval()
    codes = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(4))
    ids = model.mmu_input(codes, "What color is the circle?")
    with torch.no_grad():
        ours = model._decode(ids, 10, 1, 1.0, None)
        # the official mmu_generate: the whole sequence again each step, the mask grown by one row/column
        seq, mask, official = ids.clone(), mmu_attention_mask(ids, model.vocab)[0, 0], []
        for _ in range(10):
            logits = model.logits(seq, mask[None, None])[:, -1]
            token = int(logits.argmax(-1))
            official.append(token)
            if token == model.eos_id:
                break
            n = mask.shape[0]
            mask = torch.cat([torch.cat([mask, torch.zeros(n, 1, dtype=torch.bool)], 1),
                              torch.cat([mask[-1], torch.ones(1, dtype=torch.bool)])[None]], 0)
            seq = torch.cat([seq, torch.tensor([[token]])], 1)
    assert ours == official


def test_sizes_are_consistent():
    for size in SIZES:
        config = FAMILY.make_config(size)
        assert 2 ** config["vq"]["codebook_dim"] == config["codebook_size"]
        side = config["image_size"] // 2 ** (len(config["vq"]["encoder"]["ch_mult"]) - 1)
        assert side * side == config["num_vq_tokens"]
    show_o = FAMILY.make_config("show-o-512")
    assert show_o["llm_vocab_size"] + 10 + show_o["codebook_size"] + 1 == 58498
