"""The project's checks: `python project_tests.py` runs them all (pytest underneath, this file and tests/) and
ends with a line `N passed, M failed, K skipped`.

This file keeps the classic checks of Udacity's project_tests.py (load_vgg, layers, optimize, train_nn, the KITTI
folder); tests/ holds the rest, a file per module: the tests of fcn8s/<module>.py in tests/test_<module>.py, and
tests/test_main.py, test_helper.py and test_benchmark.py for the scripts. The fixtures are in conftest.py, the helpers
and constants the tests share in tests/support.py (a module of the package `tests`, imported as tests.support). No
network, GPU, KITTI or real VGG16: tests generate thin SavedModels with the VGG tensor names and small KITTI-layout
folders of synthetic scenes. A test that cannot run on this machine is reported as skipped, with its reason.
"""
import os
import sys
from unittest import mock

from fcn8s import command_line

with command_line.quiet_tensorflow():  # as main.py: the test run's screen shows the tests, not TensorFlow
    import tensorflow.compat.v1 as tf

# isort: split
import numpy as np
import pytest

import main
from fcn8s import vgg
from tests.support import KITTI_DIR, THIN, thin_fcn

# ------------------------------------------------------------------------- the classic Udacity checks

def test_load_vgg_calls_the_loader_and_returns_the_graph_tensors():
    def fake_load(sess, tags, path):
        for name in vgg.TENSOR_NAMES:
            tf.placeholder(tf.float32, name=name.split(':')[0])

    with tf.Session() as sess, mock.patch.object(main.tf.saved_model.loader, 'load',
                                                 side_effect=fake_load) as load:
        tensors = main.load_vgg(sess, 'some/vgg/path')
    load.assert_called_once_with(sess, ['vgg16'], 'some/vgg/path')
    assert [t.name for t in tensors] == list(vgg.TENSOR_NAMES)
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


@pytest.mark.skipif(not os.path.isdir(KITTI_DIR), reason='KITTI Road is not in data/data_road')
def test_kitti_dataset_counts():
    count = lambda folder, pattern='': len([f for f in os.listdir(os.path.join(KITTI_DIR, folder)) if pattern in f])
    assert count('training/image_2') == 289
    assert count('training/gt_image_2', '_road_') == 289
    assert count('testing/image_2') == 290


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
    here = os.path.dirname(os.path.abspath(__file__))
    code = pytest.main([__file__, os.path.join(here, 'tests'), '-q', '-rs', '-p', 'no:cacheprovider', *sys.argv[1:]],
                       plugins=[summary])
    print(summary.line())
    sys.exit(code if code != 5 else 1)
