"""The VGG16 encoder with the Udacity tensor names, and where its weights come from (Udacity's vgg.zip, Keras'
ImageNet weights converted, or He initialisation).

The Udacity `vgg.zip` SavedModel exposes `image_input`, `keep_prob`, `layer3_out` (pool3), `layer4_out`
(pool4) and `layer7_out` (fc7 after dropout), takes raw 0-255 RGB pixels and keeps fc6/fc7 as convolutions.
This module builds the same graph so that the project can run without that download: with He-initialised
weights (the offline fallback), saved as a SavedModel that `main.load_vgg` loads like the real one (tests), or
filled with Keras' ImageNet VGG16 weights (`convert_keras_h5`), a second source of the pretrained encoder.
"""
import json
import os
import shutil
import tempfile

import h5py
import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import saved_model_pb2

from fcn8s import downloads
from fcn8s.errors import UserError, warn
from fcn8s.paths import IMAGENET_URL, KERAS_H5, VGG_URL

TAG = 'vgg16'
# Caffe's ImageNet mean in BGR order: the ImageNet VGG16 weights expect mean-subtracted BGR input, and a
# randomly initialised encoder trains better on centred input too. The graph does this itself so that every
# encoder takes the Udacity model's raw 0-255 RGB pixels.
MEAN_BGR = (103.939, 116.779, 123.68)
# (block, convolutions in the block); channels per block below.
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
CHANNELS = (64, 128, 256, 512, 512, 4096)  # conv1..conv5, then fc6/fc7
FC6_KERNEL = 7  # fc6 is the 7x7x512x4096 fully connected layer of ImageNet VGG16, run as a convolution
# Provenance of a SavedModel's weights, beside the model: assets.extra holds files the graph does not load.
SOURCE_FILE = os.path.join('assets.extra', 'source.json')

# Keras' ImageNet VGG16 weights (keras.applications), the legacy HDF5 file with the fully connected layers:
# one top-level group per Keras layer, mapped here to this module's variable scopes in network order. Keras'
# last layer, `predictions` (the 1000 ImageNet classes), has no counterpart in the Udacity model.
KERAS_SCOPES = {**{f'block{block}_conv{i}': f'conv{block}_{i}' for block, depth in BLOCKS
                   for i in range(1, depth + 1)},
                'fc1': 'fc6', 'fc2': 'fc7'}


VGG_FILES = ('saved_model.pb', 'variables/variables.index', 'variables/variables.data-00000-of-00001')
# The checksum Keras publishes for that file (keras.applications.vgg16, `file_hash`); Keras gives an MD5, and no
# checksum is published for vgg.zip, which is checked as a zip (integrity, expected files).
IMAGENET_MD5 = '64373286793e3c8b2b4e3219cbf3544b'
WEIGHT_NAMES = {'udacity': "Udacity's pretrained VGG16", 'imagenet': "Keras' ImageNet VGG16"}


class ConversionError(ValueError):
    """The Keras weights file cannot be converted, or the SavedModel cannot be written; the message says why."""


def _conv_relu(x, out_channels, kernel, name, seed, as_matmul=False):
    """He-initialised convolution + ReLU, SAME padding, stride 1: [N, H, W, C] -> [N, H, W, out_channels].

    as_matmul computes the same convolution as one matrix product of the image patches [N*H*W, k*k*C] with the
    weights seen as [k*k*C, out] (the patches' order is the kernel's): for fc6 and fc7, whose weights are huge
    and whose maps are small, oneDNN then reads the weights as they are instead of laying them out anew at
    every call, forward and backward (docs/speed.md measures it).
    """
    in_channels = x.shape[-1]
    with tf.variable_scope(name):
        weights = tf.get_variable(
            'weights', [kernel, kernel, in_channels, out_channels],
            initializer=tf.variance_scaling_initializer(2.0, 'fan_in', 'truncated_normal', seed=seed))
        biases = tf.get_variable('biases', [out_channels], initializer=tf.zeros_initializer())
        if not as_matmul:
            return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, weights, 1, 'SAME'), biases))
        patches = x if kernel == 1 else tf.image.extract_patches(x, [1, kernel, kernel, 1], [1, 1, 1, 1],
                                                                 [1, 1, 1, 1], 'SAME')
        rows = tf.matmul(tf.reshape(patches, [-1, kernel * kernel * in_channels]),
                         tf.reshape(weights, [-1, out_channels]))
        shape = tf.concat([tf.shape(x)[:3], [out_channels]], axis=0)
        return tf.nn.relu(tf.nn.bias_add(tf.reshape(rows, shape), biases))


def _pool(x, name):
    """2x2 max pooling: [N, H, W, C] -> [N, H/2, W/2, C]."""
    return tf.nn.max_pool2d(x, 2, 2, 'SAME', name=name)


def build_vgg16(channels=CHANNELS, seed=0, fc_as_matmul=True, image_input=None, keep_prob=None):
    """Build the encoder in the default graph; return (image_input, keep_prob, layer3, layer4, layer7).

    image_input [N, H, W, 3] raw RGB 0-255 -> layer3_out [N, H/8, W/8, c3] (pool3),
    layer4_out [N, H/16, W/16, c4] (pool4), layer7_out [N, H/32, W/32, c_fc] (fc7 after dropout).
    `channels` thins the network for tests; `seed` makes the He initialisation repeatable. fc_as_matmul runs
    fc6/fc7 as matrix products of patches (faster to train, see _conv_relu); False keeps them convolutions, as
    inference graphs want (TFLite has no patch extraction, and constant weights are laid out once anyway).
    image_input and keep_prob are placeholders named as Udacity's unless given (each replica's share of a batch).
    """
    if image_input is None:
        image_input = tf.placeholder(tf.float32, [None, None, None, 3], name='image_input')
    if keep_prob is None:
        keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    x = tf.reverse(image_input, axis=[-1]) - tf.constant(MEAN_BGR, tf.float32)  # RGB -> mean-free BGR
    pools = []
    for (block, depth), out_channels in zip(BLOCKS, channels):
        for i in range(1, depth + 1):
            x = _conv_relu(x, out_channels, 3, f'conv{block}_{i}', seed + 10 * block + i)
        x = _pool(x, f'pool{block}')
        pools.append(x)
    fc6 = tf.nn.dropout(_conv_relu(x, channels[5], FC6_KERNEL, 'fc6', seed + 6, fc_as_matmul),
                        rate=1 - keep_prob)
    fc7 = tf.nn.dropout(_conv_relu(fc6, channels[5], 1, 'fc7', seed + 7, fc_as_matmul), rate=1 - keep_prob)
    layer3 = tf.identity(pools[2], name='layer3_out')
    layer4 = tf.identity(pools[3], name='layer4_out')
    layer7 = tf.identity(fc7, name='layer7_out')
    return image_input, keep_prob, layer3, layer4, layer7


def saved_model_encoder(export_dir):
    """encoder(images, keep_prob) -> (layer3, layer4, layer7): the `vgg16` SavedModel's graph imported onto
    variables that encoder creates with tf.get_variable (zero-initialised: restore_saved_model_weights fills
    them), where the SavedModel's loader would make variables of its own that no strategy can mirror.

    The graph is cut to what the three outputs need; each read of a SavedModel variable becomes a read of ours.
    Works for Udacity's SavedModel (reference variables) and this module's (resource variables) alike.
    """
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    meta = next(m for m in saved_model.meta_graphs if TAG in m.meta_info_def.tags)
    nodes = {node.name: node for node in meta.graph_def.node}
    variables = {name for name, node in nodes.items() if node.op in ('VariableV2', 'VarHandleOp')}
    outputs = ['layer3_out', 'layer4_out', 'layer7_out']
    graph_def = tf.graph_util.extract_sub_graph(meta.graph_def, outputs)
    reads = {node.name: node.input[0] for node in graph_def.node  # resource variables: read through ReadVariableOp
             if node.op == 'ReadVariableOp' and node.input[0] in variables}
    # Sorted: every worker must create the variables in the same order (their collectives pair up by it).
    needed = sorted(variables & {node.name for node in graph_def.node})
    kept = tf.GraphDef(versions=graph_def.versions, library=graph_def.library)
    kept.node.extend(node for node in graph_def.node if node.name not in variables and node.name not in reads)
    trainable = {v.variable_name.split(':')[0] for v in _variable_defs(meta, 'trainable_variables')}

    def encoder(images, keep_prob):
        ours = {name: tf.get_variable(name, tf.TensorShape(nodes[name].attr['shape'].shape),
                                      tf.as_dtype(nodes[name].attr['dtype'].type), tf.zeros_initializer(),
                                      trainable=name in trainable) for name in needed}
        input_map = {'image_input:0': images, 'keep_prob:0': keep_prob}
        input_map.update({f'{read}:0': tf.identity(ours[variable]) for read, variable in reads.items()})
        input_map.update({f'{name}:0': tf.identity(ours[name]) for name in needed  # reference variables
                          if nodes[name].op == 'VariableV2'})
        return tf.import_graph_def(kept, input_map=input_map, return_elements=[f'{o}:0' for o in outputs],
                                   name='vgg16')
    return encoder


def own_channels(export_dir):
    """The widths (as CHANNELS) of the SavedModel in export_dir when this module wrote it (source.json: converted
    ImageNet weights, or a saved He-initialised encoder) and its checkpoint holds exactly build_vgg16's variables
    at those widths; None for any other SavedModel.

    Its graph is build_vgg16's, so training builds it in code with fc6/fc7 as matrix products and restores its
    weights (restore_saved_model_weights): a step 2.2-2.5x as fast as through its saved convolutions (docs/speed.md).
    Udacity's SavedModel keeps its own graph.
    """
    info = read_source(export_dir)
    if info is None or info['source'] not in ('imagenet', 'random'):
        return None
    try:
        saved = dict(tf.train.list_variables(os.path.join(export_dir, 'variables', 'variables')))
        channels = tuple(saved[f'conv{block}_1/weights'][-1] for block, _ in BLOCKS) + (saved['fc6/weights'][-1],)
    except (tf.errors.OpError, KeyError):
        return None  # damaged: loading its own graph says how
    with tf.Graph().as_default():
        build_vgg16(channels, fc_as_matmul=False)
        built = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    return channels if built == saved else None


def _variable_defs(meta, collection):
    """The VariableDef protos of a MetaGraphDef's collection."""
    defs = []
    for raw in meta.collection_def[collection].bytes_list.value:
        variable = variable_pb2.VariableDef()
        variable.ParseFromString(raw)
        defs.append(variable)
    return defs


def restore_saved_model_weights(sess, export_dir):
    """Fill the default graph's variables named as the `vgg16` SavedModel's (saved_model_encoder's) with its
    weights; a strategy's Saver fills every replica's copy."""
    checkpoint = os.path.join(export_dir, 'variables', 'variables')
    try:
        names = {name for name, _ in tf.train.list_variables(checkpoint)}
        tf.train.Saver([v for v in tf.global_variables() if v.op.name in names]).restore(sess, checkpoint)
    except tf.errors.OpError as e:
        raise UserError(f'{export_dir}: its weights (variables/) cannot be read, the folder may be damaged: '
                        f'{e.message.splitlines()[0]}') from None


def _save(sess, export_dir, info):
    """Write sess's graph and variables as a `vgg16`-tagged SavedModel in export_dir (must not exist or be
    empty), and `info`, a JSON-serialisable dict saying where the weights come from, unless it is None."""
    builder = tf.saved_model.Builder(export_dir)
    builder.add_meta_graph_and_variables(sess, [TAG])
    builder.save()
    if info is not None:
        path = os.path.join(export_dir, SOURCE_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(info, f, indent=2)


def read_source(export_dir):
    """The `info` dict saved with the SavedModel in export_dir, or None when there is none or it is unreadable."""
    try:
        with open(os.path.join(export_dir, SOURCE_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get('source'), str) else None


def save_vgg16(export_dir, channels=CHANNELS, seed=0, info=None):
    """Write a He-initialised encoder as a `vgg16`-tagged SavedModel in export_dir (must not exist), with
    `info` as its source.json when given. Its fc6/fc7 are convolutions, like Udacity's: a SavedModel must also
    export to TFLite."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        build_vgg16(channels, seed, fc_as_matmul=False)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            _save(sess, export_dir, info)
    return export_dir


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

    Returns ({scope: (kernel, bias)}, channels): float32 kernels in this module's shapes, conv{b}_{i}
    [3, 3, in, out], fc6 [7, 7, c5, c_fc], fc7 [1, 1, c_fc, c_fc], biases [out]; channels as in CHANNELS,
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
    # Every block's convolutions share the width of its first one, like build_vgg16's.
    channels = tuple(weights[f'block{block}_conv1'][0].shape[3] for block, _ in BLOCKS)
    channels += (weights['fc1'][0].shape[1],)
    in_channels = 3
    expected = {}
    for (block, depth), out_channels in zip(BLOCKS, channels):
        for i in range(1, depth + 1):
            expected[f'block{block}_conv{i}'] = (3, 3, in_channels, out_channels)
            in_channels = out_channels
    expected['fc1'] = (FC6_KERNEL * FC6_KERNEL * channels[4], channels[5])  # pool5 flattened, 7x7 at 224x224
    expected['fc2'] = (channels[5], channels[5])
    for layer, shape in expected.items():
        kernel, bias = weights[layer]
        if kernel.shape != shape or bias.shape != shape[-1:]:
            raise ConversionError(f'{h5_path}: layer {layer} has kernel {kernel.shape} and bias {bias.shape}, '
                                  f'expected {shape} and {shape[-1:]} to chain with the layers around it; '
                                  f'is it {KERAS_H5}?')
    # fc1 reads pool5 flattened channels-last, row (h * 7 + w) * c5 + c: row-major it is the 7x7 kernel.
    conv_shapes = {'fc1': (FC6_KERNEL, FC6_KERNEL, channels[4], channels[5]), 'fc2': (1, 1, channels[5], channels[5])}
    converted = {}
    for layer, scope in KERAS_SCOPES.items():
        kernel, bias = weights[layer]
        converted[scope] = (kernel.reshape(conv_shapes.get(layer, kernel.shape)), bias)
    return converted, channels


def convert_keras_h5(h5_path, export_dir, info=None):
    """Convert Keras' ImageNet VGG16 weights file into a `vgg16`-tagged SavedModel with the Udacity tensors.

    export_dir must not exist or be an empty folder: the model is written beside it and renamed into place
    only when complete. `info` (default: source 'imagenet' and the file's path) goes into source.json, see
    read_source. Returns export_dir; raises ConversionError on any problem and then leaves nothing behind.
    """
    if os.path.lexists(export_dir) and not (os.path.isdir(export_dir) and not os.listdir(export_dir)):
        raise ConversionError(f'{export_dir} already exists and is not an empty folder; it was left untouched: '
                              'choose another folder or move it away')
    if info is None:
        info = {'source': 'imagenet', 'converted_from': os.path.abspath(h5_path)}
    weights, channels = read_keras_h5(h5_path)
    graph = tf.Graph()
    with graph.as_default():
        build_vgg16(channels, fc_as_matmul=False)  # as save_vgg16's
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
                _save(sess, model_dir, info)
            if os.path.isdir(export_dir):
                os.rmdir(export_dir)  # empty (checked above); renaming onto it is not portable
            os.rename(model_dir, export_dir)
        except (OSError, tf.errors.OpError) as e:
            raise ConversionError(f'cannot write the SavedModel to {export_dir}: {e}') from e
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
    return export_dir


# ------------------------------------------------------------------------------------------ weight sources

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
    info = read_source(vgg_dir) or {'source': 'udacity'}
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
