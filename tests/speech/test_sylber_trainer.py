"""Sylber training: NoiseMixer, crops, targets and loss, the teacher, and `zoo train` with falling loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import zoo
from zoo.errors import ConfigError
from zoo.speech.sylber.noise import NoiseMixer


# ----------------------------------------------------------------------------- NoiseMixer

def test_noise_mixer_identity_when_not_augmenting():
    wav = torch.randn(4, 100)
    out = NoiseMixer(augment_prob=0.0)(wav, torch.randn(4, 100), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, wav)


def test_noise_mixer_additive_noise_gain():
    wav, noise = torch.randn(3, 50), torch.randn(3, 50)
    mixer = NoiseMixer(augment_prob=1.0, utterance_mix_ratio=0.0, magnitude_range=(0.5, 0.5))
    out = mixer(wav, noise, torch.tensor([50, 50, 20]), generator=torch.Generator().manual_seed(0))
    expected = wav + 0.5 * noise
    expected[2, 20:] = wav[2, 20:]  # nothing is added past an utterance's true length
    torch.testing.assert_close(out, expected)
    # Without a noise folder, utterances picked for additive noise stay clean.
    assert torch.equal(mixer(wav, None, generator=torch.Generator().manual_seed(0)), wav)


def test_noise_mixer_utterance_mixing_covers_one_side():
    torch.manual_seed(0)
    wav = torch.randn(2, 1000)
    mixer = NoiseMixer(augment_prob=1.0, utterance_mix_ratio=1.0, shift_range=(0.3, 0.3),
                       magnitude_range=(0.1, 0.7), utterance_magnitude_max_scale=0.1)
    out = mixer(wav, None, generator=torch.Generator().manual_seed(1))
    added = out - wav
    for row in range(2):
        other = wav[1 - row]  # with two utterances the partner is the other one, or itself
        ratio_other = (added[row] / other)[added[row] != 0]
        ratio_self = (added[row] / wav[row])[added[row] != 0]
        assert torch.allclose(ratio_other, torch.full_like(ratio_other, 0.1), atol=1e-4) or \
            torch.allclose(ratio_self, torch.full_like(ratio_self, 0.1), atol=1e-4)
        covered = (added[row] != 0).float()
        # 30% cut from one end: the interferer covers the other 70% (one contiguous side).
        assert abs(covered.mean().item() - 0.7) < 0.01
        assert covered[0].item() != covered[-1].item()


def test_noise_mixer_rates():
    torch.manual_seed(0)
    wav = torch.ones(20000, 8)
    mixer = NoiseMixer()
    out = mixer(wav, torch.ones(20000, 8), generator=torch.Generator().manual_seed(2))
    augmented = (out != wav).any(-1).float().mean().item()
    assert abs(augmented - 0.2) < 0.02


# ----------------------------------------------------------------------------- data

@pytest.fixture()
def corpus(tmp_path):
    """Three utterances with stage-1 segment files, and a noise folder."""
    rows = []
    rng = np.random.default_rng(0)
    for index, seconds in enumerate([1.0, 2.3, 0.6]):
        path = tmp_path / f"utt{index}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        frames = int(seconds * 50)
        segments = np.array([[2, frames // 3], [frames // 3, frames - 3]], dtype=np.int64)
        np.save(tmp_path / f"utt{index}.npy", segments)
        rows.append({"path": path.name, "segments": f"utt{index}.npy"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "n.wav", rng.standard_normal(4000).astype(np.float32), 16000)
    return tmp_path


def test_crops_are_frame_aligned_and_padded(corpus):
    from zoo.data import read_manifest
    from zoo.speech.sylber.trainer import SylberCropDataset, collate_crops

    rows = read_manifest(corpus / "train.jsonl")
    data = SylberCropDataset(rows, corpus, max_len=32000, segments_field="segments", noise_dir=str(corpus / "noise"))
    torch.manual_seed(0)
    short = data[0]  # 1.0 s = 50 frames, shorter than the 100-frame crop: kept whole
    assert short["wav"].shape == (50 * 320 + 320,)
    assert short["wav"][:160].abs().sum() == 0 and short["wav"][-160:].abs().sum() == 0
    np.testing.assert_array_equal(short["segments"], [[2, 16], [16, 47]])
    long = data[1]  # 2.3 s = 115 frames -> a random 100-frame crop
    assert long["wav"].shape == (32000 + 320,)
    assert long["noise"].shape == long["wav"].shape and (long["noise"] != 0).sum() == 4000
    assert long["segments"].min() >= 0 and long["segments"].max() <= 100
    batch = collate_crops([short, long])
    assert batch["input_values"].shape == (2, 32320) and batch["lengths"].tolist() == [16320, 32320]
    assert abs(batch["input_values"][0, :16320].mean().item()) < 1e-5
    assert abs(batch["input_values"][0, :16320].std(unbiased=False).item() - 1) < 1e-3
    assert batch["input_values"][0, 16320:].abs().sum() == 0
    # The crop makes exactly as many HuBERT frames as the crop has 320-sample frames.
    from zoo.audio import num_frames

    assert num_frames(16320, 400, 320) == 50 and num_frames(32320, 400, 320) == 100


def test_added_silence_gets_no_segments_and_silence_alone_none_at_all(corpus):
    """data.pad_silence / data.silence_only: silence (with a noise floor) around and instead of speech, never
    inside a segment, so the student's target there is zero: silence is not a syllable."""
    from zoo.data import demo_corpus, read_manifest
    from zoo.speech.sylber.trainer import HOP, SylberCropDataset, energy_syllables

    rows = read_manifest(demo_corpus())[:4]
    data = SylberCropDataset(rows, corpus, max_len=80000, energy_segments=True, pad_silence=0.5)
    torch.manual_seed(3)
    for index in range(4):
        clip_frames = __import__("zoo").audio.load_audio(rows[index]["path"]).shape[0] // HOP
        item = data[index]
        frames = item["wav"].shape[0] // HOP
        assert clip_frames <= frames - 1 <= clip_frames + 50  # up to 25 frames (0.5 s) each side
        energy = item["wav"][:frames * HOP].reshape(frames, HOP).pow(2).mean(-1)
        quiet = (energy < 1e-5).tolist()  # the added silence: noise floor at -50 dBFS or below
        lead = next(i for i, q in enumerate(quiet) if not q)  # quiet frames before the speech
        tail = next(i for i, q in enumerate(reversed(quiet)) if not q)  # and after it
        assert lead + tail >= 1 and len(item["segments"]) >= 1
        for start, end in item["segments"]:  # no segment lies in the leading or trailing silence
            assert end > lead and start < frames - tail
    # A crop of the noise floor alone: no syllable at all.
    alone = SylberCropDataset(rows, corpus, max_len=80000, energy_segments=True, pad_silence=0.5, silence_only=1.0)
    item = alone[0]
    assert item["segments"].shape == (0, 2) and float(item["wav"].abs().max()) < 0.02
    assert energy_syllables(1e-3 * torch.randn(16000)).shape == (0, 2)  # -60 dBFS noise is silence
    assert energy_syllables(0.3 * torch.randn(16000)).shape[0] >= 1  # loud noise is not
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="silence_only needs data.pad_silence"):
        SylberCropDataset(rows, corpus, silence_only=0.1)


def test_stage1_requires_the_segments_field(corpus):
    from zoo.speech.sylber.trainer import SylberCropDataset

    with pytest.raises(ConfigError, match="segments"):
        SylberCropDataset([{"path": str(corpus / "utt0.wav")}], corpus, segments_field="segments")


def test_targets_and_loss_by_hand():
    from zoo.speech.sylber.trainer import SylberTrainer

    teacher = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [9.0, 9.0]],
                            [[2.0, 2.0], [4.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    segments = [np.array([[0, 2], [2, 3]]), np.array([[0, 2]])]
    targets = SylberTrainer.targets(teacher, segments)
    expected = torch.tensor([[[2.0, 1.0], [2.0, 1.0], [5.0, 4.0], [0.0, 0.0]],
                             [[3.0, 1.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(targets, expected)
    # The trainer's own loss: squared error summed over features, mean over all B x L frames, padding
    # included. Student rows by hand: errors (1,1), (-1,1), (0,0), (9,9) | (0,-1), (1,-1), (0,0), (0,0).
    student = torch.tensor([[[3.0, 2.0], [1.0, 2.0], [5.0, 4.0], [9.0, 9.0]],
                            [[3.0, 0.0], [4.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    loss = SylberTrainer.distillation_loss(student, targets)
    assert loss.item() == (2 + 2 + 0 + 162 + 1 + 2 + 0 + 0) / 8


def test_training_step_returns_the_distillation_loss_of_the_student_output(corpus, monkeypatch):
    """training_step's loss is distillation_loss(student output, targets of the teacher), nothing else."""
    from zoo.speech.sylber.trainer import SylberTrainer

    trainer = _trainer(corpus, sylber={"stage": 1}, noise={"enabled": False})
    torch.manual_seed(0)
    model = trainer.build_model()
    data, _ = trainer.build_datasets()
    trainer.on_train_start(model)
    batch = trainer.collate([data[i] for i in range(3)])
    seen = {}
    real = SylberTrainer.distillation_loss

    def spy(states, targets):
        seen["states"], seen["targets"] = states.detach(), targets
        return real(states, targets)

    monkeypatch.setattr(SylberTrainer, "distillation_loss", staticmethod(spy))
    out = trainer.training_step(model, batch)
    assert out["loss"].item() == real(seen["states"], seen["targets"]).item() > 0
    teacher_states = trainer.teacher(batch["input_values"], batch["lengths"]).last_hidden_state
    assert torch.equal(seen["targets"], SylberTrainer.targets(teacher_states.float(), batch["segments"]))


# ----------------------------------------------------------------------------- the trainer

def _trainer(corpus, **sections):
    import copy

    from zoo.speech.sylber.trainer import SylberTrainer

    config = copy.deepcopy(SylberTrainer.config_defaults)
    config["train"] = {"seed": 0, "max_steps": 10}
    config["data"].update(train=str(corpus / "train.jsonl"), max_len=16000, cache_audio=True)
    for name, values in sections.items():
        config[name].update(values)
    return SylberTrainer(config)


def _run_steps(trainer, steps: int, batch_size: int = 3):
    torch.manual_seed(0)
    model = trainer.build_model()
    data, _ = trainer.build_datasets()
    trainer.on_train_start(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), eps=1e-4, weight_decay=0.1)
    batch = trainer.collate([data[i] for i in range(batch_size)])  # one fixed batch: the loss must fall
    losses, outputs = [], []
    for step in range(1, steps + 1):
        out = trainer.training_step(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        trainer.on_step_end(model, step)
        losses.append(out["loss"].item())
        outputs.append(out)
    return model, losses, outputs


def test_stage1_from_segment_files_loss_falls(corpus):
    trainer = _trainer(corpus, sylber={"stage": 1}, noise={"enabled": False})
    model, losses, _ = _run_steps(trainer, 12)
    assert losses[-1] < 0.7 * losses[0], losses
    # ema_decay 1.0 (as released): the teacher never moves.
    torch.manual_seed(0)
    fresh = trainer.build_model()
    for (name, ema), init in zip(trainer.teacher.state_dict().items(), fresh.hubert.state_dict().values()):
        assert torch.equal(ema, init), name


def test_stage2_online_segmentation_and_thresholder(corpus):
    trainer = _trainer(corpus, data={"noise_dir": str(corpus / "noise")})
    before = {k: v.clone() for k, v in trainer.thresholder.state_dict().items()}
    model, losses, outputs = _run_steps(trainer, 12)
    assert losses[-1] < losses[0], losses
    merges = [o["merge_threshold"] for o in outputs]
    assert all(0.8 <= m <= 0.9 for m in merges) and len(set(merges)) > 1
    after = trainer.thresholder.state_dict()
    assert not torch.equal(after["signal_mean"], before["signal_mean"])
    # Resume: the trainer's own state (teacher, thresholder, generator) round-trips.
    state = trainer.state_dict()
    other = _trainer(corpus, data={"noise_dir": str(corpus / "noise")})
    other.on_train_start(other.build_model())
    other.load_state_dict(state)
    assert torch.equal(torch.rand(3, generator=other.generator), torch.rand(3, generator=trainer.generator))
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(other.teacher.state_dict()[key], value)


def test_ema_teacher_moves_when_decay_below_one(corpus):
    trainer = _trainer(corpus, sylber={"stage": 1, "ema_decay": 0.5}, noise={"enabled": False})
    model, _, _ = _run_steps(trainer, 2)
    moved = [not torch.equal(a, b) for a, b in zip(trainer.teacher.parameters(), model.hubert.parameters())]
    assert any(moved)


def test_energy_bootstrap_segments_by_hand():
    from zoo.speech.sylber.trainer import energy_syllables

    # Two 200 ms tones separated by 100 ms of silence, inside a padded crop.
    t = torch.arange(3200) / 16000
    tone = torch.sin(2 * torch.pi * 200 * t)
    wave = torch.cat([torch.zeros(160 + 1600), tone, torch.zeros(1600), tone, torch.zeros(1600 + 160)])
    # tone 1 covers samples [1760, 4960) of the padded crop and frame i covers [320 i, 320 i + 400):
    # frames 5 (240 samples of tone) to 15 (160 samples) hear it; tone 2, [6560, 9760), frames 20 to 30.
    assert energy_syllables(wave, smooth_frames=1).tolist() == [[5, 16], [20, 31]]
    # a 5-frame moving average (edges repeated, not zero-padded) drops the frames only partly covered
    assert energy_syllables(wave).tolist() == [[6, 15], [21, 30]]


def test_config_errors(corpus):
    with pytest.raises(ConfigError):
        _trainer(corpus, sylber={"stage": 3})
    with pytest.raises(ConfigError):
        _trainer(corpus, sylber={"merge_threshold_range": [0.9, 0.8]})
    trainer = _trainer(corpus)
    trainer.config["data"]["train"] = None
    with pytest.raises(ConfigError, match="data.train"):
        trainer.build_datasets()


def test_demo_recipe_runs_through_the_engine_and_prints_its_result(tmp_path, capsys):
    """`zoo train sylber --config demo.yaml` on the bundled corpus, shortened: the codebook is fitted and saved,
    and the run ends by printing the segment rate against the text's syllable rate, the silence check, and
    `zoo segment` of a bundled clip with its PNG, then where the model, picture and logs are."""
    from importlib import resources

    from safetensors.torch import load_file

    from zoo.train import load_recipe, run

    recipe = resources.files("zoo.speech.sylber") / "recipes" / "demo.yaml"
    config = load_recipe(str(recipe), [
        "train.max_steps=6", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=1000",
        "train.eval_every=1000", f"train.output_dir={tmp_path / 'run'}", "data.max_len=16000",
        "tokenizer.num_tokens=4", "tokenizer.max_items=8", "report.items=4",
    ])
    assert config["report"]["clip"] == "demo" and config["data"]["eval"] == "demo"
    final = run(config)
    weights = load_file(str(final / "model.safetensors"))
    assert weights["codebook"].shape == (4, 64)
    model = zoo.load(str(final))
    assert model.num_tokens == 4 and model.config["num_tokens"] == 4
    out = capsys.readouterr().out
    from zoo.data import demo_corpus, read_manifest
    from zoo.speech.sylber.evaluate import evaluate

    rows = read_manifest(demo_corpus())[:4]
    figures = evaluate(model, data=rows)
    assert (f"{figures['segments_per_second_model']:.2f} segments per second against "
            f"{figures['syllables_per_second_text']:.2f} syllables per second in the text (4 clips") in out
    assert "segments in the 0.5 s of silence added before and after each of those clips" in out
    clip = rows[0]["path"]
    result = model.segment(clip)
    assert f"{clip}: {len(result)} segments in {result.duration:.2f} s" in out
    png = tmp_path / "run" / "segments.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"model:    {final}" in out and f"picture:  {png}" in out and str(tmp_path / "run" / "log.jsonl") in out
