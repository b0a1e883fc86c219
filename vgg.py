"""The VGG16 encoder with the Udacity tensor names, built from `tf.get_variable` and `tf.nn` ops.

The Udacity `vgg.zip` SavedModel exposes `image_input`, `keep_prob`, `layer3_out` (pool3), `layer4_out`
(pool4) and `layer7_out` (fc7 after dropout), takes raw 0-255 RGB pixels and keeps fc6/fc7 as convolutions.
This module builds the same graph so that the project can run without that download: with He-initialised
weights (the offline fallback), or saved as a SavedModel that `main.load_vgg` loads like the real one (tests).
"""
import tensorflow.compat.v1 as tf

TAG = 'vgg16'
# Caffe's ImageNet mean in BGR order: the ImageNet VGG16 weights expect mean-subtracted BGR input, and a
# randomly initialised encoder trains better on centred input too. The graph does this itself so that every
# encoder takes the Udacity model's raw 0-255 RGB pixels.
MEAN_BGR = (103.939, 116.779, 123.68)
# (block, convolutions in the block); channels per block below.
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
CHANNELS = (64, 128, 256, 512, 512, 4096)  # conv1..conv5, then fc6/fc7
FC6_KERNEL = 7  # fc6 is the 7x7x512x4096 fully connected layer of ImageNet VGG16, run as a convolution


def _conv_relu(x, out_channels, kernel, name, seed):
    """He-initialised convolution + ReLU, SAME padding, stride 1: [N, H, W, C] -> [N, H, W, out_channels]."""
    in_channels = x.shape[-1]
    with tf.variable_scope(name):
        weights = tf.get_variable(
            'weights', [kernel, kernel, in_channels, out_channels],
            initializer=tf.variance_scaling_initializer(2.0, 'fan_in', 'truncated_normal', seed=seed))
        biases = tf.get_variable('biases', [out_channels], initializer=tf.zeros_initializer())
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, weights, 1, 'SAME'), biases))


def _pool(x, name):
    """2x2 max pooling: [N, H, W, C] -> [N, H/2, W/2, C]."""
    return tf.nn.max_pool2d(x, 2, 2, 'SAME', name=name)


def build_vgg16(channels=CHANNELS, seed=0):
    """Build the encoder in the default graph; return (image_input, keep_prob, layer3, layer4, layer7).

    image_input [N, H, W, 3] raw RGB 0-255 -> layer3_out [N, H/8, W/8, c3] (pool3),
    layer4_out [N, H/16, W/16, c4] (pool4), layer7_out [N, H/32, W/32, c_fc] (fc7 after dropout).
    `channels` thins the network for tests; `seed` makes the He initialisation repeatable.
    """
    image_input = tf.placeholder(tf.float32, [None, None, None, 3], name='image_input')
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    x = tf.reverse(image_input, axis=[-1]) - tf.constant(MEAN_BGR, tf.float32)  # RGB -> mean-free BGR
    pools = []
    for (block, depth), out_channels in zip(BLOCKS, channels):
        for i in range(1, depth + 1):
            x = _conv_relu(x, out_channels, 3, f'conv{block}_{i}', seed + 10 * block + i)
        x = _pool(x, f'pool{block}')
        pools.append(x)
    fc6 = tf.nn.dropout(_conv_relu(x, channels[5], FC6_KERNEL, 'fc6', seed + 6), rate=1 - keep_prob)
    fc7 = tf.nn.dropout(_conv_relu(fc6, channels[5], 1, 'fc7', seed + 7), rate=1 - keep_prob)
    layer3 = tf.identity(pools[2], name='layer3_out')
    layer4 = tf.identity(pools[3], name='layer4_out')
    layer7 = tf.identity(fc7, name='layer7_out')
    return image_input, keep_prob, layer3, layer4, layer7


def save_vgg16(export_dir, channels=CHANNELS, seed=0):
    """Write a He-initialised encoder as a `vgg16`-tagged SavedModel in export_dir (must not exist)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        build_vgg16(channels, seed)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            builder = tf.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(sess, [TAG])
            builder.save()
    return export_dir

