"""main.py: the network (FCN-8s layers, the loss, the learning-rate schedule), the training loop (early stopping, a
diverged loss), the settings of a run, and training runs end to end (road and multi-class)."""
import functools
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import helper
import main
from fcn8s import camvid, command_line, files, images, inference, kitti, outputs, paths, recipes, vgg
from fcn8s.errors import FirstStepFailed, UserError
from tests.support import THIN, thin_fcn


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


def test_a_kernel_error_at_the_first_step_is_one_error_line_and_later_ones_keep_their_traceback():
    def get_batches_fn(values):
        return lambda batch_size: iter([(np.full((batch_size, 1, 1, 3), v), np.ones((batch_size, 1, 1, 2)))
                                        for v in values])

    input_image = tf.placeholder(tf.float32)
    loss = tf.reduce_mean(input_image)
    step = tf.Assert(tf.reduce_all(input_image > 0), ['no kernel for this'])  # fails as a missing kernel does
    placeholders = (input_image, tf.placeholder(tf.float32), tf.placeholder(tf.float32), None)
    with tf.Session() as sess:
        with pytest.raises(FirstStepFailed, match=r'could not run the first training step \(InvalidArgumentError: '):
            main.train_nn(sess, 1, 2, get_batches_fn([-1.0, 1.0]), step, loss, *placeholders)
        with pytest.raises(tf.errors.InvalidArgumentError):  # a step that ran before: not the setup, a bug
            main.train_nn(sess, 1, 2, get_batches_fn([1.0, -1.0]), step, loss, *placeholders)


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


@pytest.mark.parametrize('flags, kind, balanced', [
    ([], 'camvid', True), ([], 'cityscapes', True), ([], 'kitti', False), (['--classes', 'road'], 'camvid', False),
    (['--no-balance-classes'], 'camvid', False), (['--balance-classes'], 'kitti', True),
    (['--balance-classes', '--classes', 'road'], 'camvid', True)])
def test_scene_parsing_is_class_balanced_unless_road_alone_or_turned_off(flags, kind, balanced):
    assert main.settings(command_line.parse_args(flags), 'user', kind)['balance_classes'] is balanced


def test_a_random_encoder_learns_scene_parsing_at_its_own_rate_unless_told():
    def rate(flags, source, kind, random_encoder):
        args = command_line.parse_args(flags)
        return main.encoder_learning_rate(args, main.settings(args, source, kind), kind, random_encoder)

    for kind in ('kitti', 'camvid', 'cityscapes'):
        assert rate([], 'user', kind, False) == 1e-4  # pretrained
        assert rate(['--classes', 'road'], 'user', kind, True) == 1e-4
    for kind in ('camvid', 'cityscapes'):
        assert rate([], 'user', kind, True) == 3e-4
    for source, expected in (('user', 1e-4), ('synthetic', 3e-4)):  # KITTI's layout is road: its recipe's own rate
        assert rate([], source, 'kitti', True) == expected
    assert rate(['--learning-rate', '2e-5'], 'user', 'camvid', True) == 2e-5


def test_end_to_end_run_writes_its_run_folder(thin_run, thin_vgg, small_dataset):
    run_dir = thin_run
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    for name in os.listdir(test_dir):
        assert iio.imread(os.path.join(run_dir, name)).shape == iio.imread(os.path.join(test_dir, name)).shape
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['data']['source'] == 'user' and config['weights']['source'] == 'udacity'
    assert config['weights']['skip_scales'] == list(main.UNSCALED_SKIPS)  # pretrained too: CamVid runs, recipes
    assert config['data']['val_images'] == 3 and config['settings']['epochs'] == 2
    assert config['precision'] == {'chosen': 'fp32', 'why': '--precision fp32'} and config['machine']
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
    assert sorted(kitti.category(tag[len('val/'):]) for tag in overlays) == ['um', 'umm', 'uu']  # one each
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0  # the best epoch's weights, scored again
    evaluated = json.load(open(os.path.join(run_dir, 'eval.json')))
    best = max(history, key=lambda h: h['val_max_f'])
    for category, scores in best['val_kitti'].items():
        assert evaluated['kitti'][category] == pytest.approx(scores)
    assert evaluated['loss'] == pytest.approx(best['val_loss'])
    assert main.main(['evaluate', '--checkpoint', run_dir, '--dataset', small_dataset]) == 0
    # The exported model gives the probabilities of the best checkpoint in the training graph.
    image = images.read_rgb(os.path.join(test_dir, os.listdir(test_dir)[0]))
    batch = images.resize_image(image, (64, 224))[None].astype(np.float32)
    best = tf.train.latest_checkpoint(os.path.join(run_dir, paths.BEST_CHECKPOINT))
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, thin_vgg, 0, skip_scales=config['weights']['skip_scales'])
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        expected = sess.run(outputs.road_probability(net['logits']), {net['input_image']: batch}).reshape(64, 224)
    with tf.Graph().as_default(), tf.Session() as sess:
        meta = tf.saved_model.loader.load(sess, ['serve'], os.path.join(run_dir, paths.SERVING_DIR))
        signature = meta.signature_def['serving_default']
        served = sess.run(signature.outputs['road_probability'].name, {signature.inputs['image'].name: batch})
    assert served.shape == (1, 64, 224)
    np.testing.assert_allclose(served[0], expected, atol=1e-5)
    assert len(json.load(open(os.path.join(run_dir, 'eval.json')))['images']) == 12
    # A finished run cannot be resumed: its training state is deleted, the best checkpoint and export stay.
    assert not os.path.exists(os.path.join(run_dir, paths.LAST_CHECKPOINT))
    for name in os.listdir(test_dir):
        confidence = iio.imread(os.path.join(run_dir, 'kitti', kitti.label_name(name)))
        assert confidence.dtype == np.uint8 and confidence.shape == iio.imread(os.path.join(test_dir, name)).shape[:2]


def test_a_he_initialised_run_trains_evaluates_and_exports_with_unscaled_skips(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(vgg, 'build_vgg16', functools.partial(vgg.build_vgg16, channels=THIN))  # thin, random
    run_dir = main.run(['--dataset', small_dataset, '--vgg-init', 'random', '--runs-dir', str(tmp_path), '--epochs',
                        '1', '--batch-size', '4', '--image-shape', '64', '224', '--val-fraction', '0.25',
                        '--no-download', '--precision', 'fp32'])
    config_path = os.path.join(run_dir, 'config.json')
    with open(config_path) as f:
        config = json.load(f)
    assert config['weights'] == {'source': 'random', 'vgg_dir': None, 'skip_scales': list(main.UNSCALED_SKIPS)}
    val_loss = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs'][0]['val_loss']
    evaluated = lambda: json.load(open(os.path.join(run_dir, 'eval.json')))['loss']
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0 and evaluated() == pytest.approx(val_loss)
    del config['weights']['skip_scales']  # as a run from before the record: FCN's scales, another model
    files.write_json(config_path, config)
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0 and evaluated() != pytest.approx(val_loss)
    batch = np.random.default_rng(0).uniform(0, 255, (1, 64, 224, 3)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, None, 0, skip_scales=main.UNSCALED_SKIPS)
        tf.train.Saver(tf.trainable_variables()).restore(
            sess, tf.train.latest_checkpoint(os.path.join(run_dir, paths.BEST_CHECKPOINT)))
        expected = sess.run(outputs.road_probability(net['logits']), {net['input_image']: batch}).reshape(1, 64, 224)
    served, _ = inference.saved_model_predictor(os.path.join(run_dir, paths.SERVING_DIR), (64, 224))
    np.testing.assert_allclose(served(batch), expected, atol=1e-5)


def test_a_multi_class_run_writes_class_overlays_labels_and_a_legend(camvid_run, small_camvid):
    config = json.load(open(os.path.join(camvid_run, 'config.json')))
    assert config['data']['layout'] == 'camvid' and config['data']['classes'] == list(camvid.CLASSES)
    assert config['data']['val_names'] == sorted(os.listdir(os.path.join(small_camvid, 'val')))  # its own split
    history = json.load(open(os.path.join(camvid_run, 'metrics.json')))['epochs']
    last = history[-1]
    assert set(last['val_classes']) == set(camvid.CLASSES) and 0 <= last['val_mean_iou'] <= 1
    assert last['val_score'] == last['val_mean_iou'] and np.array(last['val_confusion']).shape == (11, 11)
    assert np.isnan(last['val_classes']['Pedestrian']['iou'] or np.nan)  # never in the scenes: left out
    for name in os.listdir(os.path.join(small_camvid, 'test')):
        overlay = iio.imread(os.path.join(camvid_run, name))
        labels = iio.imread(os.path.join(camvid_run, 'labels', name))
        assert overlay.shape == (64, 96, 3) and labels.shape == (64, 96) and labels.dtype == np.uint8
        assert labels.max() <= 10
    assert iio.imread(os.path.join(camvid_run, 'legend.png')).shape[0] == 20 * 11
    assert os.path.isfile(os.path.join(camvid_run, 'class_iou.png')) and not os.path.exists(
        os.path.join(camvid_run, 'kitti'))


def test_a_sequence_held_out_whole_is_the_validation_split_and_the_run_records_it(small_camvid, thin_vgg, tmp_path,
                                                                                 capsys):
    flags = ['--dataset', small_camvid, '--vgg-dir', thin_vgg, '--epochs', '1', '--batch-size', '4', '--image-shape',
             '64', '96', '--keep-prob', '1', '--no-download', '--precision', 'fp32']
    run_dir = main.run(flags + ['--val-sequence', '0006R0', '--runs-dir', str(tmp_path / 'runs')])
    data = json.load(open(os.path.join(run_dir, 'config.json')))['data']
    layout = camvid.open_layout(small_camvid)
    everything = [n for n, _, _ in layout.train + layout.val]
    assert data['val_names'] == [n for n in everything if n.startswith('0006R0_')]  # its val images and train's
    assert data['train_images'] == len(everything) - len(data['val_names']) and 'sequence 0006R0' in data['split']
    assert main.main(flags + ['--val-sequence', '0099XX', '--runs-dir', str(tmp_path / 'none')]) == 2
    assert 'its sequences: 0001TP, 0006R0, 0016E5, Seq05VD' in capsys.readouterr().err


def test_accumulated_steps_update_the_weights_as_one_batch_that_many_times_larger(monkeypatch):
    """A batch of 4 in one step against its halves in two accumulated steps: the halves have other numbers of valid
    pixels (the second a third invalid), so a mean of the two halves' means would differ; the weight decay counts
    once per update. Plain gradient descent stands in for Adam, whose first step is the gradient's sign: the
    weights then show the gradient itself (Adam's later steps are functions of the gradients applied)."""
    monkeypatch.setattr(tf.train, 'AdamOptimizer', tf.train.GradientDescentOptimizer)
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (4, 6, 6, 3)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.randint(0, 2, (4, 6, 6))]
    labels[2:, :2] = 0  # invalid pixels: not counted

    def weights_after(steps, feeds):
        with tf.Graph().as_default(), tf.Session() as sess:
            image, label = tf.placeholder(tf.float32, [None, 6, 6, 3]), tf.placeholder(tf.float32, [None, 6, 6, 2])
            weights = main._regularized_variable('w', [1, 1, 3, 2], tf.constant_initializer(rng_weights))
            _, train_op, _ = main.optimize(tf.nn.conv2d(image, weights, 1, 'SAME') / 255, label, 0.1, 2,
                                           accumulate_steps=steps)
            sess.run(tf.global_variables_initializer())
            seen = []
            for part in feeds:
                sess.run(train_op, {image: images[part], label: labels[part]})
                seen.append(sess.run(weights))
            return seen

    rng_weights = rng.normal(0, 1, (1, 1, 3, 2)).astype(np.float32)
    (whole,) = weights_after(1, [slice(0, 4)])
    first_half, both_halves = weights_after(2, [slice(0, 2), slice(2, 4)])
    np.testing.assert_array_equal(first_half, rng_weights)  # nothing applied before the second step
    np.testing.assert_allclose(both_halves, whole, rtol=1e-5, atol=1e-6)
    assert np.abs(whole - rng_weights).max() > 0.01  # a step that moved the weights: agreement means something


def test_a_run_accumulates_on_one_device_and_refuses_on_several(small_camvid, thin_vgg, tmp_path, monkeypatch,
                                                                capsys):
    flags = ['--dataset', small_camvid, '--vgg-dir', thin_vgg, '--epochs', '1', '--batch-size', '2', '--image-shape',
             '64', '96', '--keep-prob', '1', '--no-download', '--precision', 'fp32', '--accumulate-steps', '2']
    run_dir = main.run(flags + ['--runs-dir', str(tmp_path / 'runs')])
    assert json.load(open(os.path.join(run_dir, 'config.json')))['settings']['accumulate_steps'] == 2
    monkeypatch.setattr(main.cluster, 'from_environment', lambda: main.cluster.local(['/cpu:0', '/cpu:1']))
    assert main.main(flags + ['--runs-dir', str(tmp_path / 'two')]) == 2
    assert '--accumulate-steps 2 trains on one device' in capsys.readouterr().err
