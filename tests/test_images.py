"""fcn8s/images.py: resizing, the road and class overlays, class ids of probability maps, and reading 16-bit and
truncated PNGs."""
import os

import numpy as np
import pytest

from fcn8s import kitti, synthetic
from fcn8s.errors import UserError
from fcn8s.images import (class_ids_at, class_overlay, overlay, read_rgb, resize_image, resize_nearest,
                          resize_probability)
from tests.support import write_png16


def test_nearest_resizing_keeps_only_the_three_colours():
    _, gt = synthetic.render_scene(np.random.default_rng(3), 375, 1242)
    for shape in [(160, 576), (64, 224), (400, 1300)]:
        small = resize_nearest(gt, shape)
        assert small.shape == (*shape, 3)
        colours = {tuple(c) for c in np.unique(small.reshape(-1, 3), axis=0)}
        assert colours <= {kitti.ROAD_COLOR, kitti.NON_ROAD_COLOR, kitti.INVALID_COLOR}
        assert kitti.ROAD_COLOR in colours


def test_resize_image_takes_height_then_width():
    image = np.zeros((30, 100, 3), np.uint8)
    assert resize_image(image, (64, 224)).shape == (64, 224, 3)


def test_overlay_is_green_at_alpha_127_where_road():
    image = np.full((1, 2, 3), 100, np.uint8)
    out = overlay(image, np.array([[0.9, 0.2]]))
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 0], np.round(100 * (128 / 255) + np.array([0, 255, 0]) * 127 / 255))
    every = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # every value of every channel
    expected = np.round(every * (128 / 255) + np.array([0, 255, 0]) * (127 / 255))
    np.testing.assert_array_equal(overlay(every, np.ones((256, 1))), expected)


def test_class_ids_at_is_the_argmax_of_the_resized_maps_first_class_on_ties():
    """Three classes on a 1x2 map resized to 1x4. Pillow's bilinear upsampling by 2 samples at x = 0.25, 0.75,
    1.25, 1.75 of the source pixel centres 0.5, 1.5 (clamped at the edges): weights (1, 0), (0.75, 0.25),
    (0.25, 0.75), (0, 1). Class 0 is 0.2 then 0.6 -> 0.2, 0.3, 0.5, 0.6; class 1 is 0.6 then 0.2 -> 0.6, 0.5,
    0.3, 0.2; class 2 is 0.4 everywhere. Argmax: 1, 1, 0, 0; and with class 2 at 0.6, it ties class 1 at the first
    pixel and class 0 at the last, where the lower id wins: 1, 2, 2, 0."""
    probs = np.array([[[0.2, 0.6, 0.4], [0.6, 0.2, 0.4]]], np.float32)
    np.testing.assert_array_equal(class_ids_at(probs, (1, 4)), [[1, 1, 0, 0]])
    probs[..., 2] = 0.6
    np.testing.assert_array_equal(class_ids_at(probs, (1, 4)), [[1, 2, 2, 0]])
    rng = np.random.default_rng(0)
    probs = rng.random((6, 8, 5)).astype(np.float32)
    stacked = np.stack([resize_probability(probs[..., k], (15, 20)) for k in range(5)], axis=-1)
    np.testing.assert_array_equal(class_ids_at(probs, (15, 20)), np.argmax(stacked, axis=-1))


def test_class_overlay_blends_known_classes_and_leaves_ignored_pixels():
    """Grey 100 blended half-and-half with red (255, 0, 0) is (177.5, 50, 50): Pillow's blend gives 177 or 178;
    ids -1 and 255 (ignored) keep the picture's pixels."""
    image = np.full((1, 3, 3), 100, np.uint8)
    out = class_overlay(image, np.array([[0, -1, 255]]), [(255, 0, 0), (0, 0, 255)])
    assert out[0, 0, 0] in (177, 178)
    np.testing.assert_array_equal(out[0, 0, 1:], [50, 50])
    np.testing.assert_array_equal(out[0, 1:], image[0, 1:])


def test_16_bit_pngs_are_read_scaled_to_8_bits(tmp_path):
    """Grey [[0, 255, 256], [0x1234, 0xFFFF, 0x8000]] >> 8 = [[0, 0, 1], [0x12, 0xFF, 0x80]], the same in the three
    channels; RGB alike per channel."""
    grey = np.array([[0, 255, 256], [0x1234, 0xFFFF, 0x8000]], np.uint16)
    write_png16(tmp_path / 'grey.png', grey)
    expected = np.array([[0, 0, 1], [0x12, 0xFF, 0x80]], np.uint8)
    np.testing.assert_array_equal(read_rgb(str(tmp_path / 'grey.png')), np.repeat(expected[..., None], 3, -1))
    rgb = np.stack([grey, grey[::-1], 0xFFFF - grey], axis=-1)
    write_png16(tmp_path / 'rgb.png', rgb)
    np.testing.assert_array_equal(read_rgb(str(tmp_path / 'rgb.png')), (rgb >> 8).astype(np.uint8))


def test_a_truncated_png_is_a_clear_error(small_dataset, tmp_path):
    path = tmp_path / 'um_000000.png'
    with open(os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png'), 'rb') as f:
        path.write_bytes(f.read()[:200])
    with pytest.raises(UserError, match='um_000000.png cannot be read as an image'):
        read_rgb(str(path))
