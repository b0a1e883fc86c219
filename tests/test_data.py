"""Images, KITTI Road's layout and labels, training batches and augmentation, the validation split, the generated
scenes, and what a broken dataset says."""
import errno
import os
import re
import shutil
import time

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import helper
import main
from conftest import KITTI_SAMPLES, SMALL_SIZES, make_zip, run_main, snapshot, write_png16
from fcn8s import batches, kitti, layout, metrics, pipeline, synthetic
from fcn8s.errors import UserError
from fcn8s.images import (class_ids_at, class_overlay, overlay, read_rgb, resize_image, resize_nearest,
                          resize_probability)


def test_decode_label_of_a_hand_made_patch():
    gt = np.array([[[255, 0, 255], [255, 0, 0]], [[0, 0, 0], [255, 0, 255]]], np.uint8)
    classes = kitti.decode_label(gt)
    np.testing.assert_array_equal(classes, [[metrics.ROAD, metrics.NON_ROAD], [metrics.IGNORE, metrics.ROAD]])
    np.testing.assert_array_equal(batches.one_hot(classes), [[[0, 1], [1, 0]], [[0, 0], [0, 1]]])


def test_decode_label_names_unknown_colours():
    gt = np.zeros((2, 2, 3), np.uint8)
    gt[0, 0] = (255, 0, 254)
    with pytest.raises(ValueError, match=r'\(255, 0, 254\): 1 px'):
        kitti.decode_label(gt)


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


def test_batches_pair_images_and_labels_by_name(small_dataset, tmp_path):
    """Labels listed in another order than images (a stray lane label sorts between them) still pair by name."""
    folder = tmp_path / 'training'
    folder.mkdir()
    os.symlink(os.path.join(small_dataset, 'training', 'image_2'), folder / 'image_2')
    (folder / 'gt_image_2').mkdir()
    src = os.path.join(small_dataset, 'training', 'gt_image_2')
    for name in os.listdir(src):
        os.symlink(os.path.join(src, name), folder / 'gt_image_2' / name)
    os.symlink(os.path.join(src, 'um_road_000000.png'), folder / 'gt_image_2' / 'um_lane_000001.png')
    pairs = kitti.training_pairs(str(folder))
    assert all(os.path.basename(l) == kitti.label_name(os.path.basename(i)) for i, l in pairs)
    images, labels = next(helper.gen_batch_function(str(folder), (64, 224))(100))
    assert images.shape == (12, 64, 224, 3) and labels.shape == (12, 64, 224, 2)
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 255
    assert set(np.unique(labels.sum(-1))) <= {0.0, 1.0}


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


def test_prefetch_keeps_order_overlaps_work_and_passes_errors_on():
    made = []

    def slow(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f'bad item {i}')
            time.sleep(0.05)
            made.append(i)
            yield i
    assert list(pipeline.prefetch(slow(6))) == list(range(6))
    consumer = pipeline.prefetch(slow(6), depth=2)
    assert next(consumer) == 0
    deadline = time.time() + 10
    while len(made) < 10 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time for more than the queue holds, were the producer not blocked
    assert made[6:] == [0, 1, 2, 3]  # made ahead, in the background, while the consumer was busy: at most depth+1
    consumer.close()  # the consumer stops: so does the producer, without making the rest
    time.sleep(0.3)
    assert made[6:] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='bad item 2'):
        list(pipeline.prefetch(slow(5, fail_at=2)))


def test_behind_consumes_in_order_in_the_background_and_passes_errors_on():
    consumed, started = [], time.perf_counter()

    def slow(item, fail_at=None):
        if item == fail_at:
            raise ValueError(f'bad item {item}')
        time.sleep(0.05)
        consumed.append(item)
    with pipeline.behind(slow, depth=2) as put:
        for i in range(4):
            put(i)
        handed = time.perf_counter() - started
    assert consumed == [0, 1, 2, 3]  # all of them, in order, when the context is left
    assert handed < 0.1  # put did not wait for the consumer: 4 x 50 ms would be 0.2 s
    consumed.clear()
    with pytest.raises(ValueError, match='bad item 1'):
        with pipeline.behind(lambda item: slow(item, fail_at=1)) as put:
            for i in range(50):
                put(i)
    assert consumed == [0] and time.perf_counter() - started < 2  # nothing after the failure was consumed
    consumed.clear()
    with pytest.raises(KeyError):  # the producer's own error wins; what was waiting is dropped
        with pipeline.behind(slow, depth=2) as put:
            for i in range(3):
                put(i)
            raise KeyError('stop')
    assert consumed in ([], [0])  # at most the item being consumed at the time
    assert list(pipeline.batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]] and not list(pipeline.batched([], 3))


def test_an_image_without_ground_truth_is_a_clear_error(small_dataset, tmp_path):
    folder = tmp_path / 'training'
    (folder / 'gt_image_2').mkdir(parents=True)
    os.symlink(os.path.join(small_dataset, 'training', 'image_2'), folder / 'image_2')
    with pytest.raises(UserError, match='um_000000.png needs .*um_road_000000.png'):
        helper.gen_batch_function(str(folder), (64, 224))


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


def test_a_16_bit_training_image_is_trained_on_as_its_8_bit_picture(small_dataset, tmp_path):
    folder = tmp_path / 'training'
    shutil.copytree(os.path.join(small_dataset, 'training'), folder)
    image = read_rgb(str(folder / 'image_2' / 'um_000000.png'))
    grey16 = (image.mean(axis=-1) * 257).astype(np.uint16)  # 0-255 -> 0-65535, as a 16-bit export would
    write_png16(folder / 'image_2' / 'um_000000.png', grey16)
    images, _ = next(helper.gen_batch_function(str(folder), (64, 224), names=['um_000000.png'])(1))
    eight_bit = np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(images[0], resize_image(eight_bit, (64, 224)))


def test_a_truncated_png_is_a_clear_error(small_dataset, tmp_path):
    path = tmp_path / 'um_000000.png'
    with open(os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png'), 'rb') as f:
        path.write_bytes(f.read()[:200])
    with pytest.raises(UserError, match='um_000000.png cannot be read as an image'):
        read_rgb(str(path))


def test_shuffling_is_seeded_and_changes_per_epoch(small_dataset):
    training = os.path.join(small_dataset, 'training')
    first = helper.gen_batch_function(training, (32, 96), seed=5)
    second = helper.gen_batch_function(training, (32, 96), seed=5)
    epoch = lambda fn: np.concatenate([images[:, 0, 0, 0] for images, _ in fn(5)])
    a1, a2, b1 = epoch(first), epoch(first), epoch(second)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2)


def test_validation_split_is_seeded_stratified_disjoint_and_made_of_stretches_of_frames():
    names = [f'{cat}_{i:06d}.png' for cat, n in (('um', 95), ('umm', 96), ('uu', 98)) for i in range(n)]
    train, val = layout.split_train_val(names, 0.1, 0, kitti.category)
    assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert [sum(kitti.category(n) == c for n in val) for c in kitti.CATEGORIES] == [10, 10, 10]
    for cat in kitti.CATEGORIES:  # 10 frames each: one stretch of 10 consecutive frames, not 10 random ones
        frames = sorted(int(n[-10:-4]) for n in val if kitti.category(n) == cat)
        assert frames == list(range(frames[0], frames[0] + 10)) and frames[0] % layout.VAL_STRETCH == 0
    assert layout.split_train_val(names, 0.1, 0, kitti.category) == (train, val)
    assert layout.split_train_val(names, 0.1, 1, kitti.category)[1] != val
    many = [f'uu_{i:06d}.png' for i in range(400)]  # 40 held out: four stretches of 10
    held = sorted(int(n[-10:-4]) for n in layout.split_train_val(many, 0.1, 3, kitti.category)[1])
    assert len(held) == 40 and sum(b - a != 1 for a, b in zip(held, held[1:])) <= 3


@pytest.mark.skipif(not os.path.isdir(KITTI_SAMPLES), reason='no real KITTI samples beside the project')
def test_real_kitti_files_load():
    training = os.path.join(KITTI_SAMPLES, 'training')
    images, labels = next(helper.gen_batch_function(training, (160, 576))(2))
    assert images.shape == (2, 160, 576, 3) and labels.shape == (2, 160, 576, 2)
    road = labels[..., 1].mean()
    invalid = (labels.sum(-1) == 0).mean()
    assert 0.1 < road < 0.3 and 0 < invalid < 0.05  # um_road_000000/1: ~15 % road, ~2 % invalid
    tops = images[:, :40].mean()
    assert tops > images[:, -40:].mean()  # bright sky above, dark road below: not transposed


def test_synthetic_scenes_are_deterministic_and_use_the_kitti_layout(tmp_path):
    a = synthetic.make_synthetic_kitti(str(tmp_path / 'a'), 4, 2, seed=3, sizes=SMALL_SIZES, progress=False)
    b = synthetic.make_synthetic_kitti(str(tmp_path / 'b'), 4, 2, seed=3, sizes=SMALL_SIZES, progress=False)
    for folder, expected in [('training/image_2', ['um_000000.png', 'um_000001.png', 'umm_000000.png',
                                                   'uu_000000.png']),
                             ('training/gt_image_2', ['um_road_000000.png', 'um_road_000001.png',
                                                      'umm_road_000000.png', 'uu_road_000000.png']),
                             ('testing/image_2', ['um_000000.png', 'umm_000000.png'])]:
        assert sorted(os.listdir(os.path.join(a, folder))) == expected
        for name in expected:
            with open(os.path.join(a, folder, name), 'rb') as fa, open(os.path.join(b, folder, name), 'rb') as fb:
                assert fa.read() == fb.read()
    classes = kitti.decode_label(iio.imread(os.path.join(a, 'training/gt_image_2/um_road_000000.png')))
    assert (classes == metrics.ROAD).any() and (classes == metrics.NON_ROAD).any()


def test_a_failed_scene_write_stops_the_generation_and_leaves_nothing(tmp_path, monkeypatch):
    writes, real_imwrite = [], iio.imwrite

    def imwrite(path, array):  # the second scene's label finds the disk full, in a writer thread
        writes.append(path)
        if path.endswith('um_road_000001.png'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_imwrite(path, array)

    monkeypatch.setattr(synthetic.iio, 'imwrite', imwrite)
    with pytest.raises(OSError, match='No space left'):
        synthetic.make_synthetic_kitti(str(tmp_path / 'road'), 20, 2, sizes=SMALL_SIZES, progress=False)
    assert 4 <= len(writes) < 42 and os.listdir(tmp_path) == []  # stopped early; no set, no staging folder


def test_dataset_summary_counts_converts_and_ignores(small_dataset, tmp_path):
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    image = iio.imread(dataset / 'training/image_2/um_000000.png')
    iio.imwrite(dataset / 'training/image_2/um_000000.png', np.dstack([image, np.full(image.shape[:2], 200,
                                                                                      np.uint8)]))
    iio.imwrite(dataset / 'testing/image_2/um_000000.png', image[..., 0])  # grayscale
    shutil.copy(dataset / 'training/gt_image_2/um_road_000000.png', dataset / 'training/gt_image_2/um_lane_000000.png')
    (dataset / 'training/image_2/.DS_Store').write_bytes(b'\0')
    shutil.copy(dataset / 'training/gt_image_2/um_road_000000.png', dataset / 'training/gt_image_2/um_road_000099.png')
    summary = kitti.summary(kitti.open_layout(str(dataset)), 'user')
    lines = summary.splitlines()
    assert lines[0] == f'dataset {dataset} (user)'
    assert lines[2].split() == ['training', 'images', '4', '4', '4', '12']
    assert lines[3].split() == ['road', 'labels', '5', '4', '4', '13']
    assert lines[4].split() == ['test', 'images', '2', '1', '1', '4']
    assert 'note: 1 image(s) in PIL mode L are converted to RGB' in lines
    assert 'note: 1 image(s) in PIL mode RGBA are converted to RGB (alpha dropped)' in lines
    assert 'ignored: 1 lane label(s) (*_lane_*: the ego-lane, not the road)' in lines
    assert f'ignored: 1 file(s) not named like KITTI\'s, e.g. {dataset}/training/image_2/.DS_Store' in lines
    assert f'ignored: 1 road label(s) without their image, e.g. {dataset}/training/gt_image_2/um_road_000099.png' \
        in lines
    rgb, _ = kitti.load_pair(str(dataset / 'training/image_2/um_000000.png'),
                              str(dataset / 'training/gt_image_2/um_road_000000.png'))
    np.testing.assert_array_equal(rgb, image)


def write_label(path, edit):
    gt = iio.imread(path)
    iio.imwrite(path, edit(gt))


def paint(gt, colour, rows=3):
    gt = gt.copy()
    gt[:rows, :5] = colour
    return gt


BROKEN_DATASETS = {
    # name: (how to break a copy of the small dataset, the file the message names, what it says)
    'missing test folder': (lambda d: shutil.rmtree(d / 'testing/image_2'), 'testing/image_2', 'does not exist'),
    'empty training set': (lambda d: [p.unlink() for p in (d / 'training/image_2').iterdir()],
                           'training/image_2', 'holds no images'),
    'only a lane label': (lambda d: os.replace(d / 'training/gt_image_2/um_road_000001.png',
                                               d / 'training/gt_image_2/um_lane_000001.png'),
                          'training/image_2/um_000001.png', 'lane labels mark the ego-lane, not the road'),
    'label of the wrong size': (lambda d: write_label(d / 'training/gt_image_2/uu_road_000002.png',
                                                      lambda gt: gt[:, :-10]),
                                'training/gt_image_2/uu_road_000002.png', 'but its image is'),
    'foreign label colours': (lambda d: write_label(d / 'training/gt_image_2/umm_road_000003.png',
                                                    lambda gt: paint(gt, (0, 255, 0))),
                              'training/gt_image_2/umm_road_000003.png', '(0, 255, 0): 15 px'),
    'RGBA label': (lambda d: write_label(d / 'training/gt_image_2/um_road_000002.png',
                                         lambda gt: np.dstack([gt, np.full(gt.shape[:2], 255, np.uint8)])),
                   'training/gt_image_2/um_road_000002.png', 'labels must be RGB'),
    'truncated image': (lambda d: (d / 'training/image_2/um_000003.png').write_bytes(
                            (d / 'training/image_2/um_000003.png').read_bytes()[:3000]),
                        'training/image_2/um_000003.png', 'cannot be read as an image'),
    'float image': (lambda d: Image.fromarray(np.full((64, 224), 0.5, np.float32)).save(
                        d / 'training/image_2/umm_000002.png', format='TIFF'),  # a .png in name only
                    'training/image_2/umm_000002.png', 'neither 8-bit nor 16-bit grey'),
    'not an image': (lambda d: (d / 'training/image_2/uu_000001.png').write_text('<html>'),
                     'training/image_2/uu_000001.png', 'cannot be read as an image'),
}


@pytest.mark.parametrize('case', BROKEN_DATASETS)
def test_a_broken_dataset_is_a_clear_error_and_stays_untouched(small_dataset, tmp_path, capsys, case):
    breakage, named, says = BROKEN_DATASETS[case]
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    breakage(dataset)
    before = snapshot(dataset)
    code = main.main(['--dataset', str(dataset), '--vgg-init', 'random', '--runs-dir', str(tmp_path / 'runs'),
                      '--image-shape', '64', '224', '--val-fraction', '0.25'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err
    assert re.search(f'error: .*{re.escape(str(dataset / named))}.*{re.escape(says)}', err), err
    assert snapshot(dataset) == before and not (tmp_path / 'runs').exists()


def test_a_dataset_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / 'data_road.zip').write_bytes(make_zip({'data_road/x': b''}))
    result = run_main('--dataset', str(tmp_path / 'data_road.zip'), '--runs-dir', str(tmp_path / 'runs'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'data_road.zip is a file: it must be a dataset folder (unzip it first)' in result.stderr
    assert os.listdir(tmp_path) == ['data_road.zip']
