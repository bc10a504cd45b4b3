"""zoo eval selftok: metrics against the VAE ceiling and a mean-image baseline, the keep sweep, the grid, bad input."""
import json

import numpy as np
import pytest
import torch


from zoo.errors import ConfigError, ImageInputError
from zoo.vision.selftok.builder import build, make_config
from zoo.vision.selftok.evaluate import evaluate


def tiny(size):
    torch.manual_seed(0)
    model = build(make_config(size)).eval()
    cb = model.encoder.quantizer._codebook
    with torch.no_grad():
        cb.embed.copy_(torch.nn.functional.normalize(torch.randn_like(cb.embed), dim=-1))
        cb.initted.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("eval-images")
    rng = np.random.default_rng(1)
    for i in range(5):
        array = np.full((80, 96, 3), 200, dtype=np.uint8)  # not square: resized and centre-cropped to 64
        array[20:60, 30:70] = rng.integers(0, 256, size=3)
        Image.fromarray(array).save(root / f"{i}.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(root / "grey.png")  # greyscale: converted
    return root


def test_report_grid_and_sweep(folder, tmp_path):
    tokenizer, renderer = tiny("tiny"), tiny("tiny-renderer")
    renderer.vae.load_state_dict(tokenizer.vae.state_dict())
    report = evaluate(tokenizer, data=str(folder), renderer=renderer, steps=2, batch_size=4, keep="1,4",
                      plot=tmp_path / "grid.png", output=tmp_path / "metrics.json")
    assert report["images"] == 6
    for name in ("vae", "decoder", "renderer", "mean_image"):
        assert np.isfinite(report[name]["psnr"]) and -1 <= report[name]["ssim"] <= 1, name
    assert set(report["keep"]) == {"1", "4", "16"}
    assert isinstance(report["keep_psnr_rises"], bool)
    if "unavailable" in report:  # LPIPS / FID need packages or weights this machine may not have
        assert set(report["unavailable"]) <= {"lpips", "fid"}
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 6
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:  # 6 rows x 4 columns of 64 px images (plus titles)
        assert grid.width >= 4 * 64 and grid.height >= 6 * 64
    # the VAE round trip of an image is the same whichever decoder follows it
    again = evaluate(tokenizer, data=str(folder), steps=2, batch_size=6)
    assert again["vae"]["psnr"] == pytest.approx(report["vae"]["psnr"], rel=1e-5)
    assert "renderer" not in again and "keep" not in again


def test_bad_inputs(folder, tmp_path):
    tokenizer = tiny("tiny")
    with pytest.raises(ConfigError, match="Unknown selftok eval options"):
        evaluate(tokenizer, data=str(folder), stepz=3)
    with pytest.raises(ConfigError, match="keep"):
        evaluate(tokenizer, data=str(folder), keep="0,17")
    with pytest.raises(ConfigError, match="renderer"):
        evaluate(tokenizer, data=str(folder), renderer=tokenizer)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageInputError, match="no images"):
        evaluate(tokenizer, data=str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageInputError, match="bad.png"):
        evaluate(tokenizer, data=str(broken), steps=1)
