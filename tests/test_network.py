"""The network and the training loop of main.py: FCN-8s layer details, the loss, the learning-rate schedule, early
stopping and a diverged loss."""
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import helper
import main
from conftest import thin_fcn
from fcn8s import recipes
from fcn8s.errors import UserError


def test_patience_stops_training_when_max_f_stops_improving(capsys):
    scores = iter([float('nan'), 0.5, 0.6, 0.55, 0.58, 0.9, 0.95])  # nan never counts as the best
    loss = tf.constant(1.0)
    with tf.Session() as sess:
        history = main.train_nn(sess, 7, 1, lambda batch_size: iter([(None, None)]), tf.no_op(), loss,
                                tf.placeholder(tf.float32), tf.placeholder(tf.float32), tf.placeholder(tf.float32),
                                None, validation=(lambda: ({'val_max_f': next(scores)}, {}), 2))
    assert [h['epoch'] for h in history] == [1, 2, 3, 4, 5] and history[-1]['early_stop']
    assert 'has not improved for 2 epoch(s) since epoch 3' in capsys.readouterr().out


def test_learning_rate_warms_up_then_decays_to_zero():
    lr = [main.learning_rate_at(step, 200, 1.0, warmup_steps=50) for step in range(1, 201)]
    assert lr[0] == pytest.approx(1 / 50) and lr[24] == pytest.approx(0.5 * (1 - 24 / 200) ** recipes.POLY_POWER)
    assert max(lr) == lr[49] and all(a > b for a, b in zip(lr[49:], lr[50:]))
    assert 0 < lr[-1] < 0.01


@pytest.mark.parametrize('given, expected', [(None, (main.POOL4_SCALE, main.POOL3_SCALE)), ((1.0, 1.0), (1.0, 1.0))])
def test_the_skips_are_scaled_as_fcn_scales_them_unless_told_otherwise(given, expected):
    pool3, pool4, fc7 = tf.ones([1, 4, 4, 8]), tf.ones([1, 2, 2, 8]), tf.ones([1, 1, 1, 8])
    main.layers(pool3, pool4, fc7, 2, given)
    with tf.Session() as sess:
        scaled_pool4, scaled_pool3 = sess.run(['scale_pool4:0', 'scale_pool3:0'])
    assert (scaled_pool4 == np.float32(expected[0])).all() and (scaled_pool3 == np.float32(expected[1])).all()


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
    gradient = tf.gradients(loss, logits_pl)[0]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        a, grad = sess.run([loss, gradient], {logits_pl: logits, label_pl: labels})
        b = sess.run(loss, {logits_pl: other, label_pl: labels})
    expected = (np.log1p(np.exp(-2)) + np.log1p(np.exp(-1))) / 2  # mean over the two valid pixels only
    assert a == pytest.approx(expected, rel=1e-5) and b == pytest.approx(a)
    assert not grad[0, 1].any() and grad[0, 0].all()  # nothing is learnt from invalid pixels


def test_weighted_labels_make_the_loss_a_weighted_mean():
    logits_pl = tf.placeholder(tf.float32, [1, 1, 2, 2])
    label_pl = tf.placeholder(tf.float32, [1, 1, 2, 2])
    _, loss = main.masked_cross_entropy(logits_pl, label_pl, 2)
    logits = np.array([[[[0, 2], [1, 0]]]], np.float32)
    labels = np.array([[[[0, 3], [0.5, 0]]]], np.float32)  # road weighted 3, non-road 0.5
    gradient = tf.gradients(loss, logits_pl)[0]
    with tf.Session() as sess:
        value, grad = sess.run([loss, gradient], {logits_pl: logits, label_pl: labels})
    expected = (3 * np.log1p(np.exp(-2)) + 0.5 * np.log1p(np.exp(-1))) / 3.5  # as PyTorch's weighted mean
    assert value == pytest.approx(expected, rel=1e-5)
    # d loss / d logits = weight x (softmax - one-hot) / sum of weights, which vanishes as the prediction gets right
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = labels.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, weights * (softmax - labels / weights) / 3.5, rtol=1e-5)


def test_loss_falls_over_a_few_steps(thin_vgg, small_dataset):
    get_batches_fn = helper.gen_batch_function(os.path.join(small_dataset, 'training'), (64, 224))
    images, labels = next(get_batches_fn(4))
    with tf.Session() as sess:
        tf.set_random_seed(0)
        net = thin_fcn(sess, thin_vgg)
        feed = {net['image_input']: images, net['correct_label']: labels, net['learning_rate']: 1e-3}
        losses = [sess.run([net['train_op'], net['loss']], feed)[1] for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


def test_a_nan_loss_stops_training_naming_the_step():
    def get_batches_fn(batch_size):
        for value in (1.0, 2.0, np.nan, 3.0):
            yield np.full((batch_size, 1, 1, 3), value), np.ones((batch_size, 1, 1, 2))

    input_image = tf.placeholder(tf.float32)
    loss = tf.reduce_mean(input_image)
    with tf.Session() as sess, pytest.raises(UserError, match='loss became nan at step 3 .epoch 1.'):
        main.train_nn(sess, 1, 2, get_batches_fn, tf.no_op(), loss, input_image, tf.placeholder(tf.float32),
                      tf.placeholder(tf.float32), None)


def test_a_loss_that_blows_up_without_nan_stops_training_naming_the_step():
    """Losses 0.7, 0.9, 70 (100x the first: ends the run only above 100 x max(first, 1) = 100), then 7000: 1e4x
    the first, finite. A loss falling to 0.001 and rising to 0.5 is a hard batch, not a blow-up."""
    def batches_of(values):
        def get_batches_fn(batch_size):
            for value in values:
                yield np.full((batch_size, 1, 1, 3), value), np.ones((batch_size, 1, 1, 2))
        return get_batches_fn

    input_image = tf.placeholder(tf.float32)
    loss = tf.reduce_mean(input_image)
    placeholders = (input_image, tf.placeholder(tf.float32), tf.placeholder(tf.float32), None)
    with tf.Session() as sess:
        main.train_nn(sess, 1, 2, batches_of([0.7, 0.001, 0.5, 70.0]), tf.no_op(), loss, *placeholders)
        with pytest.raises(UserError, match=r'loss became 7000 at step 4 \(epoch 1; it was 0\.7 at this run\'s first '
                                            r'step\): training diverged .* lower --learning-rate'):
            main.train_nn(sess, 1, 2, batches_of([0.7, 0.9, 70.0, 7000.0, 0.8]), tf.no_op(), loss, *placeholders)
