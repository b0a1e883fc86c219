"""Where the VGG16 encoder's weights come from: Udacity's pretrained SavedModel (vgg.zip, downloaded), Keras'
ImageNet VGG16 weights (an HDF5 file, downloaded, read and converted into a SavedModel of vgg.py's graph), or none
(a He-initialised encoder); resolve_weights chooses for the training flags.
"""
import os
import shutil
import tempfile

import h5py
import numpy as np
import tensorflow.compat.v1 as tf

from fcn8s import downloads, vgg
from fcn8s.errors import UserError, warn
from fcn8s.paths import IMAGENET_URL, KERAS_H5, VGG_URL

# Keras' ImageNet VGG16 weights (keras.applications), the legacy HDF5 file with the fully connected layers:
# one top-level group per Keras layer, mapped here to vgg.py's variable scopes in network order. Keras'
# last layer, `predictions` (the 1000 ImageNet classes), has no counterpart in the Udacity model.
KERAS_SCOPES = {**{f'block{block}_conv{i}': f'conv{block}_{i}' for block, depth in vgg.BLOCKS
                   for i in range(1, depth + 1)},
                'fc1': 'fc6', 'fc2': 'fc7'}


VGG_FILES = ('saved_model.pb', 'variables/variables.index', 'variables/variables.data-00000-of-00001')
# The checksum Keras publishes for that file (keras.applications.vgg16, `file_hash`); Keras gives an MD5, and no
# checksum is published for vgg.zip, which is checked as a zip (integrity, expected files).
IMAGENET_MD5 = '64373286793e3c8b2b4e3219cbf3544b'
WEIGHT_NAMES = {'udacity': "Udacity's pretrained VGG16", 'imagenet': "Keras' ImageNet VGG16"}


class ConversionError(ValueError):
    """The Keras weights file cannot be converted, or the SavedModel cannot be written; the message says why."""


def _read_layer(f, h5_path, layer):
    """(kernel, bias) of one Keras layer group as float32 arrays in Keras' shapes; checks ndim only."""
    group = f[layer]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get('weight_names', [])]
    if len(names) != 2:
        raise ConversionError(f'{h5_path}: layer {layer} holds {len(names)} weights, expected a kernel and a '
                              f'bias; is it a Keras VGG16 weights file ({KERAS_H5})?')
    # Keras lists kernel then bias; the names themselves changed between Keras versions.
    arrays = []
    for name in names:
        dataset = group.get(name)
        if not isinstance(dataset, h5py.Dataset):
            raise ConversionError(f'{h5_path}: weight {name} of layer {layer} is missing; the file is damaged, '
                                  f'download {KERAS_H5} again')
        try:
            arrays.append(np.asarray(dataset[()], np.float32))
        except (TypeError, ValueError) as e:
            raise ConversionError(f'{h5_path}: weight {name} of layer {layer} is not numeric ({e}); '
                                  f'is it {KERAS_H5}?') from e
    kernel, bias = arrays
    kernel_ndim = 2 if layer.startswith('fc') else 4
    if kernel.ndim != kernel_ndim or bias.ndim != 1:
        raise ConversionError(f'{h5_path}: layer {layer} has kernel {kernel.shape} and bias {bias.shape}, '
                              f'expected a {kernel_ndim}-D kernel and a 1-D bias; is it {KERAS_H5}?')
    return kernel, bias


def read_keras_h5(h5_path):
    """Read Keras' ImageNet VGG16 weights (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`) with h5py.

    Returns ({scope: (kernel, bias)}, channels): float32 kernels in vgg.py's shapes, conv{b}_{i}
    [3, 3, in, out], fc6 [7, 7, c5, c_fc], fc7 [1, 1, c_fc, c_fc], biases [out]; channels as in vgg.CHANNELS,
    read from the file so that thin files convert too. Raises ConversionError on any problem.
    """
    try:
        with h5py.File(h5_path, 'r') as f:
            missing = [layer for layer in KERAS_SCOPES if layer not in f]
            if missing == ['fc1', 'fc2']:
                raise ConversionError(f'{h5_path}: this is the notop file without the fully connected layers; '
                                      f'you need {KERAS_H5}')
            if missing:
                raise ConversionError(f'{h5_path}: layer(s) {", ".join(missing)} missing; it is not the Keras '
                                      f'VGG16 weights file {KERAS_H5}')
            weights = {layer: _read_layer(f, h5_path, layer) for layer in KERAS_SCOPES}
    except OSError as e:  # not HDF5, truncated, unreadable or absent
        raise ConversionError(f'{h5_path}: cannot read it as an HDF5 file ({e}); download {KERAS_H5} '
                              'again') from e
    # Every block's convolutions share the width of its first one, like vgg.build_vgg16's.
    channels = tuple(weights[f'block{block}_conv1'][0].shape[3] for block, _ in vgg.BLOCKS)
    channels += (weights['fc1'][0].shape[1],)
    in_channels = 3
    expected = {}
    for (block, depth), out_channels in zip(vgg.BLOCKS, channels):
        for i in range(1, depth + 1):
            expected[f'block{block}_conv{i}'] = (3, 3, in_channels, out_channels)
            in_channels = out_channels
    expected['fc1'] = (vgg.FC6_KERNEL * vgg.FC6_KERNEL * channels[4], channels[5])  # pool5 flattened, 7x7 at 224x224
    expected['fc2'] = (channels[5], channels[5])
    for layer, shape in expected.items():
        kernel, bias = weights[layer]
        if kernel.shape != shape or bias.shape != shape[-1:]:
            raise ConversionError(f'{h5_path}: layer {layer} has kernel {kernel.shape} and bias {bias.shape}, '
                                  f'expected {shape} and {shape[-1:]} to chain with the layers around it; '
                                  f'is it {KERAS_H5}?')
    # fc1 reads pool5 flattened channels-last, row (h * 7 + w) * c5 + c: row-major it is the 7x7 kernel.
    conv_shapes = {'fc1': (vgg.FC6_KERNEL, vgg.FC6_KERNEL, channels[4], channels[5]),
                   'fc2': (1, 1, channels[5], channels[5])}
    converted = {}
    for layer, scope in KERAS_SCOPES.items():
        kernel, bias = weights[layer]
        converted[scope] = (kernel.reshape(conv_shapes.get(layer, kernel.shape)), bias)
    return converted, channels


def convert_keras_h5(h5_path, export_dir, info=None):
    """Convert Keras' ImageNet VGG16 weights file into a `vgg16`-tagged SavedModel with the Udacity tensors.

    export_dir must not exist or be an empty folder: the model is written beside it and renamed into place
    only when complete. `info` (default: source 'imagenet' and the file's path) goes into source.json, see
    vgg.read_source. Returns export_dir; raises ConversionError on any problem and then leaves nothing behind.
    """
    if os.path.lexists(export_dir) and not (os.path.isdir(export_dir) and not os.listdir(export_dir)):
        raise ConversionError(f'{export_dir} already exists and is not an empty folder; it was left untouched: '
                              'choose another folder or move it away')
    if info is None:
        info = {'source': 'imagenet', 'converted_from': os.path.abspath(h5_path)}
    weights, channels = read_keras_h5(h5_path)
    graph = tf.Graph()
    with graph.as_default():
        vgg.build_vgg16(channels, fc_as_matmul=False)  # as vgg.save_vgg16's
        variables = {v.op.name: v for v in tf.global_variables()}
        parent = os.path.dirname(os.path.abspath(export_dir))
        staging = None
        try:
            os.makedirs(parent, exist_ok=True)
            staging = tempfile.mkdtemp(dir=parent, prefix='.vgg-convert-')
            model_dir = os.path.join(staging, 'vgg')  # made by the Builder, with the usual permissions
            with tf.Session(graph=graph) as sess:
                for scope, (kernel, bias) in weights.items():
                    # Feeding the initial value loads the weights without storing them as graph constants.
                    for name, value in (('weights', kernel), ('biases', bias)):
                        variable = variables[f'{scope}/{name}']
                        sess.run(variable.initializer, {variable.initial_value: value})
                vgg.save_encoder(sess, model_dir, info)
            if os.path.isdir(export_dir):
                os.rmdir(export_dir)  # empty (checked above); renaming onto it is not portable
            os.rename(model_dir, export_dir)
        except (OSError, tf.errors.OpError) as e:
            raise ConversionError(f'cannot write the SavedModel to {export_dir}: {e}') from e
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
    return export_dir


def vgg_is_complete(vgg_dir):
    return all(os.path.isfile(os.path.join(vgg_dir, f)) for f in VGG_FILES)


def vgg_instructions(data_dir, url=VGG_URL):
    return (f'To use the pretrained VGG16, download {url} by hand and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "vgg", "saved_model.pb")} exists.')


def maybe_download_pretrained_vgg(data_dir, url=VGG_URL):
    """Make sure data_dir/vgg holds Udacity's VGG16 SavedModel, downloading and extracting vgg.zip if not."""
    return downloads.download_folder(url, data_dir, 'vgg', 'a VGG16 SavedModel', VGG_FILES, vgg_is_complete,
                                     vgg_instructions(data_dir, url))


def keras_models_dir():
    """Keras' download cache (`$KERAS_HOME/models`, by default ~/.keras/models)."""
    return os.path.join(os.environ.get('KERAS_HOME') or os.path.join(os.path.expanduser('~'), '.keras'), 'models')


def imagenet_instructions(data_dir):
    return (f'To use the ImageNet VGG16 weights, download {IMAGENET_URL} by hand into {data_dir}/ or '
            f'{keras_models_dir()}/, or pass --imagenet-weights PATH.')


def maybe_download_imagenet_weights(data_dir, path=None, download_allowed=True):
    """The path of Keras' ImageNet VGG16 weights: `path` if given, else the copy in data_dir or in Keras' cache,
    else downloaded into data_dir from Keras' URL (checked against Keras' MD5)."""
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f'--imagenet-weights {path}: ' + ('not a file' if os.path.exists(path) else 'no such file'))
        return path
    for folder in (data_dir, keras_models_dir()):
        if os.path.isfile(os.path.join(folder, KERAS_H5)):
            return os.path.join(folder, KERAS_H5)
    if not download_allowed:
        raise UserError(f'{KERAS_H5} is in neither {data_dir} nor {keras_models_dir()} (--no-download)\n  '
                        + imagenet_instructions(data_dir))
    os.makedirs(data_dir, exist_ok=True)
    try:
        return downloads.download(IMAGENET_URL, os.path.join(data_dir, KERAS_H5), ('md5', IMAGENET_MD5))
    except UserError as e:
        raise UserError(f'{e}\n  {imagenet_instructions(data_dir)}') from None


def resolve_weights(data_dir, init='auto', vgg_dir=None, imagenet_weights=None, url=VGG_URL, download=True):
    """(VGG16 SavedModel folder, or None for a random encoder; weights info with 'source' in udacity, imagenet,
    random) for the flags --data-dir, --vgg-init, --vgg-dir, --imagenet-weights, --vgg-url and not --no-download.

    auto: whatever the folder holds, else udacity, then imagenet, then random, warning about each failure. A
    folder or file the user named never falls back, and a folder that holds something else is never written into.
    """
    named_dir, vgg_dir = vgg_dir, vgg_dir or os.path.join(data_dir, 'vgg')
    init = 'imagenet' if init == 'auto' and imagenet_weights else init  # a named file wins
    if init == 'random':
        return None, {'source': 'random'}
    if imagenet_weights:  # a file the user named: checked before anything else
        maybe_download_imagenet_weights(data_dir, imagenet_weights)
    if vgg_is_complete(vgg_dir):
        return vgg_dir, _complete_folder_source(vgg_dir, init, imagenet_weights)
    # Fail before any download on a folder that the converter or vgg.zip could not fill.
    downloads.refuse_incomplete(vgg_dir, 'a VGG16 SavedModel', VGG_FILES)
    if named_dir and init != 'imagenet':
        raise UserError(f'--vgg-dir {vgg_dir}: no VGG16 SavedModel there (needs {", ".join(VGG_FILES)}); leave '
                        '--vgg-dir out to download Udacity\'s into DATA_DIR/vgg')
    failures = []
    for source in ('udacity', 'imagenet') if init == 'auto' else (init,):
        try:
            if source == 'udacity':
                if not download:
                    raise UserError(f'no SavedModel in {vgg_dir} (--no-download)\n  '
                                    + vgg_instructions(data_dir, url))
                return maybe_download_pretrained_vgg(data_dir, url), {'source': 'udacity'}
            h5_path = maybe_download_imagenet_weights(data_dir, imagenet_weights, download)
            info = convert_imagenet_weights(h5_path, vgg_dir)
            if failures:
                warn('\n'.join(failures) + f'\nUsing the ImageNet VGG16 weights of {info["converted_from"]}.')
            return vgg_dir, info
        except UserError as e:
            if init != 'auto':
                raise
            failures.append(f'{WEIGHT_NAMES[source]} is not available: {e}')
    warn('\n'.join(failures) + '\nUsing a randomly initialised (He) VGG16 encoder: expect much weaker results '
         'than with pretrained weights. See docs/data-and-weights.md.')
    return None, {'source': 'random'}


def _complete_folder_source(vgg_dir, init, imagenet_weights):
    """The source info of the complete SavedModel in vgg_dir; UserError if it is not the one asked for."""
    info = vgg.read_source(vgg_dir) or {'source': 'udacity'}
    if init not in ('auto', info['source']):
        other = '' if imagenet_weights else f'use --vgg-init {info["source"]}, or '
        raise UserError(f'{vgg_dir} holds the {info["source"]} VGG16, not the {init} one: {other}choose another '
                        '--vgg-dir')
    if imagenet_weights and info.get('converted_from') != os.path.abspath(imagenet_weights):
        raise UserError(f'{vgg_dir} already holds the VGG16 converted from {info.get("converted_from")}: to convert '
                        f'{imagenet_weights}, choose another --vgg-dir or move {vgg_dir} away')
    return info


def convert_imagenet_weights(h5_path, vgg_dir):
    """Convert Keras' ImageNet VGG16 weights at h5_path into a SavedModel in vgg_dir; return its source info."""
    info = {'source': 'imagenet', 'converted_from': os.path.abspath(h5_path)}
    print(f'converting {h5_path} into the SavedModel {vgg_dir} (once; later runs load it)', flush=True)
    try:
        convert_keras_h5(h5_path, vgg_dir, info)
    except ConversionError as e:
        raise UserError(str(e)) from None
    return info
