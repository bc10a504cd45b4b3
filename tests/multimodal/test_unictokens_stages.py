"""UniCTokens stages: the three-stage run end to end on a tiny base, the stage initialisations, the stage 2 -> 3
diff masks, concept folders and their errors."""
import json
import shutil

import pytest
import torch

from zoo.errors import CheckpointFormatError, ConfigError, ImageInputError, OutputExistsError
from zoo.multimodal.unictokens import stages
from zoo.multimodal.unictokens.concept_tokens import load_official_rows, official_epochs
from zoo.multimodal.unictokens.data import build_shapes_concept, read_concept_folder
from zoo.registry import get_family

FAMILY = get_family("unictokens")


@pytest.fixture(scope="module")
def concept_folder(tmp_path_factory):
    return build_shapes_concept("bo", tmp_path_factory.mktemp("concept") / "bo", n_train=3, n_negative=2, n_test=2,
                                size=32)


def _config(output, folder, **stage):
    return {
        "family": "unictokens",
        "stage": {"name": "all", "tokens": [3, 2, 2], "save_every": 1, "epochs_per_stage": {"1": 1, "2": 1, "3": 1},
                  "data_per_stage": {"1": {"mmu_batch_size": 4}},
                  "diff_masks": {"num_images": 2, "steps": 4, "guidance": 2.0, "step_index": 2, "seed": 0}, **stage},
        "model": {"init": "unictokens-tiny", "pretrained": False},
        "concept": {"folder": str(folder)},
        "data": {"mmu_batch_size": 1},
        "eval": {"enabled": False},
        "train": {"max_steps": 17, "batch_size": 1, "shuffle": False, "drop_last": False, "output_dir": str(output),
                  "log_every": 5, "ckpt_every": 0, "tensorboard": False, "progress": False},
    }


def test_three_stages_end_to_end(tmp_path, concept_folder):
    import zoo
    from zoo.train import run

    final = run(_config(tmp_path / "run", concept_folder))
    stage1, stage2 = tmp_path / "run/stage1", tmp_path / "run/stage2"
    assert official_epochs(stage1 / "saves") == [1] and official_epochs(stage2 / "saves") == [1]
    rows1 = load_official_rows(stage1 / "saves", 1, num_rows=4)
    rows2 = load_official_rows(stage2 / "saves", 1, num_rows=6)
    assert sorted(p.name for p in (stage2 / "diff_masks").iterdir()) == ["0.png", "1.png"]
    # stage 1 moved its rows from the initialisation; stage 2 started from them
    model = zoo.load(str(final))
    assert model.concept["tokens"] == [3, 2, 2] and model.num_concept_rows == 8
    assert model.concept["trainable"] == [0, 6, 7]  # <bo> and the stage-3 rows
    rows3 = model.concept_rows()
    # stage-1/2 tokens are frozen in stage 3: unchanged from stage 2's rows
    assert torch.equal(rows3["embed"][1:6], rows2["embed"][1:6])
    assert torch.equal(rows3["lm_head_bias"][1:6], rows2["lm_head_bias"][1:6])
    assert not torch.equal(rows3["embed"][0], rows2["embed"][0])
    assert not torch.equal(rows1["embed"][0], rows2["embed"][0])
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert any("loss_t2i" in r and "loss_mmu" in r for r in log)
    # a rerun finds every part done and trains nothing
    assert run(_config(tmp_path / "run", concept_folder)) == final


def test_stage_steps_must_match_epochs(tmp_path, concept_folder):
    from zoo.train import run

    config = _config(tmp_path / "s1", concept_folder, name="1", epochs=2)
    config["data"]["mmu_batch_size"] = 4
    config["train"]["max_steps"] = 7
    # 3 images x 5 questions + 2 negatives = 17 records, batches of 4: 5 steps per epoch
    with pytest.raises(ConfigError, match=r"5 steps per epoch here, so 2 epochs are train.max_steps=10"):
        run(config)


def test_shapes_concept_recognition_data_is_balanced_and_mixed(tmp_path):
    """The stage trainer reads conversations in file order (the official MMU loader does not shuffle):
    "No." records written last made every epoch end on all-"No." batches, and the rows learned to say
    "No." to everything; there were also fewer "No." than "Yes." answers (the official data has more)."""
    folder = build_shapes_concept("bo", tmp_path / "bo", n_train=8, n_test=1, size=32)
    records = json.loads((folder / "conversations.json").read_text())
    rec = [(i, r["conversations"][1]["value"]) for i, r in enumerate(records)
           if r["conversations"][0]["value"].endswith("Is <bo> in the image?")]
    answers = [a for _, a in rec]
    assert answers.count("No.") == answers.count("Yes.") == 8
    no_at = [i for i, a in rec if a == "No."]
    assert min(no_at) < len(records) // 4 and max(no_at) > len(records) // 2
    assert len(records) == 8 * 5 + 8
    # every batch of 4 records in file order is not all "No."; the same folder again is byte-identical
    assert all(any(records[j]["conversations"][1]["value"] != "No." for j in range(k, min(k + 4, len(records))))
               for k in range(0, len(records), 4))
    again = build_shapes_concept("bo", tmp_path / "again", n_train=8, n_test=1, size=32)
    assert (again / "conversations.json").read_bytes() == (folder / "conversations.json").read_bytes()


def test_stage_initialisations(concept_folder):
    torch.manual_seed(0)
    base = FAMILY.build(FAMILY.make_config("tiny"))
    data = read_concept_folder(concept_folder)
    codes = base.encode_images([str(p) for p in data.images])
    word = stages.class_word_embedding(base, "star")
    star_id = base.tokenizer.convert_tokens_to_ids("star")
    assert torch.equal(word, base.showo.get_input_embeddings().weight[star_id])
    centres = stages.kmeans_centres(stages.code_embeddings(base, codes), 3, seed=0)
    base.insert_concept("bo", "star", tokens=[3])
    before = base.concept_rows()
    stages.init_stage1(base, "star", codes, 3, seed=0)
    rows = base.concept_rows()
    assert torch.equal(rows["embed"][0], word) and torch.allclose(rows["embed"][1:], centres)
    assert torch.equal(rows["lm_head_weight"], before["lm_head_weight"])  # head rows stay image-code copies
    with pytest.raises(ConfigError):
        stages.class_word_embedding(base, "zebra")
    assert stages.trainable_rows(3, [16, 8, 8]) == [0] + list(range(25, 33))
    assert stages.t2i_condition("bo", 2) == "A photo of <token_0><token_1> <bo>."
    assert stages.diff_mask_prompt("bo", 1, "human") == "A photo of <token_0> <bo>'s face in detail."
    rows = stages.arcface_to_rows(torch.arange(512.0), 8, 2048)
    assert rows.shape == (8, 2048) and rows[0, 0] == 0.0 and rows[7, -1] == 511.0


def test_diff_mask_is_white_where_step_tokens_differ_from_the_final_ones():
    torch.manual_seed(0)
    model = FAMILY.build(FAMILY.make_config("tiny"))
    step = torch.arange(16).view(1, 16) % 64
    final = step.clone()
    final[0, [0, 5]] = 63  # two tokens change after the step
    picture, region = stages.diff_mask_image(model, step, final)
    assert picture.size == (32, 32)
    grid = region.view(4, 8, 4, 8)[:, 0, :, 0]  # 8x8 pixels per token
    assert grid.flatten().nonzero().flatten().tolist() == [0, 5]
    pixels = torch.from_numpy(__import__("numpy").array(picture))
    assert bool((pixels[region] == 255).all())  # white (1.0 in [-1, 1] -> 255)
    plain = model.decode_codes(step)[0]
    assert __import__("numpy").array_equal(__import__("numpy").asarray(plain)[~region.numpy()],
                                           pixels.numpy()[~region.numpy()])


def test_concept_folder_errors(tmp_path, concept_folder):
    bad = tmp_path / "bad"
    shutil.copytree(concept_folder, bad)
    (bad / "info.json").unlink()
    with pytest.raises(ConfigError, match="info.json"):
        read_concept_folder(bad)
    shutil.copy(concept_folder / "info.json", bad / "info.json")
    for image in sorted((bad / "images").iterdir())[1:]:
        image.unlink()
    with pytest.raises(ConfigError, match="1 training image"):
        read_concept_folder(bad)
    shutil.rmtree(bad)
    shutil.copytree(concept_folder, bad)
    (bad / "images/001.png").write_bytes(b"not a png")
    with pytest.raises(ImageInputError, match="001.png"):
        read_concept_folder(bad)
    with pytest.raises(OutputExistsError):
        build_shapes_concept("bo", concept_folder, n_train=3)
    with pytest.raises(ConfigError, match="unknown shapes concept"):
        build_shapes_concept("nobody", tmp_path / "x")


def test_stage2_with_the_wrong_token_count_names_the_file(tmp_path, concept_folder):
    from zoo.multimodal.unictokens.concept_tokens import save_official_rows
    from zoo.train import run

    rows = {"embed": torch.zeros(5, 64), "lm_head_weight": torch.zeros(5, 64), "lm_head_bias": torch.zeros(5)}
    save_official_rows(tmp_path / "stage1/saves", 15, rows)
    config = _config(tmp_path / "stage2", concept_folder, name="2", previous=str(tmp_path / "stage1"))
    with pytest.raises(CheckpointFormatError, match="epoch_15_embed.pt has 5 rows but 4"):
        run(config)


def test_vq_and_base_pretraining_stages(tmp_path, capsys):
    from zoo.data.shapes import generate
    from zoo.train import run

    manifest = generate(tmp_path / "shapes", 8, size=32, seed=1)
    common = {"family": "unictokens", "data": {"manifest": str(manifest)},
              "eval": {"enabled": False},
              "train": {"batch_size": 4, "log_every": 2, "ckpt_every": 0, "tensorboard": False, "progress": False}}
    vq = run({**common, "stage": {"name": "vq"}, "model": {"init": "unictokens-tiny", "pretrained": False},
              "train": {**common["train"], "max_steps": 3, "output_dir": str(tmp_path / "vq")}})
    base = run({**common, "stage": {"name": "base", "loss_weights": {"t2i": 1.0, "mmu": 1.0}},
                "model": {"init": str(vq)}, "optim": {"lr": 3e-3},
                "train": {**common["train"], "max_steps": 6, "output_dir": str(tmp_path / "base")}})
    import zoo

    trained_vq, trained = zoo.load(str(vq)), zoo.load(str(base))
    # the LLM trained, the tokenizer did not
    assert torch.equal(trained.vq_model.encoder.conv_in.weight, trained_vq.vq_model.encoder.conv_in.weight)
    assert not torch.equal(trained.showo.lm_head.weight, trained_vq.showo.lm_head.weight)
    log = [json.loads(line) for line in (tmp_path / "base/log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert log[-1]["loss"] < log[0]["loss"]


def test_people_without_insightface_keep_the_code_rows_and_say_so(caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_insightface(name, *args, **kwargs):
        if name.startswith("insightface"):
            raise ImportError("no insightface")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_insightface)
    model = FAMILY.build(FAMILY.make_config("tiny"))
    model.insert_concept("ann", "woman", tokens=[3, 2], kind="human")
    before = model.concept_rows()
    previous = {k: v[:4].clone() + 1 for k, v in before.items()}
    with caplog.at_level("WARNING", logger="zoo.unictokens"):
        used = stages.init_stage2(model, previous, "human", face_images=[])
    assert not used and "insightface is not installed" in caplog.text
    rows = model.concept_rows()
    assert torch.equal(rows["embed"][:4], previous["embed"]) and torch.equal(rows["embed"][4:], before["embed"][4:])


def test_lora_option_trains_adapters_and_rows_only():
    model = FAMILY.build(FAMILY.make_config("tiny", {"lora": {"r": 2, "alpha": 4}}))
    model.insert_concept("bo", "star", tokens=[2])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert any("lora_A" in n for n in trainable) and "showo.model.embed_tokens.row_weight" in trainable
    assert not any(n.endswith("q_proj.base_layer.weight") or n.endswith("fc1.base_layer.weight") for n in trainable)
