"""DINO loss, schedules, k-means and cluster positives, fbank front end."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.speech.ca_dino.cluster import ClusterPositives, kmeans_labels
from zoo.speech.ca_dino.dino_loss import DINOLoss, cosine_value, teacher_temperature
from zoo.speech.ca_dino.fbank import kaldi_fbank, num_frames, random_crop, repeat_pad, samples_for_frames


def test_dino_loss_by_hand():
    torch.manual_seed(0)
    batch, dim = 3, 5
    student = torch.randn(6 * batch, dim)
    teacher = torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, n_student_crops=6, n_teacher_crops=2)
    loss_fn.center.fill_(0.1)
    loss = loss_fn(student, teacher, teacher_temp=0.04)
    s = student.view(6, batch, dim)
    t = teacher.view(2, batch, dim)
    terms = []
    for iq in range(2):
        p = F.softmax((t[iq] - 0.1) / 0.04, dim=-1)
        for v in range(6):
            if v != iq:
                terms.append((-(p * F.log_softmax(s[v] / 0.1, dim=-1)).sum(-1)).mean())
    assert len(terms) == 10
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    assert torch.allclose(loss_fn.center, 0.9 * 0.1 + 0.1 * teacher.mean(0, keepdim=True))


def test_schedules():
    assert teacher_temperature(0, 150) == pytest.approx(0.04)
    assert teacher_temperature(29, 150) == pytest.approx(0.07)  # 30 warm-up epochs, linspace end included
    assert teacher_temperature(15, 150) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert teacher_temperature(100, 150) == 0.07
    # momentum: 0.996 -> 1 over training
    assert cosine_value(0, 1000, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_value(500, 1000, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_value(999, 1000, 0.996, 1.0) == pytest.approx(1.0, abs=1e-7)
    # LR with warm-up: linspace(0, base) then cosine to final
    assert cosine_value(0, 100, 0.4, 5e-5, warmup_steps=10) == 0.0
    assert cosine_value(9, 100, 0.4, 5e-5, warmup_steps=10) == pytest.approx(0.4)
    assert cosine_value(10, 100, 0.4, 5e-5, warmup_steps=10) == pytest.approx(0.4)
    assert cosine_value(55, 100, 0.4, 5e-5, warmup_steps=10) == pytest.approx(5e-5 + 0.5 * (0.4 - 5e-5))


def test_kmeans_and_cluster_positives():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3] * 5
    data = np.concatenate([c + rng.normal(0, 0.1, (20, 4)) for c in centres])
    labels, centroids = kmeans_labels(data, 3)
    assert centroids.shape == (3, 4)
    for block in range(3):
        assert len(set(labels[block * 20:(block + 1) * 20])) == 1
    sampler = ClusterPositives(labels)
    picks = sampler.sample(0, 50, random.Random(0))
    assert all(labels[p] == labels[0] and p != 0 for p in picks)
    assert ClusterPositives([0, 1, 1]).sample(0, 3, random.Random(0)) == [0, 0, 0]  # singleton


def test_fbank_matches_torchaudio_per_utterance():
    import torchaudio.compliance.kaldi as kaldi

    torch.manual_seed(0)
    clips = [torch.randn(16000) * 0.1, torch.randn(7000) * 0.3]
    padded = torch.zeros(2, 16000)
    padded[0] = clips[0]
    padded[1, :7000] = clips[1]
    feats, counts = kaldi_fbank(padded, torch.tensor([16000, 7000]), cmn=True)
    for i, clip in enumerate(clips):
        reference = kaldi.fbank(clip[None] * 32768, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                                window_type="hamming", use_energy=False)
        reference = reference - reference.mean(0)
        assert counts[i] == reference.shape[0]
        assert torch.allclose(feats[i, :counts[i]], reference, atol=1e-4)
    assert torch.all(feats[1, counts[1]:] == 0)


def test_mel_floor_on_digital_silence():
    torch.manual_seed(0)
    clip = torch.randn(8000) * 0.1
    clip[2000:6000] = 0.0  # digital silence inside a clip: frames 0..9 and 38..47 hold signal
    default, counts = kaldi_fbank(clip[None], cmn=False)
    floored, _ = kaldi_fbank(clip[None], cmn=False, mel_floor=1000.0)
    silent = slice(13, 35)  # frames wholly inside the zeros
    assert torch.equal(default[0, silent], torch.full((22, 80), math.log(torch.finfo(torch.float32).eps)))
    assert torch.equal(floored[0, silent], torch.full((22, 80), torch.tensor(1000.0).log().item()))
    # the floor only raises what lies below it: log(max(mel, 1000)) == max(log mel, log 1000)
    assert torch.allclose(floored[0, :counts[0]], default[0, :counts[0]].clamp_min(math.log(1000.0)), atol=1e-6)
    assert bool((floored[0, :5] > math.log(1000.0)).all())  # 0.1-rms noise sits far above it
    # the model reads the floor from its config (fbank.mel_floor), for training and embedding alike
    from zoo.speech.ca_dino.builder import build, make_config

    model = build(make_config("tiny", fbank={"mel_floor": 1000.0, "cmn": False}))
    assert torch.equal(model.fbank(clip[None])[0], floored)


def test_frames_and_crops():
    assert samples_for_frames(300) == 48240 and num_frames(48240) == 300  # WeSpeaker chunk_len conversion
    assert samples_for_frames(200) == 32240
    clip = torch.arange(5.0)
    assert repeat_pad(clip, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    crop = random_crop(torch.arange(100.0), 10, random.Random(0))
    assert crop.shape == (10,) and torch.equal(crop, torch.arange(crop[0].item(), crop[0].item() + 10))


def test_fbank_statistics_baselines():
    from zoo.speech.ca_dino.fbank import fbank_statistics

    t = torch.arange(16000) / 16000
    tone = 0.1 * torch.sin(2 * math.pi * 440 * t) + 0.01 * torch.sin(2 * math.pi * 3000 * t)
    mean = fbank_statistics([tone], "mean_fbank")
    both = fbank_statistics([tone, 2 * tone], "mean_std_fbank")
    assert mean.shape == (1, 80) and both.shape == (2, 160)
    assert torch.allclose(both[0, :80], mean[0], atol=1e-5)
    # twice the amplitude is 4x the power: every log-mel bin rises by log 4, the spread is unchanged
    assert torch.allclose(both[1, :80] - both[0, :80], torch.full((80,), math.log(4.0)), atol=1e-3)
    assert torch.allclose(both[1, 80:], both[0, 80:], atol=1e-3)
    # a steady tone: the loudest bin hardly varies over frames
    assert both[0, 80 + int(mean[0].argmax())] < 0.05
    with pytest.raises(Exception, match="mean_fbank, mean_std_fbank"):
        fbank_statistics([tone], "mfcc")


def test_speed_perturbation_scales_pitch_and_length():
    from zoo.speech.ca_dino.fbank import speed_perturb

    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 200 * t)
    for speed, pitch in ((1.25, 250), (0.8, 160), (1.0, 200)):
        out = speed_perturb(tone, speed)
        assert out.shape == (round(16000 / speed),)
        spectrum = torch.fft.rfft(out).abs()
        assert round(spectrum.argmax().item() * 16000 / out.numel()) == pitch
