"""fcn8s/weights.py, where the encoder's weights come from: the Keras ImageNet conversion (against a numpy forward
pass) and the --vgg-init sources."""
import hashlib
import os

import h5py
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import main
from fcn8s import command_line, vgg
from fcn8s import weights as weight_sources
from fcn8s.errors import UserError
from tests.support import THIN, FileServer, resolve_weights, write_keras_h5


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
    export_dir = weight_sources.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'vgg'))
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
    with pytest.raises(weight_sources.ConversionError) as error:
        weight_sources.convert_keras_h5(str(h5_path), str(tmp_path / 'vgg'))
    assert str(h5_path) in str(error.value) and message in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ['vgg16.h5']


def test_conversion_never_overwrites_and_never_leaves_half_a_model(tmp_path, monkeypatch):
    write_keras_h5(tmp_path / 'vgg16.h5', THIN, seed=3)
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'mine.txt').write_text('keep me')
    with pytest.raises(weight_sources.ConversionError, match='already exists'):
        weight_sources.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'vgg'))
    assert os.listdir(tmp_path / 'vgg') == ['mine.txt'] and (tmp_path / 'vgg' / 'mine.txt').read_text() == 'keep me'

    def crash(sess, export_dir, info):
        os.makedirs(os.path.join(export_dir, 'variables'))
        raise OSError('disk full')
    monkeypatch.setattr(vgg, 'save_encoder', crash)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(weight_sources.ConversionError, match='disk full'):
        weight_sources.convert_keras_h5(str(tmp_path / 'vgg16.h5'), str(tmp_path / 'empty'))
    assert sorted(os.listdir(tmp_path)) == ['empty', 'vgg', 'vgg16.h5'] and not os.listdir(tmp_path / 'empty')


def test_vgg_init_auto_converts_local_imagenet_weights_once(tmp_path, capsys):
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    write_keras_h5(data_dir / weight_sources.KERAS_H5, THIN, seed=3)
    args = command_line.parse_args(['--data-dir', str(data_dir), '--no-download'])
    vgg_dir, info = resolve_weights(args)
    assert vgg_dir == str(data_dir / 'vgg')
    assert info == {'source': 'imagenet', 'converted_from': str(data_dir / weight_sources.KERAS_H5)}
    err = capsys.readouterr().err
    assert "Udacity's pretrained VGG16 is not available" in err and 'Using the ImageNet VGG16 weights of' in err
    with tf.Session() as sess:
        main.load_vgg(sess, vgg_dir)
    assert resolve_weights(args) == (vgg_dir, info)  # converted once, then loaded
    with pytest.raises(UserError, match='holds the imagenet VGG16, not the udacity one'):
        resolve_weights(command_line.parse_args(['--data-dir', str(data_dir), '--vgg-init', 'udacity']))
    write_keras_h5(tmp_path / 'other.h5', THIN, seed=4)
    with pytest.raises(UserError, match='already holds the VGG16 converted from .*vgg16.*other.h5'):
        resolve_weights(command_line.parse_args(['--data-dir', str(data_dir), '--imagenet-weights',
                                              str(tmp_path / 'other.h5')]))
    random_args = command_line.parse_args(['--data-dir', str(data_dir), '--vgg-init', 'random'])
    assert resolve_weights(random_args) == (None, {'source': 'random'})


def test_vgg_init_imagenet_finds_keras_cache_or_downloads_with_its_checksum(tmp_path, monkeypatch):
    weights = tmp_path / 'served.h5'
    write_keras_h5(weights, THIN, seed=3)
    body = weights.read_bytes()
    monkeypatch.setattr(weight_sources, 'IMAGENET_MD5', hashlib.md5(body).hexdigest())
    with FileServer({'/vgg16.h5': body}) as server:
        monkeypatch.setattr(weight_sources, 'IMAGENET_URL', server.url + '/vgg16.h5')
        args = command_line.parse_args(['--data-dir', str(tmp_path / 'data'), '--vgg-init', 'imagenet'])
        vgg_dir, info = resolve_weights(args)
    assert info['converted_from'] == str(tmp_path / 'data' / weight_sources.KERAS_H5) and \
        weight_sources.vgg_is_complete(vgg_dir)
    assert (tmp_path / 'data' / weight_sources.KERAS_H5).read_bytes() == body

    keras_models = tmp_path / 'keras' / 'models'
    keras_models.mkdir(parents=True)
    os.replace(weights, keras_models / weight_sources.KERAS_H5)
    monkeypatch.setenv('KERAS_HOME', str(tmp_path / 'keras'))
    args = command_line.parse_args(['--data-dir', str(tmp_path / 'other'), '--vgg-init', 'imagenet', '--no-download'])
    assert resolve_weights(args)[1]['converted_from'] == str(keras_models / weight_sources.KERAS_H5)


def test_named_weights_are_used_or_refused_never_replaced(thin_vgg, tmp_path, capsys):
    assert resolve_weights(command_line.parse_args(['--vgg-dir', thin_vgg])) == (thin_vgg, {'source': 'udacity'})
    with pytest.raises(UserError, match='no such file'):
        resolve_weights(command_line.parse_args(['--imagenet-weights', str(tmp_path / 'missing.h5')]))
    with pytest.raises(SystemExit):
        command_line.parse_args(['--imagenet-weights', 'x.h5', '--vgg-init', 'udacity'])
    assert '--imagenet-weights is for --vgg-init imagenet' in capsys.readouterr().err
    with pytest.raises(UserError, match='not a file'):
        resolve_weights(command_line.parse_args(['--imagenet-weights', str(tmp_path)]))
    (tmp_path / 'not.h5').write_text('<html>404</html>')
    with pytest.raises(UserError, match='not.h5: cannot read it as an HDF5 file'):
        resolve_weights(command_line.parse_args(['--imagenet-weights', str(tmp_path / 'not.h5'),
                                              '--data-dir', str(tmp_path)]))
    assert sorted(os.listdir(tmp_path)) == ['not.h5']
