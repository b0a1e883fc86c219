"""fcn8s/vgg.py, the VGG16 encoder: the saved source info, fc6/fc7 as matrix products or convolutions, and the
project's own SavedModel built in code with its weights."""
import shutil

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import main
from fcn8s import vgg
from fcn8s import weights as weight_sources
from fcn8s.errors import UserError
from tests.support import THIN, write_keras_h5


def test_read_source_returns_the_saved_info(tmp_path):
    info = {'source': 'imagenet', 'converted_from': '/somewhere/vgg16.h5'}
    write_keras_h5(tmp_path / 'vgg16.h5', THIN, seed=3)
    assert vgg.read_source(weight_sources.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'a'),
                                                           info)) == info
    assert vgg.read_source(vgg.save_vgg16(str(tmp_path / 'b'), THIN, info={'source': 'random'})) == {
        'source': 'random'}
    assert vgg.read_source(vgg.save_vgg16(str(tmp_path / 'c'), THIN)) is None
    (tmp_path / 'c' / 'assets.extra').mkdir()
    (tmp_path / 'c' / 'assets.extra' / 'source.json').write_text('{"source": ')
    assert vgg.read_source(str(tmp_path / 'c')) is None
    (tmp_path / 'c' / 'assets.extra' / 'source.json').write_text('{"converted_from": "x.h5"}')
    assert vgg.read_source(str(tmp_path / 'c')) is None


def test_fc6_and_fc7_as_matrix_products_are_the_same_layers_as_convolutions():
    """The encoder built for training runs fc6/fc7 as patch-matrix products, the exported one as convolutions:
    same variables, same outputs and gradients (up to float rounding)."""
    images = np.random.default_rng(5).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    results = []
    for as_matmul in (True, False):
        with tf.Graph().as_default(), tf.Session() as sess:
            image_input, keep_prob, _, _, layer7 = vgg.build_vgg16(THIN, seed=2, fc_as_matmul=as_matmul)
            weights = [v for v in tf.trainable_variables() if v.op.name in ('fc6/weights', 'fc7/weights')]
            mix = np.random.default_rng(6).standard_normal((2, 2, 3, THIN[5])).astype(np.float32)
            gradients = tf.gradients(tf.reduce_sum(layer7 * mix), weights)
            sess.run(tf.global_variables_initializer())
            names = sorted(v.op.name for v in tf.global_variables())
            results.append((names, sess.run([layer7, *gradients], {image_input: images})))
    (names_a, a), (names_b, b) = results
    assert names_a == names_b and a[0].shape == (2, 2, 3, THIN[5]) and a[0].std() > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * np.abs(y).max())


def test_the_projects_own_savedmodel_trains_built_in_code_with_its_weights(tmp_path):
    """A SavedModel this project wrote (its source.json says so) is built in code, fc6/fc7 as matrix products, its
    weights restored: the same encoder outputs as its saved graph, which a SavedModel without source.json (as
    Udacity's) keeps."""
    own = vgg.save_vgg16(str(tmp_path / 'own'), THIN, seed=3, info={'source': 'imagenet', 'converted_from': 'x.h5'})
    other = shutil.copytree(own, tmp_path / 'udacity', ignore=shutil.ignore_patterns('assets.extra'))
    assert vgg.own_channels(own) == THIN and vgg.own_channels(str(other)) is None
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    outputs, fc_ops = [], []
    for folder in (own, str(other)):
        with tf.Graph().as_default(), tf.Session() as sess:
            net = main.build_fcn(sess, folder, 0)
            outputs.append(sess.run(sess.graph.get_tensor_by_name('layer7_out:0'), {net['input_image']: images}))
            fc_ops.append({op.type for op in sess.graph.get_operations() if op.name.startswith('fc6/')})
    assert 'MatMul' in fc_ops[0] and 'Conv2D' not in fc_ops[0]
    assert 'Conv2D' in fc_ops[1] and 'MatMul' not in fc_ops[1]
    assert outputs[0].shape == (2, 2, 3, THIN[5]) and outputs[0].std() > 0
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-5 * np.abs(outputs[1]).max())


def test_damaged_weights_of_the_projects_own_savedmodel_are_one_error(tmp_path):
    own = vgg.save_vgg16(str(tmp_path / 'own'), THIN, info={'source': 'imagenet', 'converted_from': 'x.h5'})
    data = next((tmp_path / 'own' / 'variables').glob('variables.data-*'))
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # a copy cut short
    assert vgg.own_channels(own) == THIN  # its index is whole: the weights themselves are found missing
    with tf.Graph().as_default(), tf.Session() as sess, pytest.raises(UserError, match='cannot be read'):
        main.build_fcn(sess, own, 0)
