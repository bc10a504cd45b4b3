"""zoo.image: loading anything image-like, ImageTransform, prepare_images and ImageDataset."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.shapes import demo_manifest, read_manifest
from zoo.errors import ConfigError, ImageInputError
from zoo.image import (
    OPENAI_CLIP_MEAN, ImageDataset, ImageTransform, collate_images, load_image, prepare_images, to_uint8,
)


def _coords(width, height):
    """An RGB image whose pixel (x, y) is (x, y, 7): geometry can be read off the values."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], -1).astype(np.uint8), "RGB")


def test_every_input_kind_and_mode_becomes_rgb(tmp_path):
    grey = np.array([[0, 128], [255, 64]], np.uint8)
    assert load_image(grey).getpixel((1, 0)) == (128, 128, 128)
    assert load_image(grey[..., None]).getpixel((0, 1)) == (255, 255, 255)
    assert load_image(np.array([[0.0, 1.0]])).getpixel((1, 0)) == (255, 255, 255)
    assert load_image(np.array([[True, False]])).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.array([[65535, 257]], np.uint16)).getpixel((1, 0)) == (1, 1, 1)
    chw = torch.zeros(3, 2, 4)
    chw[0] = 1.0
    image = load_image(chw)
    assert image.size == (4, 2) and image.getpixel((3, 1)) == (255, 0, 0)
    assert load_image(torch.full((1, 2, 2), 200, dtype=torch.uint8)).getpixel((0, 0)) == (200, 200, 200)
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (100, 50, 0, 0)  # fully transparent
    rgba[0, 1] = (100, 50, 0, 255)
    assert load_image(rgba).getpixel((0, 0)) == (100, 50, 0)  # alpha dropped, as PIL convert("RGB")
    assert load_image(rgba, background=(255, 255, 255)).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").getpixel((1, 0)) == (200, 100, 0)
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").getpixel((1, 0)) == (255, 255, 255)
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").getpixel((0, 0)) == (255, 255, 255)
    source = Image.new("RGB", (3, 3), (1, 2, 3))
    copy = load_image(source)
    assert copy is not source and copy.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((2, 2, 2), np.uint8), r"\(H, W\) or \(H, W, 1\|3\|4\)"),
    (np.zeros((0, 4), np.uint8), "empty"),
    (np.array([[-0.5, 0.5]]), r"\[0, 1\].*\(x \+ 1\) / 2"),
    (np.array([[np.nan]]), "NaN"),
    (np.array([[300]], np.int32), "uint8"),
    (torch.zeros(2, 3, 4, 5), r"\(C, H, W\)"),
    (42, "expected a path, a PIL image"),
])
def test_bad_arrays_are_refused(bad, needle):
    with pytest.raises(ImageInputError, match=needle):
        load_image(bad)


def test_bad_files_are_refused_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty.png.*is empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageInputError, match="text.png"):
        load_image(tmp_path / "text.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageInputError, match=r"whole.png.*64x64 pixels.*limit of 1000.*max_pixels=None"):
        load_image(tmp_path / "whole.png", max_pixels=1000)
    assert load_image(tmp_path / "whole.png", max_pixels=None).size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # Pillow's own limit is the default
    with pytest.raises(ImageInputError, match="whole.png.*limit of 4000.*decompression bomb"):
        load_image(tmp_path / "whole.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit Pillow refuses by itself
    with pytest.raises(ImageInputError, match="whole.png.*too large for Pillow.*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "whole.png", max_pixels=None)
    with pytest.raises(ImageInputError, match="folder, not a file"):
        load_image(tmp_path)


def test_float_tiff_in_unit_range_is_read_like_a_float_array(tmp_path):
    """A mode-"F" file holding [0, 1] values used to come out black (1.0 read as 1/255)."""
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(values, "F").save(tmp_path / "unit.tiff")
    assert [load_image(tmp_path / "unit.tiff").getpixel((x, 0)) for x in range(3)] == \
        [load_image(values).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    Image.fromarray(np.array([[0.0, 128.0, 255.0]], np.float32), "F").save(tmp_path / "bytes.tiff")
    assert load_image(tmp_path / "bytes.tiff").getpixel((1, 0)) == (128, 128, 128)  # 0-255 floats as before
    Image.fromarray(np.array([[np.nan, 1.0]], np.float32), "F").save(tmp_path / "nan.tiff")
    with pytest.raises(ImageInputError, match="nan.tiff.*NaN"):
        load_image(tmp_path / "nan.tiff")


def test_urls_and_bad_transform_configs_get_clear_errors():
    with pytest.raises(ImageInputError, match="is a URL; zoo does not download inputs"):
        load_image("https://example.com/cat.png")  # used to say "'https:/example.com/cat.png' does not exist"
    with pytest.raises(ConfigError, match="expects a mapping"):
        ImageTransform.from_dict("resize")  # used to say "unknown key(s) e, i, r, s, z"


def test_mask_files_read_by_one_loader(tmp_path):
    from zoo.data.shapes import load_masks
    from zoo.image import load_mask

    Image.fromarray(np.array([[0, 100, 128, 255]], np.uint8), "L").save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    with pytest.raises(ImageInputError, match="mask '.*absent.png' of 'a.png' does not exist"):
        load_mask(tmp_path / "absent.png", of="a.png")
    scene = read_manifest(demo_manifest("train"))[0]
    masks = load_masks(scene)
    assert len(masks) == len(scene.objects) and all(m.dtype == bool and m.any() for m in masks)
    (tmp_path / "cut.png").write_bytes((tmp_path / "m.png").read_bytes()[:20])
    scene.objects[0].mask = str(tmp_path / "cut.png")
    with pytest.raises(ImageInputError, match=f"mask '.*cut.png' of 'scene {scene.id}'"):
        load_masks(scene)


def test_pad_to_square_as_llava_expand2square():
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    transform = ImageTransform(pad_to_square=True, mean=OPENAI_CLIP_MEAN, std=(1.0, 1.0, 1.0))
    padded = np.asarray(transform.geometry(image))
    fill = (122, 116, 104)  # int(m * 255) of the CLIP mean
    assert transform.fill_color() == fill and padded.shape == (4, 4, 3)
    assert (padded[0] == fill).all() and (padded[3] == fill).all() and (padded[1:3] == (255, 0, 0)).all()
    tall = np.asarray(ImageTransform(pad_to_square=True, fill=(0, 0, 9)).geometry(Image.new("RGB", (1, 4))))
    assert (tall[:, 0] == (0, 0, 9)).all() and (tall[:, 1] == 0).all() and (tall[:, 2:] == (0, 0, 9)).all()


def test_resize_shortest_side_then_centre_crop_are_exact():
    transform = ImageTransform(resize=10, crop=8, interpolation="nearest")
    out = transform.geometry(_coords(40, 20))
    assert out.size == (8, 8)
    # 40x20 -> 20x10: nearest samples source pixel 2i + 1; crop offsets round((10-8)/2)=1, round((20-8)/2)=6
    pixels = np.asarray(out)
    assert pixels[0, 0].tolist() == [13, 3, 7] and pixels[7, 7].tolist() == [27, 17, 7]
    assert ImageTransform(resize=(3, 5)).geometry(_coords(40, 20)).size == (5, 3)
    assert ImageTransform(resize=7).geometry(_coords(10, 30)).size == (7, 21)  # int(7 * 30 / 10)
    small = ImageTransform(crop=6, fill=(1, 1, 1)).geometry(_coords(4, 4))
    assert small.size == (6, 6) and small.getpixel((0, 0)) == (1, 1, 1) and small.getpixel((1, 1)) == (0, 0, 7)


def test_normalisation_and_its_inverse():
    image = Image.new("RGB", (2, 2), (255, 0, 51))
    unit = ImageTransform()(image)
    assert unit.shape == (3, 2, 2) and unit.dtype == torch.float32
    assert unit[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    symmetric = ImageTransform.minus_one_one()
    x = symmetric(image)
    assert x[:, 1, 1].tolist() == pytest.approx([1.0, -1.0, -0.6])
    assert torch.allclose(symmetric.unnormalize(x), unit)
    clip = ImageTransform(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(image)
    assert clip[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 0.1])


def test_transform_config_round_trip_and_errors():
    transform = ImageTransform(resize=336, crop=336, pad_to_square=True, mean=OPENAI_CLIP_MEAN,
                               std=(0.26862954, 0.26130258, 0.27577711))
    assert ImageTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform
    with pytest.raises(ConfigError, match="unknown key.*size"):
        ImageTransform.from_dict({"size": 224})
    with pytest.raises(ConfigError, match="interpolation 'cubic'"):
        ImageTransform(interpolation="cubic")
    with pytest.raises(ConfigError, match="both mean and std"):
        ImageTransform(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="resize"):
        ImageTransform(resize=-3)


def test_masks_follow_the_image_geometry():
    image = _coords(30, 20)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 3:9] = True
    transform = ImageTransform(pad_to_square=True, resize=15, crop=12, interpolation="nearest", fill=(0, 0, 0))
    out_image = np.asarray(transform.geometry(image))
    out_mask = transform.apply_mask(mask).numpy()
    assert out_mask.shape == (12, 12) and out_mask.any()
    inside = out_image[out_mask]  # the pixels the mask keeps carry coordinates from the masked box
    assert (inside[:, 0] >= 3).all() and (inside[:, 0] < 9).all() and (inside[:, 1] >= 5).all() and \
        (inside[:, 1] < 10).all()


def test_prepare_images_batches_mixed_inputs(tmp_path):
    Image.new("RGB", (8, 6), (255, 255, 255)).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", Image.new("L", (8, 6), 0), np.zeros((6, 8, 3), np.uint8), torch.ones(3, 6, 8)]
    batch = prepare_images(inputs)
    assert batch.shape == (4, 3, 6, 8) and batch[0].min() == 1.0 and batch[1].max() == 0.0
    assert prepare_images(str(tmp_path / "a.png")).shape == (1, 3, 6, 8)
    assert prepare_images(torch.zeros(2, 3, 5, 5)).shape == (2, 3, 5, 5)
    resized = prepare_images([tmp_path / "a.png", Image.new("RGB", (20, 10))], ImageTransform(resize=4, crop=4))
    assert resized.shape == (2, 3, 4, 4)
    with pytest.raises(ImageInputError, match=r"different sizes.*0: \(6, 8\), 1: \(10, 20\).*resize"):
        prepare_images([tmp_path / "a.png", Image.new("RGB", (20, 10))])
    with pytest.raises(ImageInputError, match="input 1.*missing.png.*does not exist"):
        prepare_images([tmp_path / "a.png", tmp_path / "missing.png"])
    with pytest.raises(ImageInputError, match="no images"):
        prepare_images([])
    assert to_uint8(batch[:1]).shape == (6, 8, 3)


def test_image_dataset_from_a_shapes_manifest_with_masks():
    dataset = ImageDataset(demo_manifest("heldout"), ImageTransform(resize=32), masks=True)
    scenes = read_manifest(demo_manifest("heldout"))
    assert len(dataset) == len(scenes) == 100
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["caption"] == scenes[0].caption
    assert item["masks"].shape == (len(scenes[0].objects), 32, 32) and item["masks"].dtype == torch.bool
    batch = collate_images([dataset[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32) and len(batch["masks"]) == 3 and len(batch["caption"]) == 3


def test_image_dataset_from_folder_and_plain_manifest(tmp_path):
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "cats" / "a.png")
    Image.new("L", (4, 4), 255).save(tmp_path / "m.png")
    folder = ImageDataset(tmp_path / "cats")
    assert len(folder) == 1 and folder[0]["id"] == "a" and folder[0]["image"].shape == (3, 4, 4)
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"path": "cats/a.png", "text": "a grey square", "mask": "m.png"}) + "\n")
    item = ImageDataset(manifest, masks=True)[0]
    assert item["caption"] == "a grey square" and item["masks"].shape == (1, 4, 4) and item["masks"].all()
    assert ImageDataset(manifest, as_pil=True)[0]["image"].size == (4, 4)
    manifest.write_text(json.dumps({"path": "cats/a.png"}) + "\n")
    with pytest.raises(ConfigError, match="name no masks"):
        ImageDataset(manifest, masks=True)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("no images here")
    with pytest.raises(ImageInputError, match="lists no images"):
        ImageDataset(tmp_path / "none")  # used to be a dataset of length 0 that fails later, far from the cause


def _photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).resize((160, 100), Image.BILINEAR)


def test_matches_torchvision_resize_and_centre_crop():
    transforms = pytest.importorskip("torchvision.transforms")
    reference = transforms.Compose([transforms.Resize(32, transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(32), transforms.ToTensor()])(_photo())
    ours = ImageTransform(resize=32, crop=32, interpolation="bicubic")(_photo())
    assert torch.equal(ours, reference)


def test_floor_offsets_match_the_transformers_clip_processor():
    from transformers import CLIPImageProcessor

    std = (0.26862954, 0.26130258, 0.27577711)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=list(OPENAI_CLIP_MEAN), image_std=list(std))
    reference = torch.as_tensor(np.asarray(processor(_photo(), return_tensors="pt")["pixel_values"][0]))
    ours = ImageTransform(resize=32, crop=32, crop_offset="floor", mean=OPENAI_CLIP_MEAN, std=std)(_photo())
    # the 160x100 photo resizes to 51x32: the crop starts at x = 9 (floor), not 10 (round)
    assert (ours - reference).abs().max().item() <= 1.01 / 255 / min(std)  # one grey level of rounding
