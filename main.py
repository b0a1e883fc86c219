"""FCN-8s road segmentation on KITTI Road, TensorFlow 1.x style (graph, placeholders, Session).

`python main.py` trains on KITTI Road with Udacity's pretrained VGG16 and writes road overlays of the test
images to runs/<timestamp>/. Without KITTI or the weights (offline), it says so, trains on generated road scenes
with a randomly initialised VGG16 instead, and records that in the run's config.json.
"""
import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import time
import zipfile

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

import helper
import inference
import metrics
import plots
import synthetic
import vgg

tf.disable_eager_execution()

NUM_CLASSES = metrics.NUM_CLASSES
VGG_TENSOR_NAMES = ('image_input:0', 'keep_prob:0', 'layer3_out:0', 'layer4_out:0', 'layer7_out:0')
# FCN-8s "at once" (Long, Shelhamer, Darrell): the skips are scaled so that pool3/pool4 activations, much larger
# than fc7's, do not swamp the fused scores at the start of training.
POOL4_SCALE = 0.01
POOL3_SCALE = 0.0001
# (kernel, stride) of the three transposed convolutions; kernel = 2 x stride makes bilinear upsampling exact.
UPSCORE2 = (4, 2)
UPSCORE_POOL4 = (4, 2)
UPSCORE8 = (16, 8)
# Score layers start near zero, as in FCN (zero-initialised scoring layers), with a little noise to break
# symmetry: stddev 0.01 / sqrt(fan_in), so that initial logits stay small whatever the encoder's activation
# scale. (A He-initialised VGG16's fc7 has an RMS near 50 on road images: a fixed stddev of 0.01 started the
# logits near +-30 and the first loss above 10.)
SCORE_INIT_GAIN = 0.01
# Weight decay on the new layers, as the classic tf.contrib l2_regularizer(scale): scale * sum(w^2) / 2.
L2_SCALE = 1e-3

# Adam's first steps are sign steps of size learning_rate on every weight: on fc6 (fan-in 25088) that moves
# pre-activations by several times their own scale, and the loss went from 0.85 to ~100 on the second step.
# A linear warm-up of the learning rate over the first steps avoids it. After it, DeepLab's "poly" decay.
WARMUP_STEPS = 50
POLY_POWER = 0.9

# The recommended settings per data source; a flag the user sets wins. The README explains the choices.
RECIPES = {
    'kitti': dict(image_shape=(160, 576), epochs=30, batch_size=4, learning_rate=1e-4, keep_prob=0.5),
    'synthetic': dict(image_shape=(96, 320), epochs=4, batch_size=2, learning_rate=3e-4, keep_prob=1.0,
                      num_train=270, num_test=30),
}
SYNTHETIC_DIR = 'synthetic_road'
LAST_CHECKPOINT, BEST_CHECKPOINT = 'checkpoints/last', 'checkpoints/best'  # inside the run folder
SERVING_DIR = 'saved_model'  # inside the run folder: the best model with a serving signature
VGG_INITS = ('auto', 'udacity', 'imagenet', 'random')
WEIGHT_NAMES = {'udacity': "Udacity's pretrained VGG16", 'imagenet': "Keras' ImageNet VGG16"}


# ------------------------------------------------------------------------------------------------- network

def load_vgg(sess, vgg_path):
    """Load the `vgg16`-tagged SavedModel at vgg_path into sess's graph.

    Returns (image_input [N, H, W, 3], keep_prob [], layer3_out [N, H/8, W/8, 256],
    layer4_out [N, H/16, W/16, 512], layer7_out [N, H/32, W/32, 4096]).
    """
    tf.saved_model.loader.load(sess, [vgg.TAG], vgg_path)
    return vgg_tensors(sess.graph)


def vgg_tensors(graph):
    """The five Udacity VGG tensors of graph, by name."""
    return tuple(graph.get_tensor_by_name(name) for name in VGG_TENSOR_NAMES)


def bilinear_kernel(kernel, channels):
    """Transposed-convolution weights [kernel, kernel, channels, channels] that upsample each channel
    bilinearly (FCN's `upsample_filt`), channel i feeding only channel i."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel, :kernel]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    weights = np.zeros((kernel, kernel, channels, channels), np.float32)
    for c in range(channels):
        weights[:, :, c, c] = filt
    return weights


def _regularized_variable(name, shape, initializer):
    """A new layer's variable whose L2 penalty goes to the REGULARIZATION_LOSSES collection."""
    var = tf.get_variable(name, shape, initializer=initializer)
    tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES, L2_SCALE * tf.nn.l2_loss(var))
    return var


def score(x, num_classes, name):
    """1x1 convolution to class scores: [N, h, w, C] -> [N, h, w, num_classes]."""
    with tf.variable_scope(name):
        weights = _regularized_variable('weights', [1, 1, x.shape[-1], num_classes],
                                        tf.variance_scaling_initializer(SCORE_INIT_GAIN ** 2, 'fan_in',
                                                                        'truncated_normal'))
        biases = tf.get_variable('biases', [num_classes], initializer=tf.zeros_initializer())
        return tf.nn.bias_add(tf.nn.conv2d(x, weights, 1, 'SAME'), biases)


def upscore(x, output_hw, kernel, stride, name):
    """Transposed convolution, initialised as bilinear upsampling: [N, h, w, K] -> [N, output_hw, K]."""
    num_classes = int(x.shape[-1])
    with tf.variable_scope(name):
        weights = _regularized_variable('weights', [kernel, kernel, num_classes, num_classes],
                                        tf.constant_initializer(bilinear_kernel(kernel, num_classes)))
        output_shape = tf.stack([tf.shape(x)[0], output_hw[0], output_hw[1], num_classes])
        y = tf.nn.conv2d_transpose(x, weights, output_shape, stride, 'SAME')
        y.set_shape([None, None, None, num_classes])
        return y


def _spatial_shape(x):
    """(H, W) of [N, H, W, C], as Python ints where static so that static shapes propagate."""
    static, dynamic = x.shape.as_list(), tf.shape(x)
    return [static[i] if static[i] is not None else dynamic[i] for i in (1, 2)]


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes):
    """FCN-8s decoder on the VGG16 encoder.

    pool3 [N, H/8, W/8, 256], pool4 [N, H/16, W/16, 512], fc7 [N, H/32, W/32, 4096] -> [N, H, W, num_classes].
    H and W must be multiples of 32.
    """
    score_fr = score(vgg_layer7_out, num_classes, 'score_fr')                      # [N, H/32, W/32, K]
    scale_pool4 = tf.multiply(vgg_layer4_out, POOL4_SCALE, name='scale_pool4')
    score_pool4 = score(scale_pool4, num_classes, 'score_pool4')                   # [N, H/16, W/16, K]
    upscore2 = upscore(score_fr, _spatial_shape(score_pool4), *UPSCORE2, 'upscore2')
    fuse_pool4 = tf.add(upscore2, score_pool4, name='fuse_pool4')                  # [N, H/16, W/16, K]
    scale_pool3 = tf.multiply(vgg_layer3_out, POOL3_SCALE, name='scale_pool3')
    score_pool3 = score(scale_pool3, num_classes, 'score_pool3')                   # [N, H/8, W/8, K]
    upscore_pool4 = upscore(fuse_pool4, _spatial_shape(score_pool3), *UPSCORE_POOL4, 'upscore_pool4')
    fuse_pool3 = tf.add(upscore_pool4, score_pool3, name='fuse_pool3')             # [N, H/8, W/8, K]
    h, w = _spatial_shape(fuse_pool3)
    output_hw = [h * UPSCORE8[1], w * UPSCORE8[1]]
    return tf.identity(upscore(fuse_pool3, output_hw, *UPSCORE8, 'upscore8'), name='upscore8_out')


def optimize(nn_last_layer, correct_label, learning_rate, num_classes):
    """Loss and Adam training op.

    nn_last_layer [N, H, W, K], correct_label [N, H, W, K] one-hot (all zeros = invalid pixel) ->
    (logits [N*H*W, K], train_op, cross_entropy_loss): the loss is the mean cross-entropy over valid pixels
    only; the train op minimises it plus the L2 weight decay of the new layers.
    """
    logits = tf.reshape(nn_last_layer, [-1, num_classes], name='logits')
    labels = tf.reshape(correct_label, [-1, num_classes])
    valid = tf.reduce_sum(labels, axis=1)  # 1 for a labelled pixel, 0 for KITTI's black invalid area
    pixel_loss = tf.nn.softmax_cross_entropy_with_logits_v2(labels=labels, logits=logits)
    cross_entropy_loss = tf.divide(tf.reduce_sum(pixel_loss * valid), tf.maximum(tf.reduce_sum(valid), 1.0),
                                   name='cross_entropy_loss')
    regularization = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)
    total_loss = cross_entropy_loss + tf.add_n(regularization) if regularization else cross_entropy_loss
    train_op = tf.train.AdamOptimizer(learning_rate).minimize(
        total_loss, global_step=tf.train.get_or_create_global_step(), name='train_op')
    return logits, train_op, cross_entropy_loss


# ------------------------------------------------------------------------------------------------ training

def learning_rate_at(step, total_steps, base, warmup_steps=WARMUP_STEPS):
    """Learning rate of step 1..total_steps: linear warm-up, then base * (1 - progress) ** POLY_POWER."""
    warmup = min(1.0, step / max(warmup_steps, 1))
    progress = (step - 1) / total_steps if total_steps else 0.0
    return base * warmup * (1.0 - progress) ** POLY_POWER


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5, learning_rate_value=1e-4,
             validate_fn=None, on_epoch_end=None, start_step=0, history=None, patience=None, on_step=None):
    """Train for `epochs` passes over get_batches_fn(batch_size); return one dict per epoch.

    To resume, start_step is the number of steps already taken and history the records of the finished epochs:
    training goes on in the middle of the epoch where it stopped, skipping the batches that epoch already had
    (get_batches_fn must then yield that epoch's batches in the same order, as gen_batch_function's first_epoch).

    The learning rate fed follows learning_rate_at (warm-up, then poly decay when the number of steps is known).
    validate_fn() -> dict of validation figures (e.g. val_max_f), printed and recorded after each epoch;
    on_epoch_end(history) is called after each epoch (to save metrics as training goes). A NaN or infinite
    loss stops training with a UserError naming the step. With patience N, training stops early once
    validation MaxF has not improved for N epochs. on_step(step, loss) is called after every step.
    """
    history, step = list(history or []), start_step
    num_images = getattr(get_batches_fn, 'num_images', None)
    num_batches = -(-num_images // batch_size) if num_images else None
    total_steps = num_batches * epochs if num_batches else None
    first_epoch, skip = divmod(start_step, num_batches) if start_step else (0, 0)
    for epoch in range(first_epoch + 1, epochs + 1):
        start, losses = time.time(), []
        done = skip if epoch == first_epoch + 1 else 0  # batches this epoch had before the run stopped
        batches = helper.prefetch(itertools.islice(get_batches_fn(batch_size), done, None))
        bar = tqdm(batches, total=num_batches, initial=done,
                   desc=f'epoch {epoch}/{epochs}', leave=False)
        try:
            for images, labels in bar:
                feed = {input_image: images, correct_label: labels, keep_prob: keep_prob_value}
                step += 1
                if learning_rate is not None:
                    feed[learning_rate] = learning_rate_at(step, total_steps, learning_rate_value)
                _, loss = sess.run([train_op, cross_entropy_loss], feed)
                if not np.isfinite(loss):
                    bar.close()
                    raise helper.UserError(f'the training loss became {loss} at step {step} (epoch {epoch}): '
                                           'training stopped. Start a new run with a lower --learning-rate.')
                losses.append(float(loss))
                bar.set_postfix(loss=f'{np.mean(losses):.4f}')
                if on_step is not None:
                    on_step(step, float(loss))
        finally:
            batches.close()  # stops the producer thread, also on an error or Ctrl-C
        record = {'epoch': epoch, 'loss': float(np.mean(losses)) if losses else float('nan')}
        if validate_fn is not None:
            record.update(validate_fn())
        record['seconds'] = round(time.time() - start, 1)
        history.append(record)
        print(' '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in record.items()
                       if not isinstance(v, (dict, list))),
              flush=True)
        if patience and validate_fn is not None:
            best = max(history, key=max_f_key)
            record['early_stop'] = epoch - best['epoch'] >= patience
        if on_epoch_end is not None:
            on_epoch_end(history)
        if record.get('early_stop'):
            print(f'early stop: validation MaxF has not improved for {patience} epoch(s) since epoch '
                  f'{best["epoch"]}', flush=True)
            break
    return history


def max_f_key(record):
    """A record's validation MaxF for comparisons, -inf when missing or not finite (nan never wins a max)."""
    value = record.get('val_max_f')
    return value if value is not None and np.isfinite(value) else -np.inf


def make_validate_fn(sess, logits, cross_entropy_loss, keep_prob, input_image, correct_label, examples,
                     image_shape):
    """validate_fn for train_nn on examples [(name, uint8 image [h, w, 3], int8 classes [h, w])].

    The loss is taken at the network's input size (mean over images); the KITTI scores at each image's own size,
    the road probability resized back to it, counts pooled per category (metrics.kitti_table). The record also
    holds the pooled [2, LEVELS] counts (val_counts), from which every curve follows.
    """
    road_prob = helper.road_probability(logits)
    # Resized once: validation runs every epoch on the same images.
    inputs = [(helper.resize_image(image, image_shape)[None].astype(np.float32),
               helper.one_hot(helper.resize_nearest(classes, image_shape))[None]) for _, image, classes in examples]

    def validate_fn():
        hists, losses = {}, []
        for (name, image, classes), (net_image, net_label) in zip(examples, inputs):
            prob, loss = sess.run([road_prob, cross_entropy_loss],
                                  {input_image: net_image, correct_label: net_label, keep_prob: 1.0})
            prob = helper.resize_probability(prob.reshape(image_shape), image.shape[:2])
            hist = metrics.fast_hist(classes, metrics.confidence(prob), NUM_CLASSES, metrics.LEVELS)
            hists[helper.category(name)] = hists.get(helper.category(name), 0) + hist
            losses.append(float(loss))
            shown = {helper.category(n) for n in validate_fn.samples}
            if name in validate_fn.samples or helper.category(name) not in shown:
                validate_fn.samples[name] = helper.overlay(image, prob)
        table = metrics.kitti_table(hists)
        counts = {cat: hist.tolist() for cat, hist in sorted(hists.items())}
        counts['all'] = sum(hists.values()).tolist()
        return {'val_loss': float(np.mean(losses)), 'val_iou_at_0.5': table['all']['iou_at_0.5'],
                'val_max_f': table['all']['max_f'], 'val_road_recall': table['all']['recall_at_0.5'],
                'val_non_road_as_road': table['all']['fpr_at_0.5'], 'val_kitti': table, 'val_counts': counts}

    validate_fn.samples = {}  # {name: overlay} of the first example of each category, from the last call
    return validate_fn


def format_kitti_table(table):
    """KITTI scores per category as a text table, in percent like the benchmark's."""
    columns = ('max_f', 'ap', 'precision', 'recall', 'fpr', 'fnr', 'iou', 'iou_at_0.5')
    lines = [f'{"":8}' + ''.join(f'{c:>11}' for c in ('MaxF', 'AP', 'PRE', 'REC', 'FPR', 'FNR', 'IoU', 'IoU@0.5'))
             + '  threshold  Udacity bar']
    for cat, scores in table.items():
        lines.append(f'{cat:8}' + ''.join(f'{100 * scores[c]:11.2f}' for c in columns)
                     + f'{scores["threshold"]:11.3f}  ' + ('pass' if scores['udacity_pass'] else 'fail'))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train FCN-8s (VGG16) road segmentation on KITTI Road and write road overlays of the test '
                    'images. Offline, without KITTI or the VGG16 weights, it trains on generated road scenes '
                    'with a randomly initialised VGG16 instead (and says so). Every run writes a new folder '
                    'RUNS_DIR/<YYYYmmdd-HHMMSS>/ with the overlays, KITTI confidence maps, checkpoints, '
                    'config.json and metrics.json. Other commands, each with --help: `python main.py evaluate` '
                    'scores a trained run, `python main.py optimize` makes fast inference models of it, '
                    '`python main.py infer` segments images or a video.')
    k, s = RECIPES['kitti'], RECIPES['synthetic']
    parser.add_argument('--data-dir', default='data',
                        help='holds vgg/ (pretrained VGG16) and data_road/ (KITTI Road) [default: data]')
    parser.add_argument('--dataset', help='a KITTI-layout folder (training/image_2, training/gt_image_2, '
                                          'testing/image_2) [default: DATA_DIR/data_road]')
    parser.add_argument('--vgg-dir', help='folder of the VGG16 SavedModel: Udacity\'s, or the one converted '
                                          'from ImageNet weights [default: DATA_DIR/vgg]')
    parser.add_argument('--vgg-init', choices=VGG_INITS, default='auto',
                        help='encoder weights: "udacity" = Udacity\'s SavedModel in VGG_DIR (vgg.zip downloaded '
                             'if missing); "imagenet" = Keras\' ImageNet VGG16 weights converted into VGG_DIR; '
                             '"random" = He initialisation (no pretraining: much weaker); "auto" = whatever '
                             'VGG_DIR holds, else udacity, then imagenet, then random, saying which [default: auto]')
    parser.add_argument('--imagenet-weights', metavar='PATH',
                        help=f'Keras\' {vgg.KERAS_H5} (with the fully connected layers) for '
                             '--vgg-init imagenet; implies it under auto [default: DATA_DIR, then Keras\' cache '
                             '~/.keras/models, then download]')
    parser.add_argument('--vgg-url', default=helper.VGG_URL,
                        help='where to download Udacity\'s vgg.zip from [default: %(default)s]')
    parser.add_argument('--kitti-url', default=helper.KITTI_URL,
                        help='where to download KITTI Road\'s data_road.zip from [default: %(default)s]')
    parser.add_argument('--runs-dir', default='runs',
                        help='each run writes a new RUNS_DIR/<timestamp>/ folder [default: runs]')
    parser.add_argument('--epochs', type=int,
                        help=f'passes over the training split [default: {k["epochs"]} on KITTI, '
                             f'{s["epochs"]} on the synthetic fallback]')
    parser.add_argument('--batch-size', type=int,
                        help=f'images per step [default: {k["batch_size"]}; {s["batch_size"]} synthetic]')
    parser.add_argument('--learning-rate', type=float,
                        help=f'peak Adam learning rate: a {WARMUP_STEPS}-step linear warm-up, then poly decay '
                             f'[default: {k["learning_rate"]:g}; {s["learning_rate"]:g} synthetic]')
    parser.add_argument('--keep-prob', type=float,
                        help=f'dropout keep probability of fc6/fc7 during training [default: {k["keep_prob"]}; '
                             f'{s["keep_prob"]} synthetic]')
    parser.add_argument('--image-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='network input size, multiples of 32; images are resized to it and predictions '
                             'back to each image\'s own size [default: 160 576; 96 320 synthetic]')
    parser.add_argument('--val-fraction', type=float, default=0.1,
                        help='fraction of each category (um/umm/uu) held out for validation, never trained '
                             'on [default: 0.1]')
    parser.add_argument('--seed', type=int, default=0,
                        help='seeds the split, shuffling and initialisation [default: 0]')
    parser.add_argument('--patience', type=int,
                        help='stop early when validation MaxF has not improved for this many epochs '
                             '[default: off, train all epochs]')
    parser.add_argument('--no-augment', action='store_true',
                        help='train on the images as they are: no random flip, zoom, brightness, contrast or '
                             'gamma (validation is never augmented)')
    parser.add_argument('--precision', choices=('fp32', 'bf16'), default='fp32',
                        help='training arithmetic: bf16 = oneDNN bfloat16 auto mixed precision (weights and '
                             'updates stay fp32), on CPUs with AVX512_BF16 or AMX only [default: fp32]')
    parser.add_argument('--no-download', action='store_true',
                        help='never use the network: missing weights or KITTI fall back at once to what is on '
                             'disk')
    parser.add_argument('--resume', metavar='RUN_DIR',
                        help='continue the stopped run in RUN_DIR from its last checkpoint, with its data, split '
                             'and settings (no other flag may be given)')
    args = parser.parse_args(argv)
    if args.resume:
        given = [f'--{k.replace("_", "-")}' for k, v in vars(args).items()
                 if k != 'resume' and v != parser.get_default(k)]
        if given:
            parser.error(f'--resume continues a run with its own settings: drop {" ".join(given)}')
    if args.image_shape and any(d <= 0 or d % 32 for d in args.image_shape):
        parser.error(f'--image-shape {args.image_shape[0]} {args.image_shape[1]}: both must be positive '
                     'multiples of 32 (the encoder halves the size five times)')
    for name in ('epochs', 'batch_size'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.patience is not None and args.patience < 1:
        parser.error('--patience must be at least 1')
    if args.keep_prob is not None and not 0 < args.keep_prob <= 1:
        parser.error('--keep-prob must be in (0, 1]')
    if not 0 < args.val_fraction < 1:
        parser.error('--val-fraction must be in (0, 1)')
    if not 0 <= args.seed < 2 ** 32:
        parser.error('--seed must be in [0, 2**32)')
    if args.imagenet_weights and args.vgg_init in ('udacity', 'random'):
        parser.error(f'--imagenet-weights is for --vgg-init imagenet (or auto), not {args.vgg_init}')
    return args


def warn(message):
    bar = '=' * 78
    print(f'\n{bar}\n{message}\n{bar}\n', file=sys.stderr, flush=True)


def resolve_dataset(args):
    """(dataset folder, source) where source is 'kitti', 'user' or 'synthetic'."""
    if args.dataset:
        if os.path.isfile(args.dataset):
            raise helper.UserError(f'--dataset {args.dataset} is a file: it must be a KITTI-layout folder'
                                   + (' (unzip it first)' if zipfile.is_zipfile(args.dataset) else ''))
        if not os.path.isdir(args.dataset):
            raise helper.UserError(f'--dataset {args.dataset}: no such folder')
        return args.dataset, 'user'
    road_dir = os.path.join(args.data_dir, 'data_road')
    if not helper.kitti_is_present(road_dir):  # an incomplete KITTI folder is to be fixed, not replaced
        helper.refuse_incomplete(road_dir, 'KITTI Road', helper.KITTI_FOLDERS)
    try:
        if args.no_download and not helper.kitti_is_present(road_dir):
            raise helper.UserError(f'it is not in {road_dir} (--no-download)\n  '
                                   + helper.kitti_instructions(args.data_dir, args.kitti_url))
        return helper.maybe_download_kitti(args.data_dir, args.kitti_url), 'kitti'
    except helper.UserError as e:
        recipe = RECIPES['synthetic']
        folder = os.path.join(args.data_dir, SYNTHETIC_DIR)
        warn(f'KITTI Road is not available: {e}\nTraining on generated road scenes instead: {folder} '
             f'({recipe["num_train"]} training, {recipe["num_test"]} test images). See README.md, '
             '"Data and weights".')
        if not os.path.isdir(folder):
            synthetic.make_synthetic_kitti(folder, recipe['num_train'], recipe['num_test'], seed=0)
        return folder, 'synthetic'


def resolve_weights(args):
    """(VGG16 SavedModel folder, or None for a random encoder; weights info with 'source' in udacity, imagenet,
    random): see --vgg-init."""
    vgg_dir = args.vgg_dir or os.path.join(args.data_dir, 'vgg')
    init = 'imagenet' if args.vgg_init == 'auto' and args.imagenet_weights else args.vgg_init  # a named file wins
    if init == 'random':
        return None, {'source': 'random'}
    if args.imagenet_weights:  # a file the user named: checked before anything else
        helper.maybe_download_imagenet_weights(args.data_dir, args.imagenet_weights)
    if helper.vgg_is_complete(vgg_dir):
        info = vgg.read_source(vgg_dir) or {'source': 'udacity'}
        if init not in ('auto', info['source']):
            other = '' if args.imagenet_weights else f'use --vgg-init {info["source"]}, or '
            raise helper.UserError(f'{vgg_dir} holds the {info["source"]} VGG16, not the {init} one: {other}choose '
                                   'another --vgg-dir')
        if args.imagenet_weights and info.get('converted_from') != os.path.abspath(args.imagenet_weights):
            raise helper.UserError(f'{vgg_dir} already holds the VGG16 converted from {info.get("converted_from")}:'
                                   f' to convert {args.imagenet_weights}, choose another --vgg-dir or move '
                                   f'{vgg_dir} away')
        return vgg_dir, info
    # Fail before any download on a folder that the converter or vgg.zip could not fill.
    helper.refuse_incomplete(vgg_dir, 'a VGG16 SavedModel', helper.VGG_FILES)
    if args.vgg_dir and init != 'imagenet':  # a folder the user named never falls back
        raise helper.UserError(f'--vgg-dir {vgg_dir}: no VGG16 SavedModel there (needs {", ".join(helper.VGG_FILES)})'
                               '; leave --vgg-dir out to download Udacity\'s into DATA_DIR/vgg')
    failures = []
    for source in ('udacity', 'imagenet') if init == 'auto' else (init,):
        try:
            if source == 'udacity':
                if args.no_download:
                    raise helper.UserError(f'no SavedModel in {vgg_dir} (--no-download)\n  '
                                           + helper.vgg_instructions(args.data_dir, args.vgg_url))
                return helper.maybe_download_pretrained_vgg(args.data_dir, args.vgg_url), {'source': 'udacity'}
            info = convert_imagenet_weights(args, vgg_dir)
            if failures:
                warn('\n'.join(failures) + f'\nUsing the ImageNet VGG16 weights of {info["converted_from"]}.')
            return vgg_dir, info
        except helper.UserError as e:
            if init != 'auto':
                raise
            failures.append(f'{WEIGHT_NAMES[source]} is not available: {e}')
    warn('\n'.join(failures) + '\nUsing a randomly initialised (He) VGG16 encoder: expect much weaker results '
         'than with pretrained weights. See README.md, "Data and weights".')
    return None, {'source': 'random'}


def convert_imagenet_weights(args, vgg_dir):
    """Find (or download) Keras' ImageNet VGG16 weights and convert them into a SavedModel in vgg_dir."""
    h5_path = helper.maybe_download_imagenet_weights(args.data_dir, args.imagenet_weights, not args.no_download)
    info = {'source': 'imagenet', 'converted_from': os.path.abspath(h5_path)}
    print(f'converting {h5_path} into the SavedModel {vgg_dir} (once; later runs load it)', flush=True)
    try:
        vgg.convert_keras_h5(h5_path, vgg_dir, info)
    except vgg.ConversionError as e:
        raise helper.UserError(str(e)) from None
    return info


def settings(args, data_source):
    """The effective training settings: the recipe of the data source, overridden by the flags given."""
    recipe = RECIPES['synthetic' if data_source == 'synthetic' else 'kitti']
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in recipe.items()
              if k in ('epochs', 'batch_size', 'learning_rate', 'keep_prob', 'image_shape')}
    chosen['image_shape'] = tuple(chosen['image_shape'])
    return chosen


def finite_or_none(value):
    """JSON has no NaN: a non-finite figure (no road in the split, a diverged loss) is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path, data):
    """Write data as JSON through a temporary file, so that a crash never leaves half a file."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(finite_or_none(data), f, indent=2, allow_nan=False)
    os.replace(tmp, path)


def scalar_summary(values):
    """A TensorBoard Summary of {tag: float}, made without graph ops (the graph is finalised)."""
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()
                             if value is not None and np.isfinite(value)])


def image_summary(tag, image):
    """A TensorBoard Summary of one uint8 image [H, W, 3]."""
    encoded = iio.imwrite('<bytes>', image, extension='.png')
    return tf.Summary(value=[tf.Summary.Value(tag=tag, image=tf.Summary.Image(
        height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=encoded))])


def build_fcn(sess, vgg_dir, seed):
    """FCN-8s with its training ops in sess's graph, every variable initialised: the VGG16 SavedModel in vgg_dir
    (or, for None, a He-initialised one seeded by seed), then layers and optimize. Returns the tensors by name."""
    tf.set_random_seed(seed)
    correct_label = tf.placeholder(tf.float32, [None, None, None, NUM_CLASSES], name='correct_label')
    learning_rate = tf.placeholder(tf.float32, [], name='learning_rate')
    if vgg_dir:
        try:
            input_image, keep_prob, layer3, layer4, layer7 = load_vgg(sess, vgg_dir)
        except (RuntimeError, KeyError, ValueError, tf.errors.OpError) as e:
            raise helper.UserError(f'{vgg_dir} is not a VGG16 SavedModel tagged "{vgg.TAG}" with the Udacity '
                                   f'tensors {", ".join(VGG_TENSOR_NAMES)}: {e}') from None
        restored = {v.name for v in tf.global_variables()}  # the loaded weights: not to re-initialise
    else:
        input_image, keep_prob, layer3, layer4, layer7 = vgg.build_vgg16(seed=seed)
        restored = set()
    nn_last_layer = layers(layer3, layer4, layer7, NUM_CLASSES)
    logits, train_op, cross_entropy_loss = optimize(nn_last_layer, correct_label, learning_rate, NUM_CLASSES)
    sess.run(tf.variables_initializer([v for v in tf.global_variables() if v.name not in restored]))
    return dict(input_image=input_image, keep_prob=keep_prob, correct_label=correct_label,
                learning_rate=learning_rate, logits=logits, train_op=train_op,
                cross_entropy_loss=cross_entropy_loss)


def training_config(precision):
    """Session config of training at precision 'fp32' or 'bf16'; UserError where bf16 would not be fast."""
    if precision == 'fp32':
        return None
    reduced, why = inference.mixed_precision()
    if reduced != 'bf16':  # float16 on a GPU would also need loss scaling, which this project does not do
        raise helper.UserError(f'--precision bf16 trains on CPUs with AVX512_BF16 or AMX: {why}')
    return inference.session_config('bf16', fold_constants=False)


def read_config(run_dir, flag):
    """The config.json of a run folder; UserError naming the flag if it is not one."""
    try:
        with open(os.path.join(run_dir, 'config.json')) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise helper.UserError(f'{flag} {run_dir}: not a run folder of this project ({e})') from None


def load_run(run_dir):
    """(config, last checkpoint path, its step, history) of a run folder to resume; UserError if it cannot be."""
    config = read_config(run_dir, '--resume')
    if config.get('finished'):
        raise helper.UserError(f'--resume {run_dir}: that run finished ({config["finished"]}); nothing to resume')
    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, LAST_CHECKPOINT))
    if checkpoint is None:
        raise helper.UserError(f'--resume {run_dir}: no checkpoint in {os.path.join(run_dir, LAST_CHECKPOINT)} '
                               '(a run saves one after each epoch and when interrupted)')
    try:
        with open(os.path.join(run_dir, 'metrics.json')) as f:
            history = json.load(f)['epochs']
    except (OSError, ValueError, KeyError):
        history = []
    step = int(tf.train.load_variable(checkpoint, tf.GraphKeys.GLOBAL_STEP))
    return config, checkpoint, step, history


def run(argv=None):
    """The whole job: data, weights, graph, training, validation, test-set outputs, checkpoints, config and
    metrics; or, with --resume, the rest of a stopped run."""
    args = parse_args(argv)
    resumed = load_run(args.resume) if args.resume else None
    if resumed:
        config = resumed[0]
        vars(args).update({k: v for k, v in config['settings'].items() if k in vars(args) and k != 'resume'})
        dataset, data_source = config['data']['dataset'], config['data']['source']
        if not os.path.isdir(dataset):
            raise helper.UserError(f'--resume {args.resume}: its dataset {dataset} is gone')
    else:
        dataset, data_source = resolve_dataset(args)
    scan = helper.scan_dataset(dataset)
    print(helper.dataset_summary(dataset, data_source, scan), flush=True)
    conf = settings(args, data_source)
    image_shape = conf['image_shape']
    session_config = training_config(args.precision)

    training_dir, test_dir = os.path.join(dataset, 'training'), os.path.join(dataset, 'testing')
    names = [os.path.basename(image) for image, _ in helper.training_pairs(training_dir)]
    train_names, val_names = helper.split_train_val(names, args.val_fraction, args.seed)
    if not train_names or not val_names:
        raise helper.UserError(f'--val-fraction {args.val_fraction} leaves {len(train_names)} training and '
                               f'{len(val_names)} validation images of {len(names)}: both need at least one')
    if resumed and val_names != config['data']['val_names']:
        raise helper.UserError(f'--resume {args.resume}: {dataset} has changed since the run started (its '
                               'validation split is no longer the same)')
    start_step, history = resumed[2:] if resumed else (0, [])
    num_batches = -(-len(train_names) // conf['batch_size'])
    history = [h for h in history if h['epoch'] <= start_step // num_batches]  # records of checkpointed epochs
    epochs = conf['epochs']
    if history and history[-1].get('early_stop'):
        epochs = history[-1]['epoch']  # stopped by --patience: nothing more to train
    # Every training and validation file is read and checked before the weights, the run folder and the graph.
    get_batches_fn = helper.gen_batch_function(training_dir, image_shape, train_names, seed=args.seed,
                                               first_epoch=start_step // num_batches, augment=not args.no_augment)
    val_pairs = helper.training_pairs(training_dir, val_names)
    val_examples = load_examples(val_pairs)
    if resumed:
        vgg_dir = config['weights']['vgg_dir']
        weights = {k: v for k, v in config['weights'].items() if k != 'vgg_dir'}
        if vgg_dir and not helper.vgg_is_complete(vgg_dir):
            raise helper.UserError(f'--resume {args.resume}: its VGG16 {vgg_dir} is gone')
        run_dir = args.resume
        config.setdefault('resumed', []).append({'at_step': start_step, 'time': time.strftime('%Y-%m-%d %H:%M:%S')})
    else:
        vgg_dir, weights = resolve_weights(args)
        run_dir = helper.new_run_dir(args.runs_dir)
        config = {
            'command': ['main.py', *(sys.argv[1:] if argv is None else argv)],
            'settings': {**vars(args), **conf},
            'data': {'source': data_source, 'dataset': os.path.abspath(dataset),
                     'train_images': len(train_names), 'val_images': len(val_names), 'val_names': val_names},
            'weights': {**weights, 'vgg_dir': vgg_dir and os.path.abspath(vgg_dir)},
            'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__,
                         'numpy': np.__version__},
        }
    write_json(os.path.join(run_dir, 'config.json'), config)
    print(f'run folder {run_dir}: data {data_source} ({len(train_names)} train, {len(val_names)} val), '
          f'weights {weights["source"]}, {conf}' + (f', resuming at step {start_step}' if resumed else ''),
          flush=True)

    with tf.Graph().as_default(), tf.Session(config=session_config) as sess:
        net = build_fcn(sess, vgg_dir, args.seed)
        input_image, keep_prob, correct_label = net['input_image'], net['keep_prob'], net['correct_label']
        logits, cross_entropy_loss = net['logits'], net['cross_entropy_loss']
        # last: everything needed to continue (weights, Adam's moments, the step); best: the model only.
        last_saver = tf.train.Saver(max_to_keep=1)
        best_saver = tf.train.Saver(tf.trainable_variables(), max_to_keep=1)
        global_step = tf.train.get_global_step()
        if resumed:
            last_saver.restore(sess, resumed[1])

        validate_fn = make_validate_fn(sess, logits, cross_entropy_loss, keep_prob, input_image, correct_label,
                                       val_examples, image_shape)
        metrics_path = os.path.join(run_dir, 'metrics.json')
        last_path, best_path = (os.path.join(run_dir, d, 'model') for d in (LAST_CHECKPOINT, BEST_CHECKPOINT))
        for path in (last_path, best_path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        best_f = max(map(max_f_key, history), default=-np.inf)
        sess.graph.finalize()  # from here on, a new op would be a bug (e.g. one built per image)

        writer = tf.summary.FileWriter(run_dir)  # events for `tensorboard --logdir runs`

        def on_step(step, loss):
            writer.add_summary(scalar_summary({'train/loss': loss}), step)

        def on_epoch_end(epochs):
            nonlocal best_f
            record, step = epochs[-1], sess.run(global_step)
            writer.add_summary(scalar_summary({'epoch/loss': record['loss'], 'val/loss': record['val_loss'],
                                               'val/max_f': record['val_max_f'],
                                               'val/iou_at_0.5': record['val_iou_at_0.5']}), step)
            for name, image in validate_fn.samples.items():
                writer.add_summary(image_summary(f'val/{name}', image), step)
            writer.flush()
            plots.plot_history(epochs, os.path.join(run_dir, 'history.png'))
            plots.plot_precision_recall(record['val_counts'], os.path.join(run_dir, 'precision_recall.png'),
                                        f'validation, epoch {record["epoch"]}')
            # Committed in this order so that an interruption anywhere leaves a consistent run: a best checkpoint
            # without its record is saved again when the epoch is redone, and a record whose last checkpoint is
            # missing is dropped on resume (history is cut at the checkpoint's step).
            if max_f_key(record) > best_f:
                best_f = max_f_key(record)
                best_saver.save(sess, best_path, global_step=global_step)
            write_json(metrics_path, {'epochs': epochs})
            last_saver.save(sess, last_path, global_step=global_step)

        try:
            history = train_nn(sess, epochs, conf['batch_size'], get_batches_fn, net['train_op'],
                               cross_entropy_loss, input_image, correct_label, keep_prob, net['learning_rate'],
                               keep_prob_value=conf['keep_prob'], learning_rate_value=conf['learning_rate'],
                               validate_fn=validate_fn, on_epoch_end=on_epoch_end, start_step=start_step,
                               history=history, patience=args.patience, on_step=on_step)
        except KeyboardInterrupt:
            step = sess.run(global_step)
            if step % num_batches:  # mid-epoch; at an epoch's end its own checkpoint (or none: redo it) stands
                last_saver.save(sess, last_path, global_step=global_step)
            saved = tf.train.latest_checkpoint(os.path.dirname(last_path))
            print(f'\ninterrupted at step {step}: the last checkpoint is {saved or "none (no epoch finished)"}.'
                  + (f' To continue: python main.py --resume {run_dir}' if saved else ''),
                  file=sys.stderr, flush=True)
            raise
        except helper.UserError as e:  # a diverged loss: the last checkpoint is from before it
            last = tf.train.latest_checkpoint(os.path.dirname(last_path))
            raise helper.UserError(f'{e} The last good checkpoint is {last or "none (no epoch finished)"}.') \
                from None
        best = tf.train.latest_checkpoint(os.path.dirname(best_path))
        if best is None:
            raise helper.UserError('no epoch had a finite validation MaxF (a validation split without road or '
                                   f'without non-road pixels?): no best model; see {metrics_path}')
        best_saver.restore(sess, best)  # the run's model from here on: the best epoch's weights
        best_record = max(history, key=max_f_key)
        print(f'validation, KITTI road scores (perspective view, %) of the best epoch, {best_record["epoch"]}:\n'
              + format_kitti_table(best_record['val_kitti']), flush=True)
        helper.save_inference_samples(args.runs_dir, args.data_dir, sess, image_shape, logits, keep_prob,
                                      input_image, test_folder=test_dir, output_dir=run_dir,
                                      kitti_dir=os.path.join(run_dir, 'kitti'))
    serving_dir = os.path.join(run_dir, SERVING_DIR)
    if os.path.isdir(serving_dir):  # this run's own, from an export that was interrupted
        shutil.rmtree(serving_dir)
    export_serving_model(best, vgg_dir, args.seed, serving_dir)
    config['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
    write_json(os.path.join(run_dir, 'config.json'), config)
    print(f'overlays, kitti/ confidence maps, checkpoints, {SERVING_DIR}/, config.json and metrics.json written '
          f'to {run_dir}')
    return run_dir


def export_serving_model(checkpoint, vgg_dir, seed, export_dir):
    """Write the model of checkpoint as a SavedModel (tag `serve`) whose `serving_default` signature maps
    `image` [N, H, W, 3] raw RGB 0-255 (H, W multiples of 32: the run's image_shape is what it was trained at)
    to `road_probability` [N, H, W]: inference without this project's code. A fresh graph, without training
    ops; export_dir must not exist."""
    with tf.Graph().as_default(), tf.Session() as sess:
        if vgg_dir:
            # Udacity's keep_prob is a placeholder without a default: fixed at 1.0, serving needs only the image.
            tf.saved_model.loader.load(sess, [vgg.TAG], vgg_dir, input_map={'keep_prob:0': tf.constant(1.0)})
            input_image, _, layer3, layer4, layer7 = vgg_tensors(sess.graph)
        else:
            input_image, _, layer3, layer4, layer7 = vgg.build_vgg16(seed=seed)
        last = layers(layer3, layer4, layer7, NUM_CLASSES)
        logits = tf.reshape(last, [-1, NUM_CLASSES], name='logits')
        road = tf.reshape(helper.road_probability(logits), tf.shape(input_image)[:3], name='road_probability')
        tf.train.Saver(tf.trainable_variables()).restore(sess, checkpoint)
        signature = tf.saved_model.signature_def_utils.predict_signature_def({'image': input_image},
                                                                            {'road_probability': road})
        builder = tf.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(sess, [tf.saved_model.tag_constants.SERVING],
                                             signature_def_map={'serving_default': signature})
        builder.save()
    return export_dir


def load_examples(pairs):
    """[(name, uint8 image [h, w, 3], int8 classes [h, w])] of (image path, label path) pairs, read and checked."""
    return [(os.path.basename(image), *helper.load_pair(image, label))
            for image, label in tqdm(pairs, desc='loading', leave=False)]


def evaluate(argv):
    """`main.py evaluate`: KITTI scores of a trained run's best checkpoint, printed and written to eval.json."""
    parser = argparse.ArgumentParser(
        prog='main.py evaluate',
        description='Score a trained run (its best checkpoint by validation MaxF) with the KITTI road metrics, '
                    'per category and pooled, at each image\'s original resolution; print a table and write '
                    'RUN_DIR/eval.json.')
    parser.add_argument('--checkpoint', metavar='RUN_DIR', required=True, help='a run folder of main.py')
    parser.add_argument('--dataset', metavar='DIR',
                        help='score every image of DIR/training (KITTI layout, with ground truth) instead of the '
                             'run\'s validation split')
    args = parser.parse_args(argv)
    config = read_config(args.checkpoint, '--checkpoint')
    best = tf.train.latest_checkpoint(os.path.join(args.checkpoint, BEST_CHECKPOINT))
    if best is None:
        raise helper.UserError(f'{args.checkpoint}: no best checkpoint yet (one is saved after the first epoch)')
    if args.dataset:
        if not os.path.isdir(os.path.join(args.dataset, 'training')):
            raise helper.UserError(f'--dataset {args.dataset}: no training/ folder (image_2 and gt_image_2) there')
        pairs = helper.training_pairs(os.path.join(args.dataset, 'training'))
    else:
        pairs = helper.training_pairs(os.path.join(config['data']['dataset'], 'training'),
                                      config['data']['val_names'])
    examples = load_examples(pairs)
    if not examples:
        raise helper.UserError(f'{args.checkpoint}: no images to evaluate')
    image_shape = tuple(config['settings']['image_shape'])
    with tf.Graph().as_default(), tf.Session() as sess:
        net = build_fcn(sess, config['weights']['vgg_dir'], config['settings']['seed'])
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        validate_fn = make_validate_fn(sess, net['logits'], net['cross_entropy_loss'], net['keep_prob'],
                                       net['input_image'], net['correct_label'], examples, image_shape)
        sess.graph.finalize()
        scores = validate_fn()
    print(f'{best} on {len(examples)} images of {args.dataset or "the validation split"}, KITTI road scores '
          f'(perspective view, %):\n' + format_kitti_table(scores['val_kitti']))
    path = os.path.join(args.checkpoint, 'eval.json')
    write_json(path, {'checkpoint': best, 'dataset': args.dataset or config['data']['dataset'],
                      'images': [name for name, _, _ in examples], 'loss': scores['val_loss'],
                      'kitti': scores['val_kitti'], 'counts': scores['val_counts']})
    plot = os.path.join(args.checkpoint, 'eval_precision_recall.png')
    plots.plot_precision_recall(scores['val_counts'], plot, f'{os.path.basename(best)}, {len(examples)} images')
    print(f'written to {path} and {plot}')


# ------------------------------------------------------------------------------------------ fast inference

OPTIMIZED_DIR = 'optimized'  # inside the run folder: main.py optimize's models and table
LATENCY_RUNS = 20


def finished_run(run_dir, flag):
    """(config, its SavedModel folder) of a run that finished, whose serving model was exported."""
    config = read_config(run_dir, flag)
    saved_model = os.path.join(run_dir, SERVING_DIR)
    if not config.get('finished') or not os.path.isfile(os.path.join(saved_model, 'saved_model.pb')):
        raise helper.UserError(f'{flag} {run_dir}: that run has not finished, so it has no {SERVING_DIR}/ yet '
                               f'(python main.py --resume {run_dir} finishes it)')
    return config, saved_model


def calibration_images(training_dir, exclude, image_shape, count=inference.CALIBRATION_IMAGES):
    """Up to count training images (uint8 [H, W, 3] at image_shape), spread evenly over the sorted names,
    never one of exclude (the validation split)."""
    names = [os.path.basename(image) for image, _ in helper.training_pairs(training_dir)]
    names = [name for name in names if name not in set(exclude)]
    chosen = [names[i] for i in np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int)]
    return [helper.resize_image(helper.read_rgb(os.path.join(training_dir, 'image_2', name)), image_shape)
            for name in tqdm(chosen, desc='calibration images', leave=False)]


def measure_variant(name, predict, examples, runs):
    """A row of the optimization table: latency at batch 1, then KITTI MaxF and IoU on examples."""
    row = {'variant': name, **inference.latency(predict, runs)}
    scores = inference.kitti_scores(predict, examples, desc=f'scoring {name}')['all']
    row.update(max_f=scores['max_f'], iou=scores['iou'], iou_at_half=scores['iou_at_0.5'])
    print(f'{name}: {row["median_ms"]:.1f} ms median, MaxF {100 * row["max_f"]:.2f}', flush=True)
    return row


def format_optimization_table(report):
    """optimization.md: the variants as a Markdown table, then the skipped ones with their reasons."""
    lines = [f'# Optimized models of {report["run"]}', '',
             f'Machine: {report["machine"]}; TensorFlow {report["tensorflow"]}. Input {report["image_shape"][0]}x'
             f'{report["image_shape"][1]}, batch 1: latency over {report["runs"]} runs after '
             f'{inference.WARMUP_RUNS} warm-up runs. MaxF and IoU (road, at the MaxF threshold): KITTI '
             f'perspective-view scores on the {report["val_images"]} validation images. tflite-int8 calibrated on '
             f'{report["calibration_images"]} training images. Command: `{report["command"]}`.', '',
             '| variant | file | size (MB) | median (ms) | p90 (ms) | images/s | speed-up vs fp32 | MaxF (%) '
             '| ΔMaxF (pt) | IoU (%) | ΔIoU (pt) |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for row in report['variants']:
        lines.append(f'| {row["variant"]} | {row["file"]} | {row["size_mb"]:.1f} | {row["median_ms"]:.1f} | '
                     f'{row["p90_ms"]:.1f} | {row["images_per_s"]:.2f} | {row["speedup"]:.2f}x | '
                     f'{100 * row["max_f"]:.2f} | {100 * row["max_f_change"]:+.2f} | {100 * row["iou"]:.2f} | '
                     f'{100 * row["iou_change"]:+.2f} |')
    for row in report['skipped']:
        lines.append(f'\nSkipped: {row["variant"]}: {row["reason"]}.')
    return '\n'.join(lines) + '\n'


def optimize_command(argv):
    """`main.py optimize`: the run's model frozen, in bf16 and as TFLite fp16/int8, each timed and scored."""
    parser = argparse.ArgumentParser(
        prog='main.py optimize',
        description='Make fast inference models of a finished run in RUN_DIR/optimized/: fp32.pb (frozen graph, '
                    'Grappler-optimized), bf16.pb (auto mixed precision: oneDNN bfloat16 on CPUs with '
                    'AVX512_BF16 or AMX, float16 on a GPU), fp16.tflite, int8_dynamic.tflite and int8.tflite '
                    f'(full integer, calibrated on up to {inference.CALIBRATION_IMAGES} training images). Each '
                    'is timed at batch 1 and scored on the validation split; the table goes to '
                    'optimization.md and optimization.json. A previous optimized/ is replaced once the new '
                    'one is complete.')
    parser.add_argument('--checkpoint', metavar='RUN_DIR', required=True,
                        help='a finished run folder of main.py (its saved_model/ is what gets optimized)')
    parser.add_argument('--runs', type=int, default=LATENCY_RUNS,
                        help=f'timed runs per variant, after {inference.WARMUP_RUNS} warm-up runs '
                             '[default: %(default)s]')
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error('--runs must be at least 2')
    config, saved_model = finished_run(args.checkpoint, '--checkpoint')
    image_shape = tuple(config['settings']['image_shape'])
    training_dir = os.path.join(config['data']['dataset'], 'training')
    if not os.path.isdir(training_dir):
        raise helper.UserError(f'--checkpoint {args.checkpoint}: its dataset {training_dir} is gone (validation '
                               'images score each variant, training images calibrate int8)')
    val_names = config['data']['val_names']
    examples = load_examples(helper.training_pairs(training_dir, val_names))
    calibration = calibration_images(training_dir, val_names, image_shape)
    if not calibration:
        raise helper.UserError(f'--checkpoint {args.checkpoint}: no training image outside the validation split '
                               'to calibrate int8 on')
    out_dir = os.path.join(args.checkpoint, OPTIMIZED_DIR)
    staging = out_dir + '.partial'
    if os.path.isdir(staging):  # this command's own, from an interrupted run
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        report = optimize_variants(args, argv, saved_model, image_shape, examples, calibration, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # about 1 GB of half-made models
        raise
    table = format_optimization_table(report)
    with open(os.path.join(staging, 'optimization.md'), 'w') as f:
        f.write(table)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    print(table + f'\nwritten to {out_dir}')


def optimize_variants(args, argv, saved_model, image_shape, examples, calibration, staging):
    """Make, time and score every variant into staging; write and return the report (optimization.json)."""
    print(f'freezing {saved_model} at {image_shape[0]}x{image_shape[1]}', flush=True)
    frozen = inference.freeze(saved_model, image_shape)
    reference = measure_variant('saved_model', inference.saved_model_predictor(saved_model, image_shape),
                                examples, args.runs)
    reference.update(file=SERVING_DIR, size_mb=sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(saved_model) for f in files) / 2 ** 20)
    rows, skipped = [], []
    precision, why = inference.mixed_precision()
    for variant, file in inference.FILES.items():
        path = os.path.join(staging, file)
        if variant == 'bf16' and precision is None:
            print(f'{variant}: skipped: {why}', flush=True)
            skipped.append({'variant': variant, 'reason': why})
            continue
        start = time.time()
        print(f'making {variant} (a minute or two)', flush=True)
        inference.write_bytes(path, inference.make_variant(frozen, variant, precision, calibration))
        build_s = round(time.time() - start, 1)
        row = measure_variant(variant, inference.variant_predictor(variant, path), examples, args.runs)
        row.update(file=file, size_mb=os.path.getsize(path) / 2 ** 20, build_s=build_s)
        if variant == 'bf16':
            row['precision'] = why
        rows.append(row)
    fp32 = rows[0]
    for row in [reference] + rows:
        row.update(speedup=fp32['median_ms'] / row['median_ms'], max_f_change=row['max_f'] - fp32['max_f'],
                   iou_change=row['iou'] - fp32['iou'])
    report = {'run': args.checkpoint, 'command': ' '.join(['python main.py optimize', *argv]),
              'machine': inference.machine(), 'tensorflow': tf.__version__, 'image_shape': list(image_shape),
              'runs': args.runs, 'val_images': len(examples), 'calibration_images': len(calibration),
              'variants': [reference] + rows, 'skipped': skipped}
    write_json(os.path.join(staging, 'optimization.json'), report)
    return report


def reduced_precision():
    """The Grappler precision behind --precision bf16 on this machine; UserError where it would not be faster."""
    precision, why = inference.mixed_precision()
    if precision is None:
        raise helper.UserError(f'--precision bf16: {why}; use fp32 or int8')
    return precision


def load_model(path, precision):
    """(predict, what it is) for `main.py infer --model path --precision precision` (None: the model's own).

    path: a run folder (its optimized/ model of that precision when there is one, else its saved_model/), an
    optimized/ folder, an exported SavedModel inside a run folder, a frozen .pb or a .tflite file."""
    if os.path.isfile(path):
        if path.endswith('.tflite'):
            if precision:
                raise helper.UserError(f'--model {path}: a .tflite model has its own precision: drop --precision')
            return inference.tflite_predictor(path), f'{path} (TFLite)'
        if path.endswith('.pb'):
            if precision == 'int8':
                raise helper.UserError(f'--model {path}: int8 models are .tflite files (main.py optimize '
                                       'writes int8.tflite next to it)')
            try:
                graph_def = inference.read_graph_def(path)
            except Exception as e:  # protobuf's DecodeError has no common base with OSError
                raise helper.UserError(f'--model {path}: not a frozen graph ({e})') from None
            mixed = reduced_precision() if precision == 'bf16' else None
            return inference.graph_predictor(graph_def, mixed), f'{path} (frozen graph{", " + mixed if mixed else ""})'
        raise helper.UserError(f'--model {path}: a file must be a frozen graph (.pb) or a TFLite model (.tflite)')
    if not os.path.isdir(path):
        raise helper.UserError(f'--model {path}: no such file or folder')
    precision = precision or 'fp32'
    variant = inference.PRECISION_VARIANT[precision]
    optimized = path if os.path.isfile(os.path.join(path, 'optimization.json')) else os.path.join(path,
                                                                                                   OPTIMIZED_DIR)
    file = os.path.join(optimized, inference.FILES[variant])
    if os.path.isfile(file):
        return inference.variant_predictor(variant, file), f'{file} ({variant})'
    if os.path.isfile(os.path.join(path, 'saved_model.pb')):
        run_dir, saved_model = os.path.dirname(os.path.abspath(path)), path
    else:
        run_dir, saved_model = path, os.path.join(path, SERVING_DIR)
    if precision == 'int8' or not os.path.isfile(os.path.join(saved_model, 'saved_model.pb')):
        raise helper.UserError(f'--model {path}: no {precision} model there: give a run folder, its '
                               f'{OPTIMIZED_DIR}/ or {SERVING_DIR}/ folder, a .pb or a .tflite file'
                               + (' (int8 models are made by python main.py optimize --checkpoint RUN_DIR)'
                                  if precision == 'int8' else ''))
    config = read_config(run_dir, '--model')  # the input size the model was trained at
    mixed = reduced_precision() if precision == 'bf16' else None
    return (inference.saved_model_predictor(saved_model, config['settings']['image_shape'], mixed),
            f'{saved_model} (SavedModel{", " + mixed if mixed else ""})')


def infer_inputs(path):
    """(video path or None, [picture paths]) of --input: a video, a PNG/JPEG, or a folder of them."""
    if os.path.isdir(path):
        pictures = [os.path.join(path, f) for f in helper.list_pictures(path)]
        if not pictures:
            raise helper.UserError(f'--input {path}: no PNG or JPEG files in that folder')
        return None, pictures
    if not os.path.isfile(path):
        raise helper.UserError(f'--input {path}: no such file or folder')
    if helper.is_video(path):
        return path, []
    if path.lower().endswith(helper.PICTURE_EXTENSIONS):
        return None, [path]
    raise helper.UserError(f'--input {path}: expected a PNG/JPEG image, a folder of them, or a video '
                           f'({", ".join(helper.VIDEO_EXTENSIONS)})')


def infer_video(video, output, probability_dir, predict, image_shape, written):
    """Overlay video of video at output (.mp4, same size and frame rate), and per-frame confidence maps in
    probability_dir unless None; every path made is appended to written."""
    frames, fps, estimate = helper.read_video(video)
    partial = output[:-len('.mp4')] + '.partial.mp4'  # renamed when complete: never half a video under its name
    written.append(partial)
    if probability_dir:
        written.append(probability_dir)
        os.makedirs(probability_dir)
    writer, number = None, 0
    try:
        for number, frame in enumerate(tqdm(frames, total=estimate, desc='frames', unit='frame')):
            frame = frame[..., :3]
            writer = writer or helper.video_writer(partial, fps, frame.shape[:2])
            prob = helper.predict_probability(predict, frame, image_shape)
            writer.append_data(helper.overlay(frame, prob))
            if probability_dir:
                iio.imwrite(os.path.join(probability_dir, f'frame_{number:06d}.png'), metrics.confidence(prob))
    except (OSError, RuntimeError, ValueError) as e:  # ffmpeg's decoding and encoding errors
        raise helper.UserError(f'{video}: failed at frame {number} ({type(e).__name__}: {e})') from None
    finally:
        if writer:
            writer.close()
    if writer is None:
        raise helper.UserError(f'{video}: no frames')
    os.replace(partial, output)


def infer_command(argv):
    """`main.py infer`: road overlays (and confidence maps) of images, a folder of them, or a video."""
    parser = argparse.ArgumentParser(
        prog='main.py infer',
        description='Segment the road in images or a video with a trained model. Overlays are written at the '
                    'input\'s own resolution: a PNG per image into the OUTPUT folder, or, for a video, an mp4 '
                    'with the same frame rate. Nothing existing is overwritten.')
    parser.add_argument('--model', metavar='PATH', required=True,
                        help='a run folder (its optimized/ model of --precision if main.py optimize made one, '
                             'else its saved_model/), an optimized/ or saved_model/ folder, a frozen .pb or a '
                             '.tflite file')
    parser.add_argument('--input', metavar='PATH', required=True,
                        help='a PNG/JPEG image, a folder of them, or a video (mp4, mov, avi, mkv)')
    parser.add_argument('--output', metavar='PATH', required=True,
                        help='a folder for the overlays of images; an .mp4 file for a video')
    parser.add_argument('--precision', choices=tuple(inference.PRECISION_VARIANT),
                        help='fp32; bf16 (bfloat16 mixed precision on CPUs with AVX512_BF16 or AMX, float16 on a '
                             'GPU); int8 (needs main.py optimize\'s int8.tflite) [default: fp32, or a model '
                             'file\'s own]')
    parser.add_argument('--probabilities', action='store_true',
                        help='also write KITTI-style confidence maps (uint8 road probability x 255) into '
                             'OUTPUT/probabilities/ (OUTPUT_probabilities/ for a video, a PNG per frame)')
    args = parser.parse_args(argv)
    video, pictures = infer_inputs(args.input)
    if video and not args.output.lower().endswith('.mp4'):
        parser.error(f'--output {args.output}: the overlay of a video is an .mp4 file')
    if video:
        targets = [args.output] + ([os.path.splitext(args.output)[0] + '_probabilities'] if args.probabilities
                                   else [])
    else:
        names = [os.path.splitext(os.path.basename(p))[0] + '.png' for p in pictures]
        targets = [os.path.join(args.output, n) for n in names] + (
            [os.path.join(args.output, 'probabilities', n) for n in names] if args.probabilities else [])
    if not video and len(set(names)) < len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise helper.UserError(f'--input {args.input}: two images would both be written as {clash} (e.g. a .png and '
                               'a .jpg of the same name); rename one')
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise helper.UserError(f'--output {args.output}: {existing[0]} exists'
                               + (f' (and {len(existing) - 1} more)' if len(existing) > 1 else '')
                               + ': choose another --output (nothing is overwritten)')
    try:
        predict, description = load_model(args.model, args.precision)
    except (KeyError, ValueError, RuntimeError, tf.errors.OpError) as e:  # a graph or file not of this project
        raise helper.UserError(f'--model {args.model}: cannot be loaded as a road model of this project '
                               f'({type(e).__name__}: {e})') from None
    if None in predict.image_shape:
        raise helper.UserError(f'--model {args.model}: its input size is not fixed (main.py optimize writes '
                               'models at the size the run was trained at)')
    start = time.perf_counter()
    predict(np.zeros((1, *predict.image_shape, 3), np.float32))  # a Session sets its graph up at the first run
    print(f'model {description}, run at {predict.image_shape[0]}x{predict.image_shape[1]}, ready in '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    model_seconds = []

    def timed(batch):
        start = time.perf_counter()
        prob = predict(batch)
        model_seconds.append(time.perf_counter() - start)
        return prob

    start = time.perf_counter()
    written = []  # this command's own outputs: removed again if it fails half-way
    try:
        if video:
            infer_video(video, args.output, targets[1] if args.probabilities else None, timed,
                        predict.image_shape, written)
        else:
            os.makedirs(os.path.join(args.output, 'probabilities') if args.probabilities else args.output,
                        exist_ok=True)
            for picture, name in tqdm(list(zip(pictures, names)), desc='images', unit='image'):
                image = helper.read_rgb(picture)
                prob = helper.predict_probability(timed, image, predict.image_shape)
                written.append(os.path.join(args.output, name))
                iio.imwrite(written[-1], helper.overlay(image, prob))
                if args.probabilities:
                    written.append(os.path.join(args.output, 'probabilities', name))
                    iio.imwrite(written[-1], metrics.confidence(prob))
    except BaseException:
        for path in reversed(written):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        raise
    seconds, count = time.perf_counter() - start, len(model_seconds)
    print(f'{count} {"frame" if video else "image"}(s) in {seconds:.1f} s: {count / seconds:.2f} per second '
          f'overall, {1000 * np.median(model_seconds):.1f} ms median in the model; written to {args.output}')


COMMANDS = {'evaluate': evaluate, 'optimize': optimize_command, 'infer': infer_command}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            run(argv)
    except (helper.UserError, OSError) as e:  # OSError: an unwritable runs folder, a full disk, ...
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
