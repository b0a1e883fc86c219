"""The project's checks: `python project_tests.py` runs them all (pytest underneath) and ends with a line
`N passed, M failed`. No network, GPU, KITTI or real VGG16: tests generate thin SavedModels with the VGG tensor
names and small KITTI-layout folders of synthetic scenes. Each test runs in a graph of its own.
"""
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import zipfile
from unittest import mock

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

import helper
import inference
import main
import metrics
import synthetic
import vgg

HERE = os.path.dirname(os.path.abspath(__file__))
KITTI_DIR = os.path.join(HERE, 'data', 'data_road')
KITTI_SAMPLES = os.path.join(HERE, '..', 'shared', 'kitti_samples')
THIN = (4, 8, 16, 32, 32, 64)  # VGG16 channels cut down so that tests run in seconds
SMALL_SIZES = ((70, 230), (64, 224), (72, 240))  # mixed sizes, like KITTI's, but small


@pytest.fixture(autouse=True)
def graph():
    with tf.Graph().as_default() as g:
        yield g


@pytest.fixture(autouse=True)
def empty_keras_cache(tmp_path_factory, monkeypatch):
    """Keras' cache may hold the real 550 MB ImageNet weights: tests must never find (and convert) them."""
    monkeypatch.setenv('KERAS_HOME', str(tmp_path_factory.mktemp('keras_home')))


@pytest.fixture(scope='session')
def thin_vgg(tmp_path_factory):
    return vgg.save_vgg16(str(tmp_path_factory.mktemp('weights') / 'vgg'), channels=THIN)


@pytest.fixture(scope='session')
def small_dataset(tmp_path_factory):
    return synthetic.make_synthetic_kitti(str(tmp_path_factory.mktemp('data') / 'road'), 12, 4, seed=1,
                                          sizes=SMALL_SIZES, progress=False)


def init_new_variables(sess, restored=()):
    sess.run(tf.variables_initializer([v for v in tf.global_variables() if v.name not in restored]))


def thin_fcn(sess, vgg_path):
    """Load the thin encoder, add FCN-8s and the training ops; return the tensors the tests need."""
    image_input, keep_prob, layer3, layer4, layer7 = main.load_vgg(sess, vgg_path)
    restored = {v.name for v in tf.global_variables()}
    correct_label = tf.placeholder(tf.float32, [None, None, None, 2])
    learning_rate = tf.placeholder(tf.float32, [])
    last = main.layers(layer3, layer4, layer7, 2)
    logits, train_op, loss = main.optimize(last, correct_label, learning_rate, 2)
    init_new_variables(sess, restored)
    return dict(image_input=image_input, keep_prob=keep_prob, correct_label=correct_label,
                learning_rate=learning_rate, last=last, logits=logits, train_op=train_op, loss=loss)


# ------------------------------------------------------------------------- the classic Udacity checks

def test_load_vgg_calls_the_loader_and_returns_the_graph_tensors():
    def fake_load(sess, tags, path):
        for name in main.VGG_TENSOR_NAMES:
            tf.placeholder(tf.float32, name=name.split(':')[0])

    with tf.Session() as sess, mock.patch.object(main.tf.saved_model.loader, 'load',
                                                 side_effect=fake_load) as load:
        tensors = main.load_vgg(sess, 'some/vgg/path')
    load.assert_called_once_with(sess, ['vgg16'], 'some/vgg/path')
    assert [t.name for t in tensors] == list(main.VGG_TENSOR_NAMES)
    assert all(t.graph is tf.get_default_graph() for t in tensors)


def test_load_vgg_loads_a_saved_model(thin_vgg):
    with tf.Session() as sess:
        image_input, keep_prob, layer3, layer4, layer7 = main.load_vgg(sess, thin_vgg)
        out = sess.run([layer3, layer4, layer7], {image_input: np.zeros((1, 64, 96, 3)), keep_prob: 1.0})
    assert [o.shape for o in out] == [(1, 8, 12, THIN[2]), (1, 4, 6, THIN[3]), (1, 2, 3, THIN[5])]


def test_layers_gives_rank_4_with_num_classes_last():
    layer3 = tf.placeholder(tf.float32, [None, None, None, 256])
    layer4 = tf.placeholder(tf.float32, [None, None, None, 512])
    layer7 = tf.placeholder(tf.float32, [None, None, None, 4096])
    out = main.layers(layer3, layer4, layer7, 2)
    assert out.shape.rank == 4 and out.shape[-1] == 2


@pytest.mark.parametrize('height, width', [(160, 576), (96, 128)])
def test_layers_output_follows_the_input_size(thin_vgg, height, width):
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        out = sess.run(net['last'], {net['image_input']: np.zeros((2, height, width, 3))})
    assert out.shape == (2, height, width, 2)


def test_optimize_reshapes_logits_and_a_step_changes_the_weights():
    image = tf.placeholder(tf.float32, [None, 4, 6, 3])
    weights = tf.get_variable('w', [1, 1, 3, 2])
    last = tf.nn.conv2d(image, weights, 1, 'SAME')
    correct_label = tf.placeholder(tf.float32, [None, 4, 6, 2])
    logits, train_op, loss = main.optimize(last, correct_label, 0.1, 2)
    assert logits.shape.as_list() == [None, 2]
    rng = np.random.RandomState(0)
    labels = np.eye(2)[rng.randint(0, 2, (3, 4, 6))]
    feed = {image: rng.rand(3, 4, 6, 3), correct_label: labels}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(logits, feed).shape == (3 * 4 * 6, 2)
        before = sess.run(weights)
        sess.run(train_op, feed)
        assert not np.allclose(before, sess.run(weights))


def test_train_nn_runs_on_a_fake_batch_generator(capsys):
    def get_batches_fn(batch_size):
        for _ in range(3):
            yield np.ones((batch_size, 2, 3, 3)), np.ones((batch_size, 2, 3, 2))

    input_image = tf.placeholder(tf.float32, name='input_image')
    correct_label = tf.placeholder(tf.float32, name='correct_label')
    keep_prob = tf.placeholder(tf.float32, name='keep_prob')
    learning_rate = tf.placeholder(tf.float32, name='learning_rate')
    loss = tf.reduce_sum(input_image) * 0 + tf.reduce_mean(correct_label) + keep_prob + learning_rate
    with tf.Session() as sess:
        history = main.train_nn(sess=sess, epochs=2, batch_size=2, get_batches_fn=get_batches_fn,
                                train_op=tf.no_op(), cross_entropy_loss=loss, input_image=input_image,
                                correct_label=correct_label, keep_prob=keep_prob, learning_rate=learning_rate)
    assert [h['epoch'] for h in history] == [1, 2]
    fed = [main.learning_rate_at(step, None, 1e-4) for step in (1, 2, 3)]  # no decay: length unknown
    assert history[0]['loss'] == pytest.approx(1 + 0.5 + np.mean(fed))
    assert 'epoch 2 loss' in capsys.readouterr().out


def test_patience_stops_training_when_max_f_stops_improving(capsys):
    scores = iter([float('nan'), 0.5, 0.6, 0.55, 0.58, 0.9, 0.95])  # nan never counts as the best
    loss = tf.constant(1.0)
    with tf.Session() as sess:
        history = main.train_nn(sess, 7, 1, lambda batch_size: iter([(None, None)]), tf.no_op(), loss,
                                tf.placeholder(tf.float32), tf.placeholder(tf.float32), tf.placeholder(tf.float32),
                                None, validate_fn=lambda: {'val_max_f': next(scores)}, patience=2)
    assert [h['epoch'] for h in history] == [1, 2, 3, 4, 5] and history[-1]['early_stop']
    assert 'has not improved for 2 epoch(s) since epoch 3' in capsys.readouterr().out


def test_learning_rate_warms_up_then_decays_to_zero():
    lr = [main.learning_rate_at(step, 200, 1.0, warmup_steps=50) for step in range(1, 201)]
    assert lr[0] == pytest.approx(1 / 50) and lr[24] == pytest.approx(0.5 * (1 - 24 / 200) ** main.POLY_POWER)
    assert max(lr) == lr[49] and all(a > b for a, b in zip(lr[49:], lr[50:]))
    assert 0 < lr[-1] < 0.01


@pytest.mark.skipif(not os.path.isdir(KITTI_DIR), reason='KITTI Road is not in data/data_road')
def test_kitti_dataset_counts():
    count = lambda folder, pattern='': len([f for f in os.listdir(os.path.join(KITTI_DIR, folder)) if pattern in f])
    assert count('training/image_2') == 289
    assert count('training/gt_image_2', '_road_') == 289
    assert count('testing/image_2') == 290


# ------------------------------------------------------------------------------------ network details

def test_bilinear_kernel_matches_fcn_upsample_filt():
    kernel = main.bilinear_kernel(4, 2)
    profile = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel[:, :, 0, 0], np.outer(profile, profile))
    np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer(profile, profile))
    assert not kernel[:, :, 0, 1].any() and not kernel[:, :, 1, 0].any()


def test_upscore_starts_as_bilinear_upsampling():
    """A constant map stays constant away from the border, and a ramp stays a ramp."""
    x = tf.constant(np.tile(np.arange(8, dtype=np.float32)[None, None, :, None], (1, 8, 1, 2)))
    up = main.upscore(x, [16, 16], 4, 2, 'up')
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        out = sess.run(up)[0, 4:12, 2:14, 0]
    np.testing.assert_allclose(np.diff(out, axis=1), 0.5, atol=1e-5)
    np.testing.assert_allclose(np.diff(out, axis=0), 0.0, atol=1e-5)


def test_l2_weight_decay_is_in_the_training_objective():
    layer3, layer4, layer7 = (tf.zeros([1, 4, 4, 8]), tf.zeros([1, 2, 2, 8]), tf.zeros([1, 1, 1, 8]))
    main.layers(layer3, layer4, layer7, 2)
    decay = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)
    assert len(decay) == 6  # score_fr, score_pool4, score_pool3, upscore2, upscore_pool4, upscore8
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        w = sess.run([v for v in tf.global_variables() if v.op.name == 'upscore2/weights'][0])
        upscore2_decay = [d for d in decay if d.name.startswith('upscore2/')]
        assert sess.run(upscore2_decay[0]) == pytest.approx(main.L2_SCALE * np.sum(w ** 2) / 2, rel=1e-5)


def test_invalid_pixels_do_not_change_the_loss():
    logits_pl = tf.placeholder(tf.float32, [1, 2, 2, 2])
    label_pl = tf.placeholder(tf.float32, [1, 2, 2, 2])
    bias = tf.get_variable('bias', [2], initializer=tf.zeros_initializer())  # optimize needs a variable
    _, _, loss = main.optimize(logits_pl + bias, label_pl, 0.1, 2)
    labels = np.array([[[[0, 1], [1, 0]], [[0, 0], [0, 0]]]], np.float32)  # bottom row invalid
    logits = np.array([[[[0, 2], [1, 0]], [[5, -5], [-3, 9]]]], np.float32)
    other = logits.copy()
    other[0, 1] = [[-7, 7], [4, 4]]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        a = sess.run(loss, {logits_pl: logits, label_pl: labels})
        b = sess.run(loss, {logits_pl: other, label_pl: labels})
    expected = (np.log1p(np.exp(-2)) + np.log1p(np.exp(-1))) / 2  # mean over the two valid pixels only
    assert a == pytest.approx(expected, rel=1e-5) and b == pytest.approx(a)


def test_loss_falls_over_a_few_steps(thin_vgg, small_dataset):
    get_batches_fn = helper.gen_batch_function(os.path.join(small_dataset, 'training'), (64, 224))
    images, labels = next(get_batches_fn(4))
    with tf.Session() as sess:
        tf.set_random_seed(0)
        net = thin_fcn(sess, thin_vgg)
        feed = {net['image_input']: images, net['correct_label']: labels, net['learning_rate']: 1e-3}
        losses = [sess.run([net['train_op'], net['loss']], feed)[1] for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------------------------------- data handling

def test_decode_label_of_a_hand_made_patch():
    gt = np.array([[[255, 0, 255], [255, 0, 0]], [[0, 0, 0], [255, 0, 255]]], np.uint8)
    classes = helper.decode_label(gt)
    np.testing.assert_array_equal(classes, [[helper.ROAD, helper.NON_ROAD], [helper.IGNORE, helper.ROAD]])
    np.testing.assert_array_equal(helper.one_hot(classes), [[[0, 1], [1, 0]], [[0, 0], [0, 1]]])


def test_decode_label_names_unknown_colours():
    gt = np.zeros((2, 2, 3), np.uint8)
    gt[0, 0] = (255, 0, 254)
    with pytest.raises(ValueError, match=r'\(255, 0, 254\): 1 px'):
        helper.decode_label(gt)


def test_nearest_resizing_keeps_only_the_three_colours():
    _, gt = synthetic.render_scene(np.random.default_rng(3), 375, 1242)
    for shape in [(160, 576), (64, 224), (400, 1300)]:
        small = helper.resize_nearest(gt, shape)
        assert small.shape == (*shape, 3)
        colours = {tuple(c) for c in np.unique(small.reshape(-1, 3), axis=0)}
        assert colours <= {helper.ROAD_COLOR, helper.NON_ROAD_COLOR, helper.INVALID_COLOR}
        assert helper.ROAD_COLOR in colours


def test_resize_image_takes_height_then_width():
    image = np.zeros((30, 100, 3), np.uint8)
    assert helper.resize_image(image, (64, 224)).shape == (64, 224, 3)


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
    pairs = helper.training_pairs(str(folder))
    assert all(os.path.basename(l) == helper.label_name(os.path.basename(i)) for i, l in pairs)
    images, labels = next(helper.gen_batch_function(str(folder), (64, 224))(100))
    assert images.shape == (12, 64, 224, 3) and labels.shape == (12, 64, 224, 2)
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 255
    assert set(np.unique(labels.sum(-1))) <= {0.0, 1.0}


def test_shuffled_batches_keep_each_image_with_its_own_label(tmp_path):
    """Each image shows its own ground truth in colour, so any mix-up between images and labels shows."""
    rng = np.random.default_rng(0)
    colours = np.array([helper.NON_ROAD_COLOR, helper.ROAD_COLOR, helper.INVALID_COLOR], np.uint8)
    for folder in ('training/image_2', 'training/gt_image_2'):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(7):
        gt = np.kron(colours[rng.integers(0, 3, (2, 7))], np.ones((32, 32, 1), np.uint8))  # [64, 224, 3]
        iio.imwrite(tmp_path / f'training/image_2/um_{i:06d}.png', gt)
        iio.imwrite(tmp_path / f'training/gt_image_2/um_road_{i:06d}.png', gt)
    get_batches_fn = helper.gen_batch_function(str(tmp_path / 'training'), (64, 224), seed=3)
    for _ in range(2):
        for images, labels in get_batches_fn(3):
            road = np.all(images == helper.ROAD_COLOR, axis=-1)
            non_road = np.all(images == helper.NON_ROAD_COLOR, axis=-1)
            np.testing.assert_array_equal(labels[..., 1], road)
            np.testing.assert_array_equal(labels[..., 0], non_road)


def test_augmentation_keeps_image_and_label_aligned():
    """Each class painted in its own colour: wherever a zoomed, flipped label is uniform around a pixel, the
    image there still shows that class's colour."""
    palette = {helper.NON_ROAD: helper.NON_ROAD_COLOR, helper.ROAD: helper.ROAD_COLOR,
               helper.IGNORE: helper.INVALID_COLOR}
    paint = lambda classes: np.select([classes[..., None] == c for c in palette], list(palette.values()))
    classes = np.kron(np.random.default_rng(0).integers(-1, 2, (4, 14)), np.ones((16, 16), int)).astype(np.int8)
    image = paint(classes).astype(np.uint8)
    zoomed = 0
    for trial in range(20):
        aug_image, aug_classes = helper.flip_scale_crop(image, classes, np.random.RandomState(trial))
        assert aug_image.shape == image.shape and aug_classes.shape == classes.shape
        assert set(np.unique(aug_classes)) <= set(palette)
        windows = np.lib.stride_tricks.sliding_window_view(aug_classes, (3, 3))
        uniform = (windows == windows[..., 1:2, 1:2]).all(axis=(-1, -2))
        np.testing.assert_allclose(aug_image[1:-1, 1:-1][uniform], paint(aug_classes)[1:-1, 1:-1][uniform], atol=1)
        zoomed += not np.array_equal(aug_classes, classes) and not np.array_equal(aug_classes, classes[:, ::-1])
    assert zoomed >= 15  # most trials zoom (scale 1 exactly is the only way out)


def test_photometric_jitter_is_seeded_and_stays_in_range():
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    a = helper.jitter_photometric(image, np.random.RandomState(4))
    b = helper.jitter_photometric(image, np.random.RandomState(4))
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


def test_prefetch_keeps_order_overlaps_work_and_passes_errors_on():
    made = []

    def slow(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f'bad item {i}')
            time.sleep(0.05)
            made.append(i)
            yield i
    assert list(helper.prefetch(slow(6))) == list(range(6))
    consumer = helper.prefetch(slow(6), depth=2)
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
        list(helper.prefetch(slow(5, fail_at=2)))


def test_an_image_without_ground_truth_is_a_clear_error(small_dataset, tmp_path):
    folder = tmp_path / 'training'
    (folder / 'gt_image_2').mkdir(parents=True)
    os.symlink(os.path.join(small_dataset, 'training', 'image_2'), folder / 'image_2')
    with pytest.raises(helper.UserError, match='um_000000.png needs .*um_road_000000.png'):
        helper.gen_batch_function(str(folder), (64, 224))


def test_a_truncated_png_is_a_clear_error(small_dataset, tmp_path):
    path = tmp_path / 'um_000000.png'
    with open(os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png'), 'rb') as f:
        path.write_bytes(f.read()[:200])
    with pytest.raises(helper.UserError, match='um_000000.png cannot be read as an image'):
        helper.read_rgb(str(path))


def test_shuffling_is_seeded_and_changes_per_epoch(small_dataset):
    training = os.path.join(small_dataset, 'training')
    first = helper.gen_batch_function(training, (32, 96), seed=5)
    second = helper.gen_batch_function(training, (32, 96), seed=5)
    epoch = lambda fn: np.concatenate([images[:, 0, 0, 0] for images, _ in fn(5)])
    a1, a2, b1 = epoch(first), epoch(first), epoch(second)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2)


def test_validation_split_is_seeded_stratified_and_disjoint():
    names = [f'{cat}_{i:06d}.png' for cat, n in (('um', 95), ('umm', 96), ('uu', 98)) for i in range(n)]
    train, val = helper.split_train_val(names, 0.1, seed=0)
    assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert [sum(helper.category(n) == c for n in val) for c in helper.CATEGORIES] == [10, 10, 10]
    assert helper.split_train_val(names, 0.1, seed=0) == (train, val)
    assert helper.split_train_val(names, 0.1, seed=1)[1] != val


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
    classes = helper.decode_label(iio.imread(os.path.join(a, 'training/gt_image_2/um_road_000000.png')))
    assert (classes == helper.ROAD).any() and (classes == helper.NON_ROAD).any()


# -------------------------------------------------------------------------------------------- metrics

def test_fast_hist_and_road_iou_on_a_hand_made_case():
    label = np.array([[1, 1, 0], [0, -1, 1]])
    pred = np.array([[1, 0, 1], [0, 1, 1]])
    hist = metrics.fast_hist(label, pred)
    np.testing.assert_array_equal(hist, [[1, 1], [1, 2]])  # the ignored pixel counts nowhere
    assert metrics.road_iou(hist) == pytest.approx(2 / 4)
    assert metrics.road_recall_and_false_positive_rate(hist) == pytest.approx((2 / 3, 1 / 2))


def level_hist(road_levels, non_road_levels):
    hist = np.zeros((2, metrics.LEVELS), np.int64)
    np.add.at(hist[metrics.ROAD], road_levels, 1)
    np.add.at(hist[metrics.NON_ROAD], non_road_levels, 1)
    return hist


def test_kitti_road_scores_of_a_hand_made_case():
    """Road pixels at confidence levels 200, 200, 100, 50; non-road at 150, 20, 20, 20 (of 255).

    Levels 21..50 predict all 4 road pixels and 1 non-road: PRE 0.8, REC 1, F 8/9, the best (levels 51..100:
    F 0.75; 151..200: F 2/3; <= 20: F 2/3). IoU there = 4 / (4 + 1) = 0.8. AP: the best precision at recall
    >= 0, 0.1, ..., 0.5 is 1 (levels 151..200), at 0.6 ... 1 it is 0.8: (6 + 5 x 0.8) / 11 = 10/11. At 0.5
    (level 128): TP 2, FP 1, FN 2: IoU 0.4, recall 0.5, FPR 0.25: Udacity's bar fails.
    """
    scores = metrics.kitti_road_scores(level_hist([200, 200, 100, 50], [150, 20, 20, 20]))
    assert scores == pytest.approx({'max_f': 8 / 9, 'threshold': 21 / 255, 'precision': 0.8, 'recall': 1.0,
                                    'fpr': 0.25, 'fnr': 0.0, 'ap': 10 / 11, 'iou': 0.8, 'iou_at_0.5': 0.4,
                                    'recall_at_0.5': 0.5, 'fpr_at_0.5': 0.25, 'udacity_pass': False})
    assert scores['iou'] == pytest.approx(scores['max_f'] / (2 - scores['max_f']))


def test_kitti_scores_ignore_the_invalid_area_and_pool_counts_across_images():
    classes_a = np.array([[1, 1, 0], [0, -1, -1]])
    levels_a = np.array([[250, 90, 10], [200, 255, 0]], np.uint8)
    classes_b = np.array([[1, 0], [-1, 1]])
    levels_b = np.array([[30, 40], [0, 220]], np.uint8)
    hist_a = metrics.fast_hist(classes_a, levels_a, 2, metrics.LEVELS)
    hist_b = metrics.fast_hist(classes_b, levels_b, 2, metrics.LEVELS)
    np.testing.assert_array_equal(hist_a + hist_b, level_hist([250, 90, 30, 220], [10, 200, 40]))
    changed = levels_a.copy()
    changed[1, 1:] = (3, 77)  # the invalid pixels' confidence counts nowhere
    np.testing.assert_array_equal(metrics.fast_hist(classes_a, changed, 2, metrics.LEVELS), hist_a)
    pooled = metrics.kitti_road_scores(hist_a + hist_b)
    # Pooled: road 250, 220, 90, 30 vs non-road 200, 40, 10. Levels 11..30 predict all road and 2 non-road
    # (PRE 2/3, REC 1, F 0.8); 41..90: PRE 3/4, REC 3/4, F 0.75; 201..220: PRE 1, REC 1/2, F 2/3.
    assert pooled['max_f'] == pytest.approx(0.8) and pooled['threshold'] == pytest.approx(11 / 255)
    assert pooled['fpr'] == pytest.approx(2 / 3) and pooled['fnr'] == 0


def test_confidence_maps_are_rounded_uint8_and_half_is_road():
    levels = metrics.confidence(np.array([0.0, 0.5, 0.499, 1.0, 1.2]))
    np.testing.assert_array_equal(levels, [0, 128, 127, 255, 255])
    assert levels.dtype == np.uint8 and metrics.LEVEL_AT_HALF == 128


# ------------------------------------------------------------------------------------ inference, outputs

def test_overlay_is_green_at_alpha_127_where_road():
    image = np.full((1, 2, 3), 100, np.uint8)
    out = helper.overlay(image, np.array([[0.9, 0.2]]))
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 0], np.round(100 * (128 / 255) + np.array([0, 255, 0]) * 127 / 255))


def test_gen_test_output_does_not_grow_the_graph(thin_vgg, small_dataset):
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        outputs = helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                         os.path.join(small_dataset, 'testing'), (64, 224))
        name, first = next(outputs)
        ops = len(sess.graph.get_operations())
        rest = list(outputs)
        again = list(helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                            os.path.join(small_dataset, 'testing'), (64, 224)))
        assert len(sess.graph.get_operations()) == ops
    assert len(rest) == 3 and len(again) == 4
    assert first.shape == iio.imread(os.path.join(small_dataset, 'testing', 'image_2', name)).shape


def test_new_run_dir_never_reuses_a_folder(tmp_path):
    dirs = {helper.new_run_dir(str(tmp_path)) for _ in range(3)}
    assert len(dirs) == 3


# ------------------------------------------------------------------------------------------ downloads

class FileServer:
    """A loopback HTTP server for download tests: serves `files` {path: bytes} with HTTP Range support, 404 for
    anything else. `cut` {path: n}: the first response for path stops after n bytes of its body (the headers
    promise all of it), as a dropped connection does. `ranges=False`: a server that ignores Range headers."""

    def __init__(self, files, cut=None, ranges=True):
        files, cut, requests = dict(files), dict(cut or {}), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append((self.path, self.headers.get('Range')))
                body = files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                start = int(self.headers['Range'][len('bytes='):-1]) if ranges and self.headers['Range'] else 0
                if start >= len(body) > 0:
                    self.send_response(416)
                    self.send_header('Content-Range', f'bytes */{len(body)}')
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
                self.send_header('Content-Length', str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:start + cut.pop(self.path, len(body))])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.requests = requests
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make_zip(members):
    """Zip bytes of members {name: bytes}; a name ending in '@link' becomes a symbolic link to its bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in members.items():
            if name.endswith('@link'):
                info = zipfile.ZipInfo(name[:-len('@link')])
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, data)
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


def snapshot(folder):
    """{relative path: bytes} of every file under folder: to show that nothing of the user's changed."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def vgg_zip(saved_model_dir):
    """vgg.zip as Udacity's: the SavedModel's files under vgg/."""
    return make_zip({os.path.join('vgg', path): data for path, data in snapshot(saved_model_dir).items()})


def zipfile_members(body):
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_vgg_download_from_a_loopback_server(thin_vgg, tmp_path):
    data_dir = str(tmp_path / 'data')
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(data_dir, url=server.url + '/vgg.zip')
        assert helper.vgg_is_complete(vgg_dir)
        with tf.Session() as sess:
            main.load_vgg(sess, vgg_dir)
        before = snapshot(data_dir)
        assert helper.maybe_download_pretrained_vgg(data_dir, url=server.url + '/vgg.zip') == vgg_dir
        assert len(server.requests) == 1 and snapshot(data_dir) == before  # the second run does nothing
    assert sorted(os.listdir(data_dir)) == ['vgg', 'vgg.zip']  # no .part, no temporary folder left


def test_a_download_cut_off_midway_resumes_where_it_stopped(thin_vgg, tmp_path):
    body = vgg_zip(thin_vgg)
    with FileServer({'/vgg.zip': body}, cut={'/vgg.zip': len(body) // 2}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert server.requests == [('/vgg.zip', None), ('/vgg.zip', f'bytes={len(body) // 2}-')]
    assert (tmp_path / 'vgg.zip').read_bytes() == body and helper.vgg_is_complete(vgg_dir)


def test_a_server_ignoring_range_restarts_the_download_cleanly(tmp_path):
    body = bytes(range(256)) * 400
    (tmp_path / 'file.bin.part').write_bytes(b'stale bytes of an older attempt')
    with FileServer({'/file.bin': body}, ranges=False) as server:
        helper.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert (tmp_path / 'file.bin').read_bytes() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_run_that_fails_midway_leaves_its_part_file_for_the_next_run_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(helper, 'DOWNLOAD_ATTEMPTS', 1)
    body = bytes(range(250)) * 4
    with FileServer({'/file.bin': body}, cut={'/file.bin': 300}) as server:
        with pytest.raises(helper.UserError, match='300 bytes kept in .*file.bin.part, the next run resumes'):
            helper.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
        assert (tmp_path / 'file.bin.part').read_bytes() == body[:300]
        path = helper.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert server.requests[-1] == ('/file.bin', 'bytes=300-')
    assert open(path, 'rb').read() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_complete_part_file_is_not_fetched_again(tmp_path):
    body = bytes(range(200))
    (tmp_path / 'file.bin.part').write_bytes(body)  # a run stopped between the last byte and the rename
    with FileServer({'/file.bin': body}) as server:
        helper.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert (tmp_path / 'file.bin').read_bytes() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_checksum_mismatch_is_refused_and_removed(tmp_path):
    with FileServer({'/weights.h5': b'not the weights'}) as server:
        with pytest.raises(helper.UserError, match='expected 0123'):
            helper.download(server.url + '/weights.h5', str(tmp_path / 'weights.h5'), ('md5', '0123'))
    assert os.listdir(tmp_path) == []


def test_a_corrupt_download_is_removed_and_nothing_is_extracted(thin_vgg, tmp_path):
    body = bytearray(vgg_zip(thin_vgg))
    middle = body.index(b'saved_model.pb') + 200  # inside saved_model.pb's compressed data: a CRC error
    body[middle:middle + 16] = bytes(16)
    with FileServer({'/vgg.zip': bytes(body)}) as server:
        with pytest.raises(helper.UserError, match=r'(?s)corrupt.*removed.*unzip it in'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []


def test_a_corrupt_compressed_download_is_an_error_not_a_crash(thin_vgg, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for path, data in snapshot(thin_vgg).items():
            archive.writestr(os.path.join('vgg', path), data)
    body = bytearray(buffer.getvalue())
    start = body.index(b'vgg/variables/variables.data') + 100  # inside that member's deflate stream
    body[start:start + 30] = bytes(range(30))
    with FileServer({'/vgg.zip': bytes(body)}) as server:
        with pytest.raises(helper.UserError, match=r'(?s)vgg.zip is corrupt.*removed'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []


def test_an_empty_target_folder_is_filled(thin_vgg, tmp_path):
    (tmp_path / 'vgg').mkdir()
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert helper.vgg_is_complete(vgg_dir)


def test_a_corrupt_zip_of_the_user_is_reported_not_deleted(tmp_path):
    (tmp_path / 'vgg.zip').write_bytes(b'PK\x03\x04 this is not a zip')
    with pytest.raises(helper.UserError, match=r'not a valid zip.*delete .*vgg.zip to download it again'):
        helper.maybe_download_pretrained_vgg(str(tmp_path), url='http://127.0.0.1:9/vgg.zip')
    assert os.listdir(tmp_path) == ['vgg.zip']


@pytest.mark.parametrize('member, reason', [('vgg/../../escaped.txt', 'a path with ".."'),
                                            ('vgg\\..\\..\\escaped.txt', 'a path with ".."'),
                                            ('/tmp/escaped.txt', 'an absolute path'),
                                            ('C:escaped.txt', 'an absolute path'),
                                            ('vgg/escaped@link', 'a symbolic link')])
def test_archive_members_outside_the_target_are_refused(thin_vgg, tmp_path, member, reason):
    data_dir = tmp_path / 'a' / 'data'
    members = zipfile_members(vgg_zip(thin_vgg))
    members[member] = b'/etc/passwd' if member.endswith('@link') else b'outside'
    with FileServer({'/vgg.zip': make_zip(members)}) as server:
        with pytest.raises(helper.UserError) as error:
            helper.maybe_download_pretrained_vgg(str(data_dir), url=server.url + '/vgg.zip')
    assert f"{member.replace('@link', '')!r}, {reason}: refusing to extract it" in str(error.value)
    assert [os.path.relpath(os.path.join(r, f), tmp_path) for r, _, fs in os.walk(tmp_path) for f in fs] == []


def test_an_archive_without_the_expected_files_is_refused(tmp_path):
    with FileServer({'/data_road.zip': make_zip({'data_road/training/image_2/um_000000.png': b'x'})}) as server:
        with pytest.raises(helper.UserError, match='does not hold data_road/training/gt_image_2/'):
            helper.maybe_download_kitti(str(tmp_path), url=server.url + '/data_road.zip')
    assert os.listdir(tmp_path) == []


def test_a_kitti_download_lands_in_data_road(small_dataset, tmp_path):
    members = {os.path.join('data_road', path): data for path, data in snapshot(small_dataset).items()}
    with FileServer({'/data_road.zip': make_zip(members)}) as server:
        road_dir = helper.maybe_download_kitti(str(tmp_path), url=server.url + '/data_road.zip')
    assert snapshot(road_dir) == snapshot(small_dataset)


def test_an_incomplete_folder_of_the_user_is_never_written_into(thin_vgg, tmp_path):
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'notes.txt').write_text('mine')
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        with pytest.raises(helper.UserError, match='exists but does not hold a VGG16 SavedModel.*untouched'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
        assert server.requests == []
    assert snapshot(tmp_path) == {'vgg/notes.txt': b'mine'}


def test_a_failed_download_says_what_to_do_and_leaves_no_file(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(helper.UserError, match=r'(?s)/vgg.zip: HTTP 404.*unzip it in'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------- Keras ImageNet weights (h5)

def keras_layers(notop=False):
    """Keras VGG16's layer names in order, weight-less layers included."""
    names = ['input_1']
    for block, depth in vgg.BLOCKS:
        names += [f'block{block}_conv{i}' for i in range(1, depth + 1)] + [f'block{block}_pool']
    return names if notop else names + ['flatten', 'fc1', 'fc2', 'predictions']


def write_keras_h5(path, channels, seed, notop=False):
    """Write random weights in the layout of Keras' `vgg16_weights_tf_dim_ordering_tf_kernels.h5` (or of its
    `_notop` variant) with the Keras-1 weight names; return {keras layer: (kernel, bias)} in Keras' shapes."""
    rng = np.random.default_rng(seed)
    in_channels, weights = 3, {}
    for (block, depth), out_channels in zip(vgg.BLOCKS, channels):
        for i in range(1, depth + 1):
            weights[f'block{block}_conv{i}'] = ((3, 3, in_channels, out_channels), 9 * in_channels)
            in_channels = out_channels
    if not notop:
        weights['fc1'] = ((7 * 7 * channels[4], channels[5]), 7 * 7 * channels[4])
        weights['fc2'] = ((channels[5], channels[5]), channels[5])
        weights['predictions'] = ((channels[5], 1000), channels[5])
    for layer, (shape, fan_in) in weights.items():  # He-scaled so that activations keep their size
        kernel = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
        weights[layer] = kernel, rng.uniform(-0.5, 0.5, shape[-1:]).astype(np.float32)
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [name.encode() for name in keras_layers(notop)]
        for layer in keras_layers(notop):
            group = f.create_group(layer)
            names = [f'{layer}_W_1:0', f'{layer}_b_1:0'] if layer in weights else []
            group.attrs['weight_names'] = np.array([name.encode() for name in names], dtype='S')
            for name, value in zip(names, weights.get(layer, ())):
                group.create_dataset(name, data=value)
    return weights


def conv_relu(x, kernel, bias):
    """SAME convolution, stride 1, then ReLU: [N, H, W, C] * [k, k, C, D] -> [N, H, W, D] (k odd)."""
    k, (height, width) = kernel.shape[0], x.shape[1:3]
    padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = sum(np.tensordot(padded[:, i:i + height, j:j + width], kernel[i, j], axes=1)
              for i in range(k) for j in range(k))
    return np.maximum(out + bias, 0)


def max_pool(x):
    """2x2 max pooling, stride 2: [N, H, W, C] -> [N, H/2, W/2, C] (H, W even)."""
    n, height, width, c = x.shape
    return x.reshape(n, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))


def numpy_vgg16(images, weights):
    """Keras' VGG16 weights run as the Udacity encoder in float64: raw RGB [N, H, W, 3] -> (layer3, layer4,
    layer7)."""
    x = images[..., ::-1] - np.array(vgg.MEAN_BGR)
    pools = []
    for block, depth in vgg.BLOCKS:
        for i in range(1, depth + 1):
            x = conv_relu(x, *weights[f'block{block}_conv{i}'])
        x = max_pool(x)
        pools.append(x)
    fc1, fc2 = weights['fc1'][0], weights['fc2'][0]
    x = conv_relu(x, fc1.reshape(7, 7, -1, fc1.shape[1]), weights['fc1'][1])
    x = conv_relu(x, fc2.reshape(1, 1, *fc2.shape), weights['fc2'][1])
    return pools[2], pools[3], x


def test_keras_weights_convert_to_the_udacity_model(tmp_path):
    weights = write_keras_h5(tmp_path / 'vgg16.h5', THIN, seed=3)
    export_dir = vgg.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'vgg'))
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        image_input, keep_prob, layer3, layer4, layer7 = main.load_vgg(sess, export_dir)
        outputs = sess.run([layer3, layer4, layer7], {image_input: images, keep_prob: 1.0})
    for output, expected in zip(outputs, numpy_vgg16(images.astype(np.float64), weights)):
        assert output.shape == expected.shape and expected.max() > 0
        np.testing.assert_allclose(output, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert vgg.read_source(export_dir) == {'source': 'imagenet', 'converted_from': str(tmp_path / 'vgg16.h5')}
    # The weights are variables, not constants: saved_model.pb stays small.
    assert os.path.getsize(os.path.join(export_dir, 'saved_model.pb')) < 100_000
    assert not [name for name in os.listdir(tmp_path) if name.startswith('.vgg-convert-')]


def drop_layer(path):
    with h5py.File(path, 'a') as f:
        del f['block3_conv2']


def widen_fc1(path):
    with h5py.File(path, 'a') as f:
        kernel = f['fc1/fc1_W_1:0'][()]
        del f['fc1/fc1_W_1:0']
        f['fc1'].create_dataset('fc1_W_1:0', data=np.concatenate([kernel, kernel[:1]]))


@pytest.mark.parametrize('notop, spoil, message', [
    (True, None, 'this is the notop file without the fully connected layers; you need '
                 'vgg16_weights_tf_dim_ordering_tf_kernels.h5'),
    (False, drop_layer, 'block3_conv2 missing'),
    (False, widen_fc1, 'layer fc1 has kernel (1569, 64)'),
    (False, lambda path: path.write_text('<html>Not found</html>'), 'cannot read it as an HDF5 file'),
])
def test_unusable_keras_weights_are_reported(tmp_path, notop, spoil, message):
    h5_path = tmp_path / 'vgg16.h5'
    write_keras_h5(h5_path, THIN, seed=3, notop=notop)
    if spoil:
        spoil(h5_path)
    with pytest.raises(vgg.ConversionError) as error:
        vgg.convert_keras_h5(str(h5_path), str(tmp_path / 'vgg'))
    assert str(h5_path) in str(error.value) and message in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ['vgg16.h5']


def test_conversion_never_overwrites_and_never_leaves_half_a_model(tmp_path, monkeypatch):
    write_keras_h5(tmp_path / 'vgg16.h5', THIN, seed=3)
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'mine.txt').write_text('keep me')
    with pytest.raises(vgg.ConversionError, match='already exists'):
        vgg.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'vgg'))
    assert os.listdir(tmp_path / 'vgg') == ['mine.txt'] and (tmp_path / 'vgg' / 'mine.txt').read_text() == 'keep me'

    def crash(sess, export_dir, info):
        os.makedirs(os.path.join(export_dir, 'variables'))
        raise OSError('disk full')
    monkeypatch.setattr(vgg, '_save', crash)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(vgg.ConversionError, match='disk full'):
        vgg.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'empty'))
    assert sorted(os.listdir(tmp_path)) == ['empty', 'vgg', 'vgg16.h5'] and not os.listdir(tmp_path / 'empty')


def test_read_source_returns_the_saved_info(tmp_path):
    info = {'source': 'imagenet', 'converted_from': '/somewhere/vgg16.h5'}
    write_keras_h5(tmp_path / 'vgg16.h5', THIN, seed=3)
    assert vgg.read_source(vgg.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'a'), info)) == info
    assert vgg.read_source(vgg.save_vgg16(str(tmp_path / 'b'), THIN, info={'source': 'random'})) == {
        'source': 'random'}
    assert vgg.read_source(vgg.save_vgg16(str(tmp_path / 'c'), THIN)) is None
    (tmp_path / 'c' / 'assets.extra').mkdir()
    (tmp_path / 'c' / 'assets.extra' / 'source.json').write_text('{"source": ')
    assert vgg.read_source(str(tmp_path / 'c')) is None
    (tmp_path / 'c' / 'assets.extra' / 'source.json').write_text('{"converted_from": "x.h5"}')
    assert vgg.read_source(str(tmp_path / 'c')) is None


# ------------------------------------------------------------------------------------ the command line

def run_main(*args, cwd=HERE):
    return subprocess.run([sys.executable, os.path.join(HERE, 'main.py'), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_a_missing_dataset_is_an_error_without_traceback(tmp_path):
    result = run_main('--dataset', str(tmp_path / 'nowhere'), '--no-download', '--runs-dir', str(tmp_path))
    assert result.returncode == 2
    assert 'nowhere: no such folder' in result.stderr and 'Traceback' not in result.stderr
    assert os.listdir(tmp_path) == []


def test_an_image_shape_not_divisible_by_32_is_refused(tmp_path):
    result = run_main('--image-shape', '100', '300', '--runs-dir', str(tmp_path))
    assert result.returncode == 2 and 'multiples of 32' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('flags', [['--seed', '-1'], ['--val-fraction', '1'], ['--epochs', '0'],
                                   ['--keep-prob', '0']])
def test_out_of_range_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(flags)
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


def test_help_explains_every_flag():
    result = run_main('--help')
    assert result.returncode == 0
    for flag in ('--data-dir', '--dataset', '--vgg-dir', '--vgg-init', '--imagenet-weights', '--vgg-url',
                 '--kitti-url', '--runs-dir', '--epochs', '--batch-size', '--learning-rate', '--keep-prob',
                 '--image-shape', '--val-fraction', '--seed', '--no-download'):
        assert flag in result.stdout


def test_offline_default_falls_back_to_synthetic_scenes_and_a_random_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(main.RECIPES['synthetic'], 'num_train', 6)
    monkeypatch.setitem(main.RECIPES['synthetic'], 'num_test', 3)
    args = main.parse_args(['--data-dir', str(tmp_path / 'data'), '--no-download'])
    folder, source = main.resolve_dataset(args)
    assert source == 'synthetic' and folder == str(tmp_path / 'data' / main.SYNTHETIC_DIR)
    assert len(os.listdir(os.path.join(folder, 'training', 'gt_image_2'))) == 6
    assert main.resolve_weights(args) == (None, {'source': 'random'})
    err = capsys.readouterr().err
    assert 'KITTI Road is not available' in err and 'data_road.zip' in err
    assert "Udacity's pretrained VGG16 is not available" in err and 'vgg.zip' in err
    assert "Keras' ImageNet VGG16 is not available" in err and '--imagenet-weights PATH' in err
    assert main.resolve_dataset(args) == (folder, 'synthetic')  # made once, then reused


def test_named_folders_never_fall_back(tmp_path, small_dataset):
    with pytest.raises(helper.UserError, match='no such folder'):
        main.resolve_dataset(main.parse_args(['--dataset', str(tmp_path / 'missing')]))
    with pytest.raises(helper.UserError, match='no VGG16 SavedModel there'):
        main.resolve_weights(main.parse_args(['--vgg-dir', str(tmp_path / 'missing'), '--no-download']))
    assert main.resolve_dataset(main.parse_args(['--dataset', small_dataset])) == (small_dataset, 'user')


def test_incomplete_default_folders_are_errors_not_fallbacks(tmp_path):
    (tmp_path / 'data_road' / 'training' / 'image_2').mkdir(parents=True)
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'saved_model.pb').write_bytes(b'')
    before = snapshot(tmp_path)
    args = main.parse_args(['--data-dir', str(tmp_path), '--no-download'])
    with pytest.raises(helper.UserError, match='data_road exists but does not hold KITTI Road.*untouched'):
        main.resolve_dataset(args)
    with pytest.raises(helper.UserError, match='vgg exists but does not hold a VGG16 SavedModel.*untouched'):
        main.resolve_weights(args)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ['data_road', 'vgg']


@pytest.fixture(scope='session')
def thin_run(thin_vgg, small_dataset, tmp_path_factory):
    """A finished run folder: 2 epochs of the thin model at 64x224 on the small dataset."""
    runs = tmp_path_factory.mktemp('runs')
    with tf.Graph().as_default():
        run_dir = main.run(['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--runs-dir', str(runs),
                            '--epochs', '2', '--batch-size', '4', '--image-shape', '64', '224',
                            '--val-fraction', '0.25', '--no-download'])
    assert os.path.dirname(run_dir) == str(runs)
    return run_dir


def test_end_to_end_run_writes_its_run_folder(thin_run, thin_vgg, small_dataset):
    run_dir = thin_run
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    for name in os.listdir(test_dir):
        assert iio.imread(os.path.join(run_dir, name)).shape == iio.imread(os.path.join(test_dir, name)).shape
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['data']['source'] == 'user' and config['weights']['source'] == 'udacity'
    assert config['data']['val_images'] == 3 and config['settings']['epochs'] == 2
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert [h['epoch'] for h in history] == [1, 2]
    assert all(0 <= h['val_iou_at_0.5'] <= 1 and 0 <= h['val_max_f'] <= 1 and np.isfinite(h['val_loss'])
               and np.isfinite(h['loss']) for h in history)
    assert set(history[-1]['val_kitti']) == {'um', 'umm', 'uu', 'all'}
    assert np.sum(history[-1]['val_counts']['all']) == sum(np.sum(history[-1]['val_counts'][c]) for c in
                                                         ('um', 'umm', 'uu'))
    for plot in ('history.png', 'precision_recall.png'):
        assert iio.imread(os.path.join(run_dir, plot)).ndim == 3
    events = [os.path.join(run_dir, f) for f in os.listdir(run_dir) if f.startswith('events.out.tfevents')]
    tags = {value.tag for event in tf.train.summary_iterator(events[0]) for value in event.summary.value}
    assert {'train/loss', 'val/loss', 'val/max_f', 'val/iou_at_0.5'} <= tags
    overlays = [tag for tag in tags if tag.startswith('val/') and tag.endswith('.png')]
    assert sorted(helper.category(tag[len('val/'):]) for tag in overlays) == ['um', 'umm', 'uu']  # one each
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0  # the best epoch's weights, scored again
    evaluation = json.load(open(os.path.join(run_dir, 'eval.json')))
    best = max(history, key=lambda h: h['val_max_f'])
    for category, scores in best['val_kitti'].items():
        assert evaluation['kitti'][category] == pytest.approx(scores)
    assert evaluation['loss'] == pytest.approx(best['val_loss'])
    assert main.main(['evaluate', '--checkpoint', run_dir, '--dataset', small_dataset]) == 0
    # The exported model gives the probabilities of the best checkpoint in the training graph.
    image = helper.read_rgb(os.path.join(test_dir, os.listdir(test_dir)[0]))
    batch = helper.resize_image(image, (64, 224))[None].astype(np.float32)
    best = tf.train.latest_checkpoint(os.path.join(run_dir, main.BEST_CHECKPOINT))
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, thin_vgg, 0)
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        expected = sess.run(helper.road_probability(net['logits']), {net['input_image']: batch}).reshape(64, 224)
    with tf.Graph().as_default(), tf.Session() as sess:
        meta = tf.saved_model.loader.load(sess, ['serve'], os.path.join(run_dir, main.SERVING_DIR))
        signature = meta.signature_def['serving_default']
        served = sess.run(signature.outputs['road_probability'].name, {signature.inputs['image'].name: batch})
    assert served.shape == (1, 64, 224)
    np.testing.assert_allclose(served[0], expected, atol=1e-5)
    assert len(json.load(open(os.path.join(run_dir, 'eval.json')))['images']) == 12
    for name in os.listdir(test_dir):
        confidence = iio.imread(os.path.join(run_dir, 'kitti', helper.label_name(name)))
        assert confidence.dtype == np.uint8 and confidence.shape == iio.imread(os.path.join(test_dir, name)).shape[:2]


# -------------------------------------------------------------------------------- weights: --vgg-init

def test_vgg_init_auto_converts_local_imagenet_weights_once(tmp_path, capsys):
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    write_keras_h5(data_dir / vgg.KERAS_H5, THIN, seed=3)
    args = main.parse_args(['--data-dir', str(data_dir), '--no-download'])
    vgg_dir, info = main.resolve_weights(args)
    assert vgg_dir == str(data_dir / 'vgg')
    assert info == {'source': 'imagenet', 'converted_from': str(data_dir / vgg.KERAS_H5)}
    err = capsys.readouterr().err
    assert "Udacity's pretrained VGG16 is not available" in err and 'Using the ImageNet VGG16 weights of' in err
    with tf.Session() as sess:
        main.load_vgg(sess, vgg_dir)
    assert main.resolve_weights(args) == (vgg_dir, info)  # converted once, then loaded
    with pytest.raises(helper.UserError, match='holds the imagenet VGG16, not the udacity one'):
        main.resolve_weights(main.parse_args(['--data-dir', str(data_dir), '--vgg-init', 'udacity']))
    write_keras_h5(tmp_path / 'other.h5', THIN, seed=4)
    with pytest.raises(helper.UserError, match='already holds the VGG16 converted from .*vgg16.*other.h5'):
        main.resolve_weights(main.parse_args(['--data-dir', str(data_dir), '--imagenet-weights',
                                              str(tmp_path / 'other.h5')]))
    random_args = main.parse_args(['--data-dir', str(data_dir), '--vgg-init', 'random'])
    assert main.resolve_weights(random_args) == (None, {'source': 'random'})


def test_vgg_init_imagenet_finds_keras_cache_or_downloads_with_its_checksum(tmp_path, monkeypatch):
    weights = tmp_path / 'served.h5'
    write_keras_h5(weights, THIN, seed=3)
    body = weights.read_bytes()
    monkeypatch.setattr(helper, 'IMAGENET_MD5', hashlib.md5(body).hexdigest())
    with FileServer({'/vgg16.h5': body}) as server:
        monkeypatch.setattr(helper, 'IMAGENET_URL', server.url + '/vgg16.h5')
        args = main.parse_args(['--data-dir', str(tmp_path / 'data'), '--vgg-init', 'imagenet'])
        vgg_dir, info = main.resolve_weights(args)
    assert info['converted_from'] == str(tmp_path / 'data' / vgg.KERAS_H5) and helper.vgg_is_complete(vgg_dir)
    assert (tmp_path / 'data' / vgg.KERAS_H5).read_bytes() == body

    keras_models = tmp_path / 'keras' / 'models'
    keras_models.mkdir(parents=True)
    os.replace(weights, keras_models / vgg.KERAS_H5)
    monkeypatch.setenv('KERAS_HOME', str(tmp_path / 'keras'))
    args = main.parse_args(['--data-dir', str(tmp_path / 'other'), '--vgg-init', 'imagenet', '--no-download'])
    assert main.resolve_weights(args)[1]['converted_from'] == str(keras_models / vgg.KERAS_H5)


def test_named_weights_are_used_or_refused_never_replaced(thin_vgg, tmp_path, capsys):
    assert main.resolve_weights(main.parse_args(['--vgg-dir', thin_vgg])) == (thin_vgg, {'source': 'udacity'})
    with pytest.raises(helper.UserError, match='no such file'):
        main.resolve_weights(main.parse_args(['--imagenet-weights', str(tmp_path / 'missing.h5')]))
    with pytest.raises(SystemExit):
        main.parse_args(['--imagenet-weights', 'x.h5', '--vgg-init', 'udacity'])
    assert '--imagenet-weights is for --vgg-init imagenet' in capsys.readouterr().err
    with pytest.raises(helper.UserError, match='not a file'):
        main.resolve_weights(main.parse_args(['--imagenet-weights', str(tmp_path)]))
    (tmp_path / 'not.h5').write_text('<html>404</html>')
    with pytest.raises(helper.UserError, match='not.h5: cannot read it as an HDF5 file'):
        main.resolve_weights(main.parse_args(['--imagenet-weights', str(tmp_path / 'not.h5'),
                                              '--data-dir', str(tmp_path)]))
    assert sorted(os.listdir(tmp_path)) == ['not.h5']


# ---------------------------------------------------------------------------------- dataset checks

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
    summary = helper.dataset_summary(str(dataset), 'user', helper.scan_dataset(str(dataset)))
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
    rgb, _ = helper.load_pair(str(dataset / 'training/image_2/um_000000.png'),
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
    '16-bit image': (lambda d: Image.fromarray(np.full((64, 224), 40000, np.uint16)).save(
                         d / 'training/image_2/umm_000002.png'), 'training/image_2/umm_000002.png', 'not 8-bit'),
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
    assert 'data_road.zip is a file: it must be a KITTI-layout folder (unzip it first)' in result.stderr
    assert os.listdir(tmp_path) == ['data_road.zip']


def test_a_nan_loss_stops_training_naming_the_step():
    def get_batches_fn(batch_size):
        for value in (1.0, 2.0, np.nan, 3.0):
            yield np.full((batch_size, 1, 1, 3), value), np.ones((batch_size, 1, 1, 2))

    input_image = tf.placeholder(tf.float32)
    loss = tf.reduce_mean(input_image)
    with tf.Session() as sess, pytest.raises(helper.UserError, match='loss became nan at step 3 .epoch 1.'):
        main.train_nn(sess, 1, 2, get_batches_fn, tf.no_op(), loss, input_image, tf.placeholder(tf.float32),
                      tf.placeholder(tf.float32), None)


@pytest.mark.parametrize('where', ['mid-epoch', 'validation'])
def test_an_interrupted_run_resumes_to_the_same_weights(thin_vgg, small_dataset, tmp_path, monkeypatch, capsys,
                                                        where):
    # Without dropout: its random masks come from stateful random ops, whose streams restart in a new session.
    flags = ['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--epochs', '2', '--batch-size', '3',
             '--image-shape', '64', '224', '--val-fraction', '0.25', '--keep-prob', '1', '--no-download']
    straight = main.run(flags + ['--runs-dir', str(tmp_path / 'straight')])
    original = helper.gen_batch_function

    def interrupted_at_step_4(*args, **kwargs):  # 9 training images, batch 3: in the middle of epoch 2
        get_batches_fn, taken = original(*args, **kwargs), []

        def batches(batch_size):
            for batch in get_batches_fn(batch_size):
                if len(taken) == 4:
                    raise KeyboardInterrupt
                taken.append(batch)
                yield batch

        batches.num_images = get_batches_fn.num_images
        return batches

    original_validate = main.make_validate_fn

    def interrupted_in_epoch_2_validation(*args):
        validate_fn, calls = original_validate(*args), []

        def validate():
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return validate_fn()

        validate.samples = validate_fn.samples
        return validate

    if where == 'mid-epoch':
        monkeypatch.setattr(helper, 'gen_batch_function', interrupted_at_step_4)
    else:
        monkeypatch.setattr(main, 'make_validate_fn', interrupted_in_epoch_2_validation)
    assert main.main(flags + ['--runs-dir', str(tmp_path / 'stopped')]) == 130
    run_dir = str(next((tmp_path / 'stopped').iterdir()))
    err = capsys.readouterr().err
    stopped_at = 4 if where == 'mid-epoch' else 6  # at 6, epoch 2's checkpoint is not written: it is redone
    assert f'interrupted at step {stopped_at}' in err and f'python main.py --resume {run_dir}' in err
    monkeypatch.setattr(helper, 'gen_batch_function', original)
    monkeypatch.setattr(main, 'make_validate_fn', original_validate)
    assert main.run(['--resume', run_dir]) == run_dir
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert [h['epoch'] for h in history] == [1, 2]
    resumed_at = json.load(open(os.path.join(run_dir, 'config.json')))['resumed'][0]['at_step']
    assert resumed_at == (4 if where == 'mid-epoch' else 3)
    a = tf.train.latest_checkpoint(os.path.join(straight, main.LAST_CHECKPOINT))
    b = tf.train.latest_checkpoint(os.path.join(run_dir, main.LAST_CHECKPOINT))
    names = [name for name, _ in tf.train.list_variables(a)]
    assert 'global_step' in names and 'score_fr/weights/Adam' in names
    assert tf.train.load_variable(b, 'global_step') == 6
    for name in names:
        np.testing.assert_allclose(tf.train.load_variable(b, name), tf.train.load_variable(a, name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert tf.train.latest_checkpoint(os.path.join(run_dir, main.BEST_CHECKPOINT))
    with pytest.raises(helper.UserError, match='that run finished'):
        main.run(['--resume', run_dir])


def test_resume_refuses_other_flags_and_folders_that_are_not_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main.parse_args(['--resume', str(tmp_path), '--epochs', '3'])
    assert 'drop --epochs' in capsys.readouterr().err
    with pytest.raises(helper.UserError, match='not a run folder of this project'):
        main.run(['--resume', str(tmp_path)])


# ------------------------------------------------------------------------------------------ fast inference

@pytest.fixture(scope='session')
def optimized_run(thin_run):
    with tf.Graph().as_default():
        assert main.main(['optimize', '--checkpoint', thin_run, '--runs', '2']) == 0
    return thin_run


def sample_batch(small_dataset, shape=(64, 224)):
    """(a test image of the small dataset, uint8 [h, w, 3]; it resized to shape, float32 [1, H, W, 3])."""
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    image = helper.read_rgb(os.path.join(test_dir, sorted(os.listdir(test_dir))[0]))
    return image, helper.resize_image(image, shape)[None].astype(np.float32)


def test_optimize_writes_every_variant_and_its_table(optimized_run):
    out = os.path.join(optimized_run, main.OPTIMIZED_DIR)
    report = json.load(open(os.path.join(out, 'optimization.json')))
    measured = {row['variant']: row for row in report['variants']}
    skipped = {row['variant']: row['reason'] for row in report['skipped']}
    assert set(measured) | set(skipped) == {'saved_model', *inference.FILES} and not set(measured) & set(skipped)
    assert ('bf16' in skipped) == (inference.mixed_precision()[0] is None) and set(skipped) <= {'bf16'}
    for variant, row in measured.items():
        if variant != 'saved_model':
            assert os.path.getsize(os.path.join(out, row['file'])) / 2 ** 20 == pytest.approx(row['size_mb'])
        assert 0 < row['median_ms'] <= row['p90_ms'] and row['runs'] == 2
        assert row['images_per_s'] == pytest.approx(1000 / row['median_ms'])
        assert 0 <= row['max_f'] <= 1 and 0 <= row['iou'] <= 1
        assert row['max_f_change'] == pytest.approx(row['max_f'] - measured['fp32']['max_f'])
        assert row['speedup'] == pytest.approx(measured['fp32']['median_ms'] / row['median_ms'])
    assert report['image_shape'] == [64, 224] and report['val_images'] == 3 and report['calibration_images'] == 9
    table = open(os.path.join(out, 'optimization.md')).read()
    assert all(f'| {variant} | {row["file"]} |' in table for variant, row in measured.items())
    assert all(f'Skipped: {variant}: {reason}' in table for variant, reason in skipped.items())
    assert not os.path.exists(out + '.partial')


def test_frozen_graph_gives_the_session_probabilities(optimized_run, small_dataset):
    _, batch = sample_batch(small_dataset)
    session = inference.saved_model_predictor(os.path.join(optimized_run, main.SERVING_DIR), (64, 224))
    graph_def = inference.read_graph_def(os.path.join(optimized_run, main.OPTIMIZED_DIR, 'fp32.pb'))
    frozen = inference.graph_predictor(graph_def)
    assert frozen.image_shape == (64, 224)
    np.testing.assert_allclose(frozen(batch), session(batch), atol=1e-4)
    # Variables are constants, keep_prob is folded (the image is the only input) and dropout is gone.
    assert not {node.op for node in graph_def.node} & {'VariableV2', 'VarHandleOp', 'RandomUniform', 'Fill'}
    assert [node.name for node in graph_def.node if node.op.startswith('Placeholder')] == [inference.INPUT]


@pytest.mark.parametrize('variant, tolerance', [('bf16', 0.01), ('tflite-fp16', 1e-3), ('tflite-int8-dynamic', 0.01),
                                                ('tflite-int8', 0.02)])
def test_each_reduced_precision_variant_loads_and_gives_probabilities(optimized_run, small_dataset, variant,
                                                                      tolerance):
    path = os.path.join(optimized_run, main.OPTIMIZED_DIR, inference.FILES[variant])
    if not os.path.exists(path):
        pytest.skip(inference.mixed_precision()[1])
    image, batch = sample_batch(small_dataset)
    predict = inference.variant_predictor(variant, path)
    fp32 = inference.variant_predictor('fp32', os.path.join(optimized_run, main.OPTIMIZED_DIR, 'fp32.pb'))
    prob, reference = predict(batch), fp32(batch)
    assert predict.image_shape == (64, 224) and prob.shape == (1, 64, 224) and prob.dtype == np.float32
    assert reference.std() > 0.01  # the thin model's probabilities vary: agreeing with them means something
    assert np.corrcoef(prob.ravel(), reference.ravel())[0, 1] > 0.99 and np.abs(prob - reference).max() < tolerance
    full = helper.predict_probability(predict, image, predict.image_shape)
    assert full.shape == image.shape[:2] and 0 <= full.min() and full.max() <= 1


def write_half_road_model(path, shape=(32, 64)):
    """A frozen graph in the optimized models' format whose road is the bottom half of every image."""
    road = np.zeros((1, *shape), np.float32)
    road[:, shape[0] // 2:] = 1
    with tf.Graph().as_default() as graph:
        image = tf.placeholder(tf.float32, [1, *shape, 3], name=inference.INPUT)
        tf.add(tf.constant(road), 0 * image[..., 0], name=inference.OUTPUT)
    inference.write_bytes(str(path), graph.as_graph_def().SerializeToString())
    return str(path)


def test_infer_writes_an_overlay_video_at_the_input_size_and_frame_rate(tmp_path):
    model = write_half_road_model(tmp_path / 'half.pb')
    rng = np.random.default_rng(0)
    frames = [synthetic.render_scene(rng, 75, 241)[0] for _ in range(7)]  # odd sizes, as KITTI's 375x1242
    writer = helper.video_writer(str(tmp_path / 'in.mp4'), 12, (75, 241))
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    out = str(tmp_path / 'out.mp4')
    assert main.main(['infer', '--model', model, '--input', str(tmp_path / 'in.mp4'), '--output', out,
                      '--probabilities']) == 0
    source = np.stack(list(iio.imiter(str(tmp_path / 'in.mp4'), plugin='FFMPEG'))).astype(float)
    overlaid = np.stack(list(iio.imiter(out, plugin='FFMPEG'))).astype(float)
    assert overlaid.shape == source.shape == (7, 75, 241, 3)
    assert iio.immeta(out, plugin='FFMPEG')['fps'] == 12
    # Bottom half: half-way to OVERLAY_COLOR (green up, red and blue down); top half: untouched (up to H.264).
    change = (overlaid - source).mean(axis=(0, 2))  # [row, channel]
    assert (change[46:, 1] > 30).all() and (change[46:, [0, 2]] < -15).all()
    assert (np.abs(change[:28]) < 4).all()
    maps = sorted(os.listdir(tmp_path / 'out_probabilities'))
    assert maps == [f'frame_{i:06d}.png' for i in range(7)]
    confidence = iio.imread(tmp_path / 'out_probabilities' / maps[0])
    assert confidence.dtype == np.uint8 and confidence.shape == (75, 241)
    assert (confidence[:28] == 0).all() and (confidence[46:] == 255).all()
    assert not os.path.exists(tmp_path / 'out.partial.mp4')


def test_infer_writes_overlays_of_a_folder_at_each_image_size(optimized_run, small_dataset, tmp_path, capsys):
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    out = str(tmp_path / 'out')
    args = ['infer', '--model', optimized_run, '--input', test_dir, '--output', out, '--precision', 'int8',
            '--probabilities']
    assert main.main(args) == 0
    assert 'int8.tflite (tflite-int8)' in capsys.readouterr().out
    for name in os.listdir(test_dir):
        shape = iio.imread(os.path.join(test_dir, name)).shape
        assert iio.imread(os.path.join(out, name)).shape == shape
        assert iio.imread(os.path.join(out, 'probabilities', name)).shape == shape[:2]
    before = snapshot(tmp_path)
    assert main.main(args) == 2  # nothing is overwritten
    assert 'um_000000.png exists (and 7 more)' in capsys.readouterr().err and snapshot(tmp_path) == before


@pytest.mark.parametrize('model, input, extra, message', [
    ('{run}/nowhere', '{image}', [], 'no such file or folder'),
    ('{run}/optimized/int8.tflite', '{image}', ['--precision', 'fp32'], 'has its own precision'),
    ('{run}/saved_model', '{image}', ['--precision', 'int8'], 'python main.py optimize'),
    ('{run}/config.json', '{image}', [], 'must be a frozen graph'),
    ('{run}', '{run}/config.json', [], 'expected a PNG/JPEG image'),
    ('{run}', '{run}/checkpoints', [], 'no PNG or JPEG files'),
])
def test_infer_refuses_what_it_cannot_use(optimized_run, small_dataset, tmp_path, capsys, model, input, extra,
                                         message):
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    fill = lambda text: text.format(run=optimized_run, image=image)
    assert main.main(['infer', '--model', fill(model), '--input', fill(input), '--output', str(tmp_path / 'o'),
                      *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err and not os.path.exists(tmp_path / 'o')


def test_infer_refuses_foreign_models_and_clashing_names(small_dataset, tmp_path, capsys):
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    (tmp_path / 'bad.tflite').write_bytes(b'not a flatbuffer')
    (tmp_path / 'empty.pb').write_bytes(tf.GraphDef().SerializeToString())  # parses, but has no road model
    for model in ('bad.tflite', 'empty.pb'):
        assert main.main(['infer', '--model', str(tmp_path / model), '--input', image, '--output',
                          str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err
        assert 'cannot be loaded as a road model' in err and 'Traceback' not in err
    pictures = tmp_path / 'pictures'
    pictures.mkdir()
    shutil.copy(image, pictures / 'a.png')
    Image.open(image).convert('RGB').save(pictures / 'a.jpg')
    assert main.main(['infer', '--model', str(tmp_path / 'empty.pb'), '--input', str(pictures), '--output',
                      str(tmp_path / 'o')]) == 2
    assert 'would both be written as a.png' in capsys.readouterr().err and not os.path.exists(tmp_path / 'o')


def test_bf16_training_runs_where_the_cpu_has_it_and_is_refused_elsewhere(thin_vgg, small_dataset, tmp_path,
                                                                          monkeypatch, capsys):
    args = ['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--runs-dir', str(tmp_path / 'runs'), '--epochs', '1',
            '--batch-size', '4', '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download',
            '--precision', 'bf16']
    if inference.mixed_precision()[0] == 'bf16':
        with tf.Graph().as_default():
            run_dir = main.run(args)
        config = json.load(open(os.path.join(run_dir, 'config.json')))
        assert config['settings']['precision'] == 'bf16' and config['finished']
    monkeypatch.setattr(inference, 'mixed_precision', lambda: (None, 'this CPU has neither AVX512_BF16 nor AMX'))
    shutil.rmtree(tmp_path / 'runs', ignore_errors=True)
    assert main.main(args) == 2
    assert 'this CPU has neither AVX512_BF16 nor AMX' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'runs')  # refused before a run folder is made


class Summary:
    """Counts outcomes per test for the closing `N passed, M failed` line: a test fails if any phase fails."""

    def __init__(self):
        self.outcomes = {}

    def pytest_runtest_logreport(self, report):
        previous = self.outcomes.get(report.nodeid)
        if previous != 'failed' and (report.when == 'call' or report.outcome != 'passed'):
            self.outcomes[report.nodeid] = report.outcome

    def line(self):
        count = lambda outcome: sum(o == outcome for o in self.outcomes.values())
        skipped = count('skipped')
        return f'{count("passed")} passed, {count("failed")} failed' + (f', {skipped} skipped' if skipped else '')


if __name__ == '__main__':
    summary = Summary()
    code = pytest.main([__file__, '-q', '-p', 'no:cacheprovider', *sys.argv[1:]], plugins=[summary])
    print(summary.line())
    sys.exit(code if code != 5 else 1)
