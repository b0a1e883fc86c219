"""fcn8s/batches.py: training batches (through helper.gen_batch_function, Udacity's face of them): images kept
with their own labels, seeded shuffling and augmentation, median-frequency class weights, 16-bit images."""
import os
import re
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

import helper
from fcn8s import batches, kitti, metrics
from fcn8s.errors import UserError
from fcn8s.images import read_rgb, resize_image
from tests.support import write_png16


def test_shuffled_batches_keep_each_image_with_its_own_label(tmp_path):
    """Each image shows its own ground truth in colour, so any mix-up between images and labels shows."""
    rng = np.random.default_rng(0)
    colours = np.array([kitti.NON_ROAD_COLOR, kitti.ROAD_COLOR, kitti.INVALID_COLOR], np.uint8)
    for folder in ('training/image_2', 'training/gt_image_2'):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(7):
        gt = np.kron(colours[rng.integers(0, 3, (2, 7))], np.ones((32, 32, 1), np.uint8))  # [64, 224, 3]
        iio.imwrite(tmp_path / f'training/image_2/um_{i:06d}.png', gt)
        iio.imwrite(tmp_path / f'training/gt_image_2/um_road_{i:06d}.png', gt)
    get_batches_fn = helper.gen_batch_function(str(tmp_path / 'training'), (64, 224), seed=3)
    for _ in range(2):
        for images, labels in get_batches_fn(3):
            road = np.all(images == kitti.ROAD_COLOR, axis=-1)
            non_road = np.all(images == kitti.NON_ROAD_COLOR, axis=-1)
            np.testing.assert_array_equal(labels[..., 1], road)
            np.testing.assert_array_equal(labels[..., 0], non_road)


def test_augmentation_keeps_image_and_label_aligned():
    """Each class painted in its own colour: wherever a zoomed, flipped label is uniform around a pixel, the
    image there still shows that class's colour."""
    palette = {metrics.NON_ROAD: kitti.NON_ROAD_COLOR, metrics.ROAD: kitti.ROAD_COLOR,
               metrics.IGNORE: kitti.INVALID_COLOR}
    paint = lambda classes: np.select([classes[..., None] == c for c in palette], list(palette.values()))
    classes = np.kron(np.random.default_rng(0).integers(-1, 2, (4, 14)), np.ones((16, 16), int)).astype(np.int8)
    image = paint(classes).astype(np.uint8)
    zoomed = 0
    for trial in range(20):
        aug_image, aug_classes = batches.flip_scale_crop(image, classes, np.random.RandomState(trial))
        assert aug_image.shape == image.shape and aug_classes.shape == classes.shape
        assert set(np.unique(aug_classes)) <= set(palette)
        windows = np.lib.stride_tricks.sliding_window_view(aug_classes, (3, 3))
        uniform = (windows == windows[..., 1:2, 1:2]).all(axis=(-1, -2))
        np.testing.assert_allclose(aug_image[1:-1, 1:-1][uniform], paint(aug_classes)[1:-1, 1:-1][uniform], atol=1)
        zoomed += not np.array_equal(aug_classes, classes) and not np.array_equal(aug_classes, classes[:, ::-1])
    assert zoomed >= 15  # most trials zoom (scale 1 exactly is the only way out)


def test_photometric_jitter_is_seeded_and_stays_in_range():
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    a = batches.jitter_photometric(image, np.random.RandomState(4))
    b = batches.jitter_photometric(image, np.random.RandomState(4))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and not np.array_equal(a, image)


def test_augmented_batches_are_seeded_per_epoch_and_batch(small_dataset):
    training = os.path.join(small_dataset, 'training')
    plain = next(helper.gen_batch_function(training, (64, 224), seed=2)(4))
    first = helper.gen_batch_function(training, (64, 224), seed=2, augment=True)
    again = helper.gen_batch_function(training, (64, 224), seed=2, augment=True)
    a, b = next(first(4)), next(again(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], plain[0])
    later = helper.gen_batch_function(training, (64, 224), seed=2, augment=True, first_epoch=1)
    np.testing.assert_array_equal(next(first(4))[0], next(later(4))[0])  # epoch 1 alike, however reached


def test_median_frequency_weights_of_the_docstrings_example():
    classes = np.array([[[0, 0, 0, 1]], [[0, 0, 2, -1]]])
    np.testing.assert_allclose(batches.median_frequency_weights(classes, 4), [7 / 15, 4 / 3, 1, 0], rtol=1e-6)


def test_balanced_batches_scale_each_one_hot_label_by_its_class_weight(small_dataset, capsys):
    training = os.path.join(small_dataset, 'training')
    images, labels = next(helper.gen_batch_function(training, (64, 224), seed=2)(4))
    same, weighted = next(helper.gen_batch_function(training, (64, 224), seed=2, balance=True)(4))
    assert 'median-frequency class weights' in capsys.readouterr().out
    np.testing.assert_array_equal(same, images)
    road, non_road = weighted[labels[..., 1] == 1][:, 1], weighted[labels[..., 0] == 1][:, 0]
    assert np.ptp(road) == 0 and np.ptp(non_road) == 0 and road[0] > 1 > non_road[0]  # road is the rarer class
    assert not weighted[labels.sum(-1) == 0].any()  # invalid pixels stay all zeros


def test_a_16_bit_training_image_is_trained_on_as_its_8_bit_picture(small_dataset, tmp_path):
    folder = tmp_path / 'training'
    shutil.copytree(os.path.join(small_dataset, 'training'), folder)
    image = read_rgb(str(folder / 'image_2' / 'um_000000.png'))
    grey16 = (image.mean(axis=-1) * 257).astype(np.uint16)  # 0-255 -> 0-65535, as a 16-bit export would
    write_png16(folder / 'image_2' / 'um_000000.png', grey16)
    images, _ = next(helper.gen_batch_function(str(folder), (64, 224), names=['um_000000.png'])(1))
    eight_bit = np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(images[0], resize_image(eight_bit, (64, 224)))


def test_shuffling_is_seeded_and_changes_per_epoch(small_dataset):
    training = os.path.join(small_dataset, 'training')
    first = helper.gen_batch_function(training, (32, 96), seed=5)
    second = helper.gen_batch_function(training, (32, 96), seed=5)
    epoch = lambda fn: np.concatenate([images[:, 0, 0, 0] for images, _ in fn(5)])
    a1, a2, b1 = epoch(first), epoch(first), epoch(second)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2)


def test_streamed_batches_are_the_kept_ones_also_when_resumed(small_dataset):
    layout = kitti.open_layout(small_dataset)
    pairs = [(image, label) for _, image, label in layout.train]

    def epochs(in_memory, first_epoch=0, count=2):
        get_batches_fn = batches.batch_function(pairs, (64, 224), layout.load_pair, 2, seed=4, first_epoch=first_epoch,
                                                augment=True, balance=True, check_pair=layout.check_pair,
                                                in_memory=in_memory)
        return [list(get_batches_fn(5)) for _ in range(count)]

    kept, streamed = epochs(True), epochs(False)
    resumed = epochs(False, first_epoch=1, count=1)  # a run resumed at the second epoch
    for a, b in zip([batch for epoch in kept for batch in epoch], [batch for epoch in streamed for batch in epoch]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])  # the class weights too: the same labels read
    for a, b in zip(kept[1], resumed[0]):
        np.testing.assert_array_equal(a[0], b[0])


def test_a_streamed_dataset_stops_on_a_bad_file_before_any_batch(small_dataset, tmp_path):
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    layout = kitti.open_layout(str(dataset))
    pairs = [(image, label) for _, image, label in layout.train]
    with open(pairs[7][0], 'wb') as f:
        f.write(b'\x89PNG\r\n')  # a file cut short: no header to read
    with pytest.raises(UserError, match=re.escape(pairs[7][0]) + ' cannot be read as an image'):
        batches.batch_function(pairs, (64, 224), layout.load_pair, check_pair=layout.check_pair, in_memory=False)
    shutil.copy(pairs[0][0], pairs[7][0])
    label = read_rgb(pairs[5][1])
    iio.imwrite(pairs[5][1], label[:-2])
    with pytest.raises(UserError, match=re.escape(pairs[5][1]) + r' is \d+x\d+ but its image is'):
        batches.batch_function(pairs, (64, 224), layout.load_pair, check_pair=layout.check_pair, in_memory=False)


def test_a_set_is_kept_when_it_takes_a_64th_of_the_memory_at_most():
    """4,000,000 bytes are a 64th of 256,000,000: kept with 256,000,000 bytes available, streamed with one byte
    less; kept where unknown."""
    assert batches.keep_in_memory(4_000_000, 256_000_000, 'images')[0]
    kept, said = batches.keep_in_memory(4_000_000, 255_999_999, 'images')
    assert not kept and said.startswith('images: streamed from disk')
    assert batches.keep_in_memory(4_000_000, None, 'images')[0]
