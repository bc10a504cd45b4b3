"""Set-of-Mark tagging: the official rules on hand-made masks, fast == reference, drawing, `zoo som-tag`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main as zoo_main
from zoo.multimodal.som_llava.tags import (
    MaskInputError, number_to_letters, place_tags, place_tags_reference, resize_shortest_side, tag_image,
)

W, H = 800, 640  # shortest side already 640: the tagger keeps the size


def box(x0, y0, x1, y1, size=(W, H)):
    """Mask of the pixels x0..x1-1, y0..y1-1 (end-exclusive)."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def hand_made_masks():
    """Five masks worked out by hand (coordinates are (x, y), ends exclusive):

    D  200x200 at x 250-449, y 0-199 (area 40000), touching the top border;
    B  50x50   at x 100-149, y 300-349 (2500);
    C  10x10   at x 252-261, y 190-199 (100 < 110: no tag), inside D;
    A  100x80  at x 600-699, y 100-179 (8000);
    E  50x50   at x 100-149, y 400-449 (2500, same area as B but later in the list).
    """
    return [box(250, 0, 450, 200), box(100, 300, 150, 350), box(252, 190, 262, 200), box(600, 100, 700, 180),
            box(100, 400, 150, 450)]


def test_hand_made_tags_worked_out_by_hand():
    tags = place_tags(hand_made_masks())
    # Order by area, stable: C (100, skipped), B (2500), E (2500, after B), A (8000), D (40000).
    assert [t.label for t in tags] == ["1", "2", "3", "4"]
    assert [t.mask_index for t in tags] == [1, 4, 3, 0]
    # B: distance min(x-99, 150-x, y-299, 350-y) peaks at 25 on x 124-125, y 324-325; the 4 maxima in
    # row-major order are (124,324) (125,324) (124,325) (125,325); element 4//2 = 2 is (124, 325).
    assert tags[0].peak == (124, 325) and tags[0].anchor == (126, 319) and tags[0].distance == 25.0
    # E: the same shape 100 px lower.
    assert tags[1].peak == (124, 425) and tags[1].anchor == (126, 419)
    # A (the official example): the maximum 40 holds on rows y 139 and 140 for x 639..660 (22 each);
    # element 44//2 = 22 is the first of the second row, (639, 140) -> text at (641, 134).
    assert tags[2].peak == (639, 140) and tags[2].anchor == (641, 134) and tags[2].distance == 40.0
    # D: the top border (row -1) counts as outside, so min(y+1, 200-y, x-249, 450-x) peaks at 100 on
    # x 349-350, y 99-100; C's hole is farther than 100 from there. Element 2 of 4 is (349, 100).
    assert tags[3].peak == (349, 100) and tags[3].anchor == (351, 94) and tags[3].distance == 100.0
    # C was skipped but still removed its pixels from D.
    assert tags[3].area == 40000 - 100
    assert not tags[3].mask[190:200, 252:262].any() and tags[3].mask.sum() == 39900
    assert tags[3].bbox == (250, 0, 450, 200)
    assert [t.area for t in tags[:3]] == [2500, 2500, 8000]


def test_letters_and_number_to_letters():
    tags = place_tags(hand_made_masks(), labels="letters")
    assert [t.label for t in tags] == ["a", "b", "c", "d"]
    expected = {1: "a", 2: "b", 26: "z", 27: "aa", 28: "ab", 52: "az", 53: "ba", 702: "zz", 703: "aaa"}
    assert {n: number_to_letters(n) for n in expected} == expected
    with pytest.raises(ValueError):
        number_to_letters(0)


def test_skip_rule_is_strictly_below_110_and_the_first_mask_still_counts():
    # 10x11 = 110 pixels is tagged, 109 is not.
    assert len(place_tags([box(0, 0, 10, 11)])) == 1
    tiny = box(0, 0, 10, 11)
    tiny[0, 0] = False
    assert place_tags([tiny]) == []
    # The smallest mask (skipped) cuts a later mask below 110: 10x12=120 minus 10x2=20 -> 100 px, no tag.
    small, later = box(0, 0, 10, 2), box(0, 0, 10, 12)
    assert place_tags([later, small]) == []
    assert len(place_tags([later])) == 1


def test_overlap_removal_gives_disjoint_masks_that_cover_the_union():
    rng = np.random.default_rng(3)
    masks = []
    for _ in range(12):
        x0, y0 = rng.integers(0, 150, 2)
        masks.append(box(int(x0), int(y0), int(x0 + rng.integers(12, 60)), int(y0 + rng.integers(12, 60)), (200, 200)))
    tags = place_tags(masks, min_area=1)
    kept = np.stack([t.mask for t in tags])
    assert kept.sum(0).max() == 1  # disjoint
    union = np.any(np.stack(masks), 0)
    assert np.array_equal(kept.any(0), union)  # min_area=1: nothing but empty remainders is lost
    for tag in tags:  # each kept region is a subset of its own mask, smaller ones took their pixels first
        assert not (tag.mask & ~masks[tag.mask_index]).any()


def test_tag_sits_at_the_distance_transform_maximum():
    from scipy import ndimage

    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 50) ** 2 + (xx - 70) ** 2 < 30 ** 2
    ring = ((yy - 60) ** 2 + (xx - 90) ** 2 < 55 ** 2) & ~disc
    for tag in place_tags([ring, disc]):
        distance = ndimage.distance_transform_edt(np.pad(tag.mask, 1))[1:-1, 1:-1]
        x, y = tag.peak
        assert distance[y, x] == distance.max() == pytest.approx(tag.distance)
        assert tag.anchor == (x + 2, y - 6)


def test_fast_path_equals_the_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(12):
        height, width = int(rng.integers(30, 160)), int(rng.integers(30, 160))
        yy, xx = np.mgrid[:height, :width]
        masks = []
        for _ in range(int(rng.integers(1, 12))):
            cy, cx, r = int(rng.integers(0, height)), int(rng.integers(0, width)), int(rng.integers(3, 60))
            kind = trial % 3
            if kind == 0:
                masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
            elif kind == 1:
                masks.append((np.abs(yy - cy) + np.abs(xx - cx)) < r)
            else:
                masks.append(rng.random((height, width)) < 0.4)
        fast = [(t.label, t.anchor, t.peak, t.mask_index, t.area, t.bbox) for t in place_tags(masks)]
        slow = [(t.label, t.anchor, t.peak, t.mask_index, t.area, t.bbox) for t in place_tags_reference(masks)]
        assert fast == slow


def test_resize_rounds_the_long_side_down_like_torchvision():
    assert resize_shortest_side(Image.new("RGB", (500, 375)), 640).size == (853, 640)  # 853.33
    assert resize_shortest_side(Image.new("RGB", (427, 640)), 640).size == (640, 959)  # 959.25
    assert resize_shortest_side(Image.new("RGB", (300, 1000)), 640).size == (640, 2133)  # 2133.33
    same = Image.new("RGB", (640, 700), (1, 2, 3))
    assert resize_shortest_side(same, 640).tobytes() == same.tobytes()


def test_resize_matches_torchvision_pixels():
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(5)
    for size in ((500, 375), (427, 640), (640, 480), (1000, 300), (641, 640)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        want = transforms.Resize(640, interpolation=transforms.InterpolationMode.BICUBIC)(image)
        got = resize_shortest_side(image, 640)
        assert got.size == want.size and got.tobytes() == want.tobytes()


def _scene():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return Image.fromarray(pixels), hand_made_masks()


def test_tag_image_draws_white_text_on_dark_boxes_and_leaves_the_rest():
    image, masks = _scene()
    result = tag_image(image, masks)
    assert result.size == (W, H) and result.original_size == (W, H) and len(result) == 4
    drawn, plain = np.asarray(result.image).astype(int), np.asarray(result.resized).astype(int)
    assert np.array_equal(plain, np.asarray(image))
    changed = (drawn != plain).any(-1)
    near = np.zeros_like(changed)
    for tag in result.tags:
        x, y = tag.anchor
        near[max(0, y - 5):y + 35, max(0, x - 35):x + 36] = True
        window = drawn[y:y + 25, x - 12:x + 12]
        assert (window.min(-1) >= 240).sum() > 10  # white glyph pixels
        # the black box at alpha 0.8 darkens the noise: 0.2 * value (+ rounding)
        assert np.median(window) < 60
    assert changed.any() and not (changed & ~near).any()
    assert result["3"].mask_index == 3 and result[3].label == "3"
    assert result.tag_at(120, 310).label == "1" and result.tag_at(5, 5) is None


def test_masks_at_the_input_size_are_resized_and_wrong_sizes_are_rejected():
    image = Image.new("RGB", (400, 320), (0, 0, 0))  # shortest side 320 -> 800 x 640
    small = box(300, 50, 350, 90, (400, 320))
    result = tag_image(image, [small], draw=False)
    assert result.image is None and result.size == (800, 640)
    assert result.tags[0].bbox == (600, 100, 700, 180)  # nearest-neighbour x2
    with pytest.raises(MaskInputError, match="masks must cover the image"):
        tag_image(image, [np.zeros((100, 100), bool)])
    with pytest.raises(MaskInputError, match="2-D"):
        tag_image(image, [np.zeros((2, 320, 400, 3), bool)])
    with pytest.raises(MaskInputError, match="masks or a proposer"):
        tag_image(image)


def test_no_surviving_mask_gives_no_tags_and_an_untouched_picture():
    image = Image.new("RGB", (640, 640), (9, 9, 9))
    result = tag_image(image, [box(0, 0, 5, 5, (640, 640))])
    assert result.tags == [] and np.array_equal(np.asarray(result.image), np.asarray(image))


def test_grey_and_rgba_inputs_and_proposer_objects():
    class Proposed:
        def __init__(self, mask):
            self.mask = mask

    class Proposer:
        def propose(self, image):
            assert image.size == (W, H) and image.mode == "RGB"
            return [Proposed(m.astype(np.uint8) * 255) for m in hand_made_masks()]

    grey = Image.new("L", (W, H), 77)
    rgba = Image.new("RGBA", (W, H), (10, 20, 30, 128))
    for image in (grey, rgba):
        result = tag_image(image, proposer=Proposer(), draw=False)
        assert [t.anchor for t in result.tags] == [(126, 319), (126, 419), (641, 134), (351, 94)]


def test_cli_som_tag_writes_picture_and_json(tmp_path, capsys):
    image, masks = _scene()
    image.save(tmp_path / "scene.png")
    folder = tmp_path / "masks"
    folder.mkdir()
    for index, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{index:02d}.png")
    out, tags_json = tmp_path / "tagged.jpg", tmp_path / "tags.json"
    argv = ["som-tag", str(tmp_path / "scene.png"), "--masks", str(folder), "-o", str(out), "--json", str(tags_json)]
    assert zoo_main(argv) == 0
    assert "4 tags on a 800x640 image" in capsys.readouterr().out
    data = json.loads(tags_json.read_text())
    assert [t["anchor"] for t in data["tags"]] == [[126, 319], [126, 419], [641, 134], [351, 94]]
    assert [t["mask_index"] for t in data["tags"]] == [1, 4, 3, 0]
    with Image.open(out) as written:
        assert written.format == "JPEG" and written.size == (800, 640)
    assert zoo_main(argv) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    np.save(tmp_path / "masks.npy", np.stack(masks))
    argv = ["som-tag", str(tmp_path / "scene.png"), "--masks", str(tmp_path / "masks.npy"), "--letters",
            "-o", str(out), "--json", str(tags_json), "--overwrite"]
    assert zoo_main(argv) == 0
    assert [t["label"] for t in json.loads(tags_json.read_text())["tags"]] == ["a", "b", "c", "d"]


def test_cli_with_the_shapes_world_proposer(tmp_path, capsys):
    import zoo.data.shapes as shapes
    spec = {"background": {"color": "white", "texture": "plain"},
            "objects": [{"shape": "circle", "color": "red", "size": 0.3, "center": (0.3, 0.3)},
                        {"shape": "square", "color": "blue", "size": 0.45, "center": (0.7, 0.65)}]}
    image, masks = shapes.render(spec, 128)
    image.save(tmp_path / "scene.png")
    out = tmp_path / "tagged.png"
    assert zoo_main(["som-tag", str(tmp_path / "scene.png"), "--proposer", "shapes", "-o", str(out),
                     "--json", str(tmp_path / "tags.json")]) == 0
    tags = json.loads((tmp_path / "tags.json").read_text())["tags"]
    assert len(tags) == 2 and Image.open(out).size == (640, 640)
    # the smaller (red circle) region is tagged first; its anchor lies near the circle's centre (x5 scale)
    assert abs(tags[0]["peak"][0] - 0.3 * 640) <= 3 and abs(tags[0]["peak"][1] - 0.3 * 640) <= 3
