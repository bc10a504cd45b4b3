"""zoo.metrics (exact values on hand-made images, clear errors without packages or weights) and zoo.plot."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.errors import ImageInputError, MissingDependencyError, OutputExistsError, WeightsNotAvailableError
from zoo.metrics import LPIPS_BACKBONE_FILES, clip_score, fid, lpips, psnr, ssim
from zoo.plot import make_image_grid, save_image_grid


def test_psnr_of_a_known_mse_per_image_then_averaged():
    target = torch.zeros(2, 3, 8, 8)
    preds = target.clone()
    preds[0] += 0.1  # MSE 0.01 -> 20 dB
    preds[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(preds, target).item() == pytest.approx(30.0, abs=1e-4)  # not the pooled-MSE 22.97 dB
    minus_one_one = torch.full((1, 3, 4, 4), -1.0)
    assert psnr(minus_one_one + 0.2, minus_one_one, data_range=2.0).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(psnr(target, target).item())


def test_psnr_takes_image_files(tmp_path):
    Image.new("RGB", (4, 4), (0, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), (51, 51, 51)).save(tmp_path / "b.png")  # 0.2 everywhere: MSE 0.04
    assert psnr([tmp_path / "a.png"], [tmp_path / "b.png"]).item() == pytest.approx(10 * math.log10(25), abs=1e-4)


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.4)
    c1 = (0.01 * 1.0) ** 2  # K1 = 0.01, L = data_range
    expected = (2 * 0.2 * 0.4 + c1) / (0.2 ** 2 + 0.4 ** 2 + c1)  # contrast-structure term is C2 / C2 = 1
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-5)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, 1 - x).item() < 0.2
    with pytest.raises(ImageInputError, match="smaller than the 11x11 window"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ImageInputError, match="same shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(2, 3, 16, 16))


def test_lpips_without_backbone_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    x = torch.rand(1, 3, 32, 32)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(MissingDependencyError, match="torchvision.*zoo\\[image-metrics\\]"):
            lpips(x, x)
        return
    with pytest.raises(WeightsNotAvailableError, match=f"{tmp_path}/checkpoints/alexnet-owt-7be5be79.pth"):
        lpips(x, x)


def test_lpips_runs_with_a_local_backbone_checkpoint(tmp_path, monkeypatch):
    models = pytest.importorskip("torchvision.models")
    (tmp_path / "checkpoints").mkdir()
    torch.manual_seed(0)  # stand-in backbone weights written where torchvision looks: no download
    checkpoint = tmp_path / "checkpoints" / LPIPS_BACKBONE_FILES["squeeze"]
    torch.save(models.squeezenet1_1(weights=None).state_dict(), checkpoint)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert lpips(x, x, net="squeeze").item() == pytest.approx(0.0, abs=1e-7)
    assert lpips(x, 1 - x, net="squeeze").item() > lpips(x, (x + 0.02).clamp(0, 1), net="squeeze").item() > 0


def test_fid_with_a_feature_module_matches_the_closed_form():
    class ChannelMeans(torch.nn.Module):  # features = mean of each channel: known Gaussians
        def forward(self, images):
            return images.mean(dim=(2, 3)).double()

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 1, 1, generator=generator).expand(8, 3, 4, 4) * 0.5 + 0.1
    fake = real + torch.tensor([0.1, 0.0, 0.0]).view(1, 3, 1, 1)  # same covariance, mean moved by 0.1
    assert fid(real, fake, feature=ChannelMeans()).item() == pytest.approx(0.01, abs=1e-6)
    assert fid([real[:4], real[4:]], real, feature=ChannelMeans()).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ImageInputError, match="at least 2"):
        fid(real[:1], fake, feature=ChannelMeans())


def test_fid_with_inception_names_what_is_missing(tmp_path):
    x = torch.rand(2, 3, 8, 8)
    if importlib.util.find_spec("torch_fidelity") is None:
        with pytest.raises(MissingDependencyError, match="torch-fidelity.*zoo\\[image-metrics\\]"):
            fid(x, x)
    else:
        with pytest.raises(WeightsNotAvailableError, match="nope.pth.*torch-fidelity/releases"):
            fid(x, x, weights_path=tmp_path / "nope.pth")


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2), projection_dim=8)
    return CLIPModel(config).eval()


class _Processor:
    """A character-level stand-in for CLIPProcessor: pixels / 255, and one id per character."""

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True):
        if images is not None:
            return {"pixel_values": torch.stack([image.float() / 255 for image in images])}
        ids = [[3 + ord(ch) % 36 for ch in t[:7]] + [2] + [0] * (7 - len(t[:7])) for t in text]
        return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) > 0).long()}


def test_clip_score_is_100_times_the_mean_cosine():
    model, processor = _tiny_clip(), _Processor()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    pixels = (images * 255).round().to(torch.uint8)
    with torch.no_grad():
        image_features = model.get_image_features(processor(images=list(pixels))["pixel_values"]).pooler_output
    for texts in (["a red circle", "two squares", "a star"], ["blue", "green ring", "cross"],
                  ["z", "yy", "xxx"]):
        text_inputs = processor(text=texts)
        with torch.no_grad():
            text_features = model.get_text_features(**text_inputs).pooler_output
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
        expected = max(100 * cosine.mean().item(), 0.0)
        assert clip_score(images, texts, model=(model, processor)).item() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ImageInputError, match="3 images but 2 texts"):
        clip_score(images, ["a", "b"], model=(model, processor))


def test_clip_score_without_local_weights_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError, match="'no-such/clip'.*local"):
        clip_score(torch.rand(1, 3, 8, 8), ["a"], model="no-such/clip")


def test_image_grid_layout_and_atomic_write(tmp_path):
    red = torch.zeros(3, 4, 4)
    red[0] = 1.0
    rows = [[red, np.zeros((4, 4), bool)], torch.full((2, 3, 4, 4), -1.0)]
    grid = make_image_grid(rows, scale=2, pad=1, value_range=(0.0, 1.0))
    assert grid.size == (2 * 8 + 3, 2 * 8 + 3)
    pixels = np.asarray(grid)
    assert (pixels[1:9, 1:9] == (255, 0, 0)).all() and (pixels[1:9, 10:18] == 0).all()
    assert (pixels[10:18, 1:9] == 0).all() and (pixels[0] == 255).all()  # -1 clipped to black; white gutters
    symmetric = np.asarray(make_image_grid([torch.zeros(1, 3, 2, 2)], scale=1, pad=0, value_range=(-1, 1)))
    assert (symmetric == 128).all()  # 0 in [-1, 1] is mid-grey
    titled = make_image_grid(rows, titles=["input", "mask"], scale=2, pad=1)
    captioned = make_image_grid(rows, titles=[["a red square", None], None], scale=2, pad=1)
    assert titled.height > grid.height and captioned.height > grid.height and titled.width == grid.width
    out = save_image_grid(rows, tmp_path / "grid.png", titles=["input", "mask"], scale=2, pad=1)
    assert Image.open(out).size == titled.size and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        save_image_grid(rows, out)
    save_image_grid([[red]], out, overwrite=True)
    assert Image.open(out).size != titled.size
    with pytest.raises(ImageInputError, match="grid row 0, column 1"):
        make_image_grid([[red, tmp_path / "missing.png"]])


def test_grid_leaves_matplotlib_state_alone(tmp_path):
    import matplotlib

    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    save_image_grid([[torch.rand(3, 8, 8)]], tmp_path / "g.png")
    assert (matplotlib.get_backend(), dict(matplotlib.rcParams)) == before
