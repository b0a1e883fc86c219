"""The VGG16 encoder with the Udacity tensor names: built in code, imported from a `vgg16` SavedModel, saved as
one, and its weights restored (weights.py says where the weights come from).

The Udacity `vgg.zip` SavedModel exposes `image_input`, `keep_prob`, `layer3_out` (pool3), `layer4_out`
(pool4) and `layer7_out` (fc7 after dropout), takes raw 0-255 RGB pixels and keeps fc6/fc7 as convolutions.
This module builds the same graph so that the project can run without that download: with He-initialised
weights (the offline fallback), saved as a SavedModel that `main.load_vgg` loads like the real one (tests), or
filled with Keras' ImageNet VGG16 weights (weights.convert_keras_h5), a second source of the pretrained encoder.
"""
import json
import os

import tensorflow.compat.v1 as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import saved_model_pb2

from fcn8s.errors import UserError

TAG = 'vgg16'
# The Udacity model's tensors, which every encoder here has: its input, its dropout's keep probability, and the
# three outputs the decoder takes (pool3, pool4, fc7).
TENSOR_NAMES = ('image_input:0', 'keep_prob:0', 'layer3_out:0', 'layer4_out:0', 'layer7_out:0')
IMAGE_INPUT, KEEP_PROB, LAYER3_OUT, LAYER4_OUT, LAYER7_OUT = TENSOR_NAMES
OUTPUTS = TENSOR_NAMES[2:]
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


def op_name(tensor_name):
    """The name of the op whose output tensor_name ('name:0') is."""
    return tensor_name.split(':')[0]


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
        image_input = tf.placeholder(tf.float32, [None, None, None, 3], name=op_name(IMAGE_INPUT))
    if keep_prob is None:
        keep_prob = tf.placeholder_with_default(1.0, [], name=op_name(KEEP_PROB))
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
    layer3 = tf.identity(pools[2], name=op_name(LAYER3_OUT))
    layer4 = tf.identity(pools[3], name=op_name(LAYER4_OUT))
    layer7 = tf.identity(fc7, name=op_name(LAYER7_OUT))
    return image_input, keep_prob, layer3, layer4, layer7


def saved_model_encoder(export_dir):
    """encoder(images, keep_prob) -> (layer3, layer4, layer7): the `vgg16` SavedModel's graph imported onto
    variables that encoder creates with tf.get_variable (zero-initialised: restore_saved_model_weights fills
    them), where the SavedModel's loader would make variables of its own that no strategy can mirror.

    The graph is cut to what the three outputs need; each read of a SavedModel variable becomes a read of ours.
    Works for Udacity's SavedModel (reference variables) and this project's (resource variables) alike.
    """
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    meta = next(m for m in saved_model.meta_graphs if TAG in m.meta_info_def.tags)
    nodes = {node.name: node for node in meta.graph_def.node}
    variables = {name for name, node in nodes.items() if node.op in ('VariableV2', 'VarHandleOp')}
    graph_def = tf.graph_util.extract_sub_graph(meta.graph_def, [op_name(name) for name in OUTPUTS])
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
        input_map = {IMAGE_INPUT: images, KEEP_PROB: keep_prob}
        input_map.update({f'{read}:0': tf.identity(ours[variable]) for read, variable in reads.items()})
        input_map.update({f'{name}:0': tf.identity(ours[name]) for name in needed  # reference variables
                          if nodes[name].op == 'VariableV2'})
        return tf.import_graph_def(kept, input_map=input_map, return_elements=list(OUTPUTS), name='vgg16')
    return encoder


def own_channels(export_dir):
    """The widths (as CHANNELS) of the SavedModel in export_dir when this project wrote it (source.json: converted
    ImageNet weights, or a saved He-initialised encoder) and its checkpoint holds exactly build_vgg16's variables
    at those widths; None for any other SavedModel.

    Its graph is build_vgg16's, so training builds it in code with fc6/fc7 as matrix products and restores its
    weights (restore_saved_model_weights): a faster step than through its saved convolutions (docs/speed.md).
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


def save_encoder(sess, export_dir, info):
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
            save_encoder(sess, export_dir, info)
    return export_dir
