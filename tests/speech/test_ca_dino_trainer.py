"""CA-DINO trainer: DINO steps with falling loss, EMA teacher, clipping/freeze hooks, stage II with DLG-LC."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import zoo.speech.ca_dino
from zoo.speech.ca_dino.evaluate import evaluate
from zoo.speech.ca_dino.trainer import CADinoTrainer

RECIPE = Path(zoo.speech.ca_dino.__file__).parent / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    rng = np.random.default_rng(0)
    rows = []
    for v, f0 in enumerate([100, 150, 210, 290]):
        for u in range(4):
            t = np.arange(int(16000 * (0.9 + 0.5 * rng.random()))) / 16000
            f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
            phase = 2 * np.pi * np.cumsum(f) / 16000
            wave = sum(np.sin(k * phase) * (0.6 + 0.4 * np.cos(v * k)) / k for k in range(1, 7))
            wave = (0.1 * wave / np.abs(wave).max() + 0.003 * rng.normal(size=t.size)).astype(np.float32)
            sf.write(root / f"v{v}_{u}.wav", wave, 16000)
            rows.append({"path": f"v{v}_{u}.wav", "speaker": f"voice{v}", "id": f"v{v}_{u}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "manifest.jsonl")


def _config(manifest, stage, steps, **cluster):
    config = copy.deepcopy(CADinoTrainer.config_defaults)
    config["data"].update(train=manifest, cache_audio=True, exclude_speakers=["voice3"], eval=manifest,
                          eval_speakers=["voice2", "voice3"])
    config["ca_dino"].update(stage=stage, global_frames=80, local_frames=50, local_crops=2)
    config["cluster"].update(num_clusters=3, **cluster)
    config["train"] = {"max_steps": steps, "batch_size": 4, "seed": 0}
    config["optim"] = {"weight_decay": 5e-5}
    return config


def _run(trainer, steps, lr=0.05, seed=0, records=None):
    """The engine's call order, inlined: hooks, step, SGD, EMA. ``records`` collects each step's outputs."""
    torch.manual_seed(seed)
    model = trainer.build_model()
    dataset, _ = trainer.build_datasets()
    trainer.on_train_start(model)
    optimizer = torch.optim.SGD(trainer.param_groups(model), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True,
                                         collate_fn=trainer.collate, generator=generator)
    losses, step, epoch = [], 0, 0
    while step < steps:
        trainer.on_epoch_start(model, epoch)
        for batch in loader:
            out = trainer.training_step(model, batch)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            step += 1
            trainer.on_step_end(model, step)
            losses.append(out["loss"].item())
            if records is not None:
                records.append({k: float(v.detach() if torch.is_tensor(v) else v) for k, v in out.items()})
            if step >= steps:
                break
        epoch += 1
    return model, losses


def test_dino_loss_falls_on_a_fixed_batch(manifest):
    config = _config(manifest, "dino", 12)
    config["ca_dino"].update(freeze_last_layer=0, dither=0.0)
    trainer = CADinoTrainer(config)
    torch.manual_seed(0)
    model = trainer.build_model()
    trainer.build_datasets()
    trainer.on_train_start(model)
    trainer.on_epoch_start(model, 0)
    batch = trainer.collate([trainer.train_dataset[i] for i in range(4)])
    optimizer = torch.optim.SGD(trainer.param_groups(model), lr=0.05, momentum=0.9)
    losses = []
    for step in range(1, 13):
        loss = trainer.training_step(model, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trainer.on_step_end(model, step)
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


def test_dino_trains_and_teacher_is_saved(manifest):
    trainer = CADinoTrainer(_config(manifest, "dino", 8))
    model, losses = _run(trainer, 8)
    assert len(trainer.train_dataset) == 12  # voice3 held out; speaker labels are not used otherwise
    assert np.isfinite(losses).all()
    # after the last step the model holds the teacher's weights (the result of DINO training)
    teacher = trainer.teacher.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in model.state_dict().items())
    # the trainer's evaluation is zoo eval's: same options, same figures for the saved (teacher) model
    trainer.config["data"]["eval_options"] = {"baselines": True}
    metrics = trainer.evaluate(model)
    direct = evaluate(model, data=manifest, speakers="voice2,voice3", baselines=True, det=False)
    assert metrics == {k: v for k, v in direct.items() if k != "features"}
    assert metrics["num_trials"] == 28 and metrics["num_target"] == 12
    assert metrics["mean_fbank_eer_percent"] == 0.0  # the fixture's voices differ in pitch: separable


def test_first_epoch_last_layer_frozen_and_per_parameter_clipping(manifest):
    trainer = CADinoTrainer(_config(manifest, "dino", 1))
    model = trainer.build_model()
    trainer.build_datasets()
    trainer.on_train_start(model)
    trainer.on_epoch_start(model, 0)
    batch = trainer.collate([trainer.train_dataset[i] for i in range(4)])
    (trainer.training_step(model, batch)["loss"] * 1e4).backward()  # big gradients: clipping must act
    assert torch.count_nonzero(model.projection_head.last_layer.weight_v.grad) == 0
    norms = [p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None and "last_layer" not in n]
    assert max(norms) <= 3.0 + 1e-4
    model.zero_grad()
    trainer.on_epoch_start(model, 1)
    trainer.training_step(model, batch)["loss"].backward()
    assert torch.count_nonzero(model.projection_head.last_layer.weight_v.grad) > 0


def test_teacher_ema_momentum(manifest):
    trainer = CADinoTrainer(_config(manifest, "dino", 10))
    model = trainer.build_model()
    trainer.build_datasets()
    trainer.on_train_start(model)
    before = trainer.teacher.layer1.conv.weight.detach().clone()
    with torch.no_grad():
        model.layer1.conv.weight.add_(1.0)
    trainer.on_step_end(model, 1)  # step 1 -> schedule index 0 -> m = 0.996
    assert torch.allclose(trainer.teacher.layer1.conv.weight, before + 0.004, atol=1e-6)


def test_cluster_aware_positives_and_resume_state(manifest):
    trainer = CADinoTrainer(_config(manifest, "dino", 2, positives_from="cluster"))
    model, _ = _run(trainer, 2)
    labels = trainer.train_dataset.positives.labels
    assert labels.shape == (12,) and len(set(labels.tolist())) == 3
    state = trainer.state_dict()
    fresh = CADinoTrainer(_config(manifest, "dino", 2, positives_from="cluster"))
    fresh_model = fresh.build_model()
    fresh.build_datasets()
    fresh.load_state_dict(state)  # before on_train_start: kept until the teacher exists
    fresh.on_train_start(fresh_model)
    assert np.array_equal(fresh.train_dataset.positives.labels, labels)
    assert torch.equal(fresh.dino_loss.center, trainer.dino_loss.center)
    assert all(torch.equal(v, state["teacher"][k]) for k, v in fresh.teacher.state_dict().items())


def test_stage2_pseudo_labels_and_loss_gate(manifest):
    config = _config(manifest, "stage2", 18)
    config["stage2"].update(gate_start_epoch=2, correction_start_epoch=3, margin_increase_start=1,
                            margin_fix_start=2)
    trainer = CADinoTrainer(config)
    records = []
    model, losses = _run(trainer, 18, lr=0.02, records=records)
    assert model.projection_head is None and model.projection.weight.shape == (3, 192)
    assert set(trainer.train_dataset.labels.tolist()) == {0, 1, 2}
    assert sorted(trainer.epoch_losses) == list(range(12))  # one loss per training utterance
    # 12 utterances / batch 4 = 3 steps per epoch: epochs 0-1 ungated, the gate fits from epoch 2 on
    assert all(r["reliable"] == 1.0 for r in records[:6])
    assert trainer.gate_threshold is not None and np.isfinite(trainer.gate_threshold)
    gated = records[6:]
    assert min(r["reliable"] for r in gated) < 1.0  # the gate set some samples aside
    assert max(r["corrected"] for r in records[9:]) > 0.0  # and from epoch 3 on some were relabelled
    assert all(r["corrected"] == 0.0 for r in records[:9])
    assert np.isfinite(losses).all()


def _engine_overrides(manifest, out, steps, extra=()):
    return [f"data.train={manifest}", f"data.eval={manifest}", "data.exclude_speakers=[voice3]",
            "data.eval_speakers=[voice2,voice3]", "ca_dino.global_frames=80", "ca_dino.local_frames=50",
            "ca_dino.local_crops=2", "train.batch_size=4", f"train.max_steps={steps}", "train.log_every=1",
            f"train.eval_every={steps}", "train.ckpt_every=2", f"train.output_dir={out}", "train.progress=false",
            "train.tensorboard=false", "schedule.warmup_steps=2", "data.eval_options={baselines: true}", *extra]


@pytest.mark.parametrize("extra", [("cluster.positives_from=utterance",), ("cluster.num_clusters=3",)],
                         ids=["dino", "ca-dino"])
def test_demo_recipe_through_the_engine_with_exact_resume(manifest, tmp_path, extra, capsys):
    import zoo
    from zoo.cli import main
    from zoo.train import load_recipe, run

    straight = run(load_recipe(RECIPE, _engine_overrides(manifest, tmp_path / "a", 4, extra)))
    # the trainer's last evaluation (in the run's log) is what `zoo eval` prints for the saved model
    logged = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    logged = [record["eval"] for record in logged if "eval" in record][-1]
    capsys.readouterr()
    assert main(["eval", str(straight), "--data", manifest, "speakers=voice2,voice3", "baselines=true"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("eer_percent", "min_dcf_p0.01", "mean_fbank_eer_percent", "mean_std_fbank_eer_percent"):
        assert printed[key] == logged[key], key
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000002"  # mid-epoch (3 batches per epoch)
    assert checkpoint.is_dir()
    resumed = run(load_recipe(RECIPE, _engine_overrides(manifest, tmp_path / "b", 4,
                                                        (*extra, f"train.resume={checkpoint}"))))
    a, b = zoo.load(str(straight)), zoo.load(str(resumed))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    clip = torch.randn(12000) * 0.1
    assert torch.equal(a.embed(clip, 16000), b.embed(clip, 16000))


def test_first_clusters_from_mean_fbank_and_speed_perturbed_crops(manifest):
    config = _config(manifest, "dino", 2, positives_from="cluster", init_features="mean_fbank")
    config["data"]["speed_perturb"] = [0.5]
    trainer = CADinoTrainer(config)
    model = trainer.build_model()
    trainer.build_datasets()
    trainer.on_train_start(model)
    # the fixture's voices differ in pitch and timbre: the mean log-mel vector clusters them exactly
    labels = trainer.train_dataset.positives.labels
    voices = [row["speaker"] for row in trainer.train_dataset.audio.rows]
    assert len(set(labels)) == 3
    assert all((labels[i] == labels[j]) == (voices[i] == voices[j]) for i in range(12) for j in range(12))
    # speed 0.5: every crop is cut from the clip played at half speed (twice as long)
    audio = trainer.train_dataset.audio
    assert audio(0, 0.5).numel() == 2 * audio(0).numel()
    item = trainer.train_dataset[0]
    slowed = [audio(i, 0.5) for i in range(12)]
    for crop in [*item["global"], *item["local"]]:
        assert any(_is_window_of(crop, wave) for wave in slowed)


def _is_window_of(crop, wave):
    if wave.numel() < crop.numel():
        return False
    windows = wave.unfold(0, crop.numel(), 1)
    return bool((windows == crop).all(dim=1).any())


def test_train_on_a_list_of_corpora(manifest, tmp_path):
    from zoo.errors import ConfigError
    from zoo.speech.ca_dino.trainer import read_split

    # a second corpus in another folder: its relative paths resolve against its own manifest
    other = tmp_path / "other"
    other.mkdir()
    source = Path(manifest).parent
    (other / "v0_0.wav").write_bytes((source / "v0_0.wav").read_bytes())
    (other / "manifest.jsonl").write_text(json.dumps({"path": "v0_0.wav", "speaker": "extra", "id": "x0"}) + "\n")
    rows = read_split([manifest, str(other / "manifest.jsonl")], exclude=["voice3"])
    assert [r["id"] for r in rows] == [f"v{v}_{u}" for v in range(3) for u in range(4)] + ["x0"]
    assert rows[-1]["path"] == str(other / "v0_0.wav")
    assert [r["id"] for r in read_split(manifest, only=["voice1"])] == ["v1_0", "v1_1", "v1_2", "v1_3"]
    with pytest.raises(ConfigError, match="empty list"):
        read_split([])
    config = _config(manifest, "dino", 1)
    config["data"]["train"] = [manifest, str(other / "manifest.jsonl")]
    trainer = CADinoTrainer(config)
    dataset, _ = trainer.build_datasets()
    assert len(dataset) == 13


def test_global_cmvn_is_fitted_on_the_training_voices(manifest):
    from zoo.audio import load_audio
    from zoo.speech.ca_dino.builder import build, make_config
    from zoo.speech.ca_dino.trainer import read_split

    config = _config(manifest, "dino", 1)
    config["model"] = {"size": "tiny", "overrides": {"fbank": {"global_cmvn": True, "cmn": False}}}
    model = CADinoTrainer(config).build_model()
    reference = build(make_config("tiny", fbank={"global_cmvn": True, "cmn": False}))
    rows = read_split(manifest, exclude=["voice3"])  # held-out voice3 never enters the statistics
    reference.fit_global_cmvn([load_audio(r["path"], 16000) for r in rows])
    assert torch.equal(model.global_cmvn.mean, reference.global_cmvn.mean)
    assert torch.equal(model.global_cmvn.istd, reference.global_cmvn.istd)
    assert not torch.equal(model.global_cmvn.mean, torch.zeros(80))
