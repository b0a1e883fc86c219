"""FCN-8s road segmentation on KITTI Road, TensorFlow 1.x style (graph, placeholders, Session): Udacity's story.

`python main.py` trains on KITTI Road with Udacity's pretrained VGG16 and writes road overlays of the test
images to runs/<timestamp>/. Without KITTI or the weights (offline), it says so, trains on generated road scenes
with a randomly initialised VGG16 instead, and records that in the run's config.json. Here: the network
(load_vgg, layers, optimize), the training loop (train_nn), the whole job (run) and the command line, which also
dispatches `evaluate`, `optimize`, `infer` and `synthetic` (their flags: fcn8s/command_line.py).
"""
import sys

from fcn8s import command_line

if __name__ == '__main__':  # parsed once, here: --help and a mistyped flag answer before TensorFlow loads
    COMMAND_LINE = command_line.parse(sys.argv[1:])
with command_line.quiet_tensorflow():
    import tensorflow.compat.v1 as tf

# isort: split
import collections
import contextlib
import functools
import itertools
import os
import time
import zlib

import numpy as np
from tqdm import tqdm

from fcn8s import (batches, cluster, datasets, evaluation, files, infer, outputs, precision, run_folder, serving,
                   synthetic, variants, vgg, weights)
from fcn8s.command_line import OPERATIONAL
from fcn8s.errors import FirstStepFailed, LossDiverged, UserError
from fcn8s.layout import labelled_pairs, split_train_val
from fcn8s.metrics import NUM_CLASSES, score_key
from fcn8s.pipeline import prefetch
from fcn8s.recipes import POLY_POWER, RANDOM_ENCODER_LEARNING_RATE, RECIPES, WARMUP_STEPS

tf.disable_eager_execution()


# ------------------------------------------------------------------------------------------------- network

def load_vgg(sess, vgg_path):
    """Load the `vgg16`-tagged SavedModel at vgg_path into sess's graph.

    Returns (image_input [N, H, W, 3], keep_prob [], layer3_out [N, H/8, W/8, 256],
    layer4_out [N, H/16, W/16, 512], layer7_out [N, H/32, W/32, 4096]).
    """
    tf.saved_model.loader.load(sess, [vgg.TAG], vgg_path)
    return tuple(sess.graph.get_tensor_by_name(name) for name in vgg.TENSOR_NAMES)


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


# Weight decay on the new layers, as the classic tf.contrib l2_regularizer(scale): scale * sum(w^2) / 2.
L2_SCALE = 1e-3


def _regularized_variable(name, shape, initializer):
    """A new layer's variable whose L2 penalty goes to the REGULARIZATION_LOSSES collection."""
    var = tf.get_variable(name, shape, initializer=initializer)
    tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES, L2_SCALE * tf.nn.l2_loss(var))
    return var


# Score layers start near zero, as FCN's zero-initialised ones, with noise to break symmetry; scaled by
# 1 / sqrt(fan_in), the first logits stay small whatever the size of the encoder's activations.
SCORE_INIT_GAIN = 0.01


def score(x, num_classes, name):
    """1x1 convolution to class scores: [N, h, w, C] -> [N, h, w, num_classes]."""
    with tf.variable_scope(name):
        # Seeded by the graph's seed (--seed) and the layer's name, not by how many ops came before: every
        # replica of a distributed graph then starts from the weights of a single device.
        seed = (tf.get_default_graph().seed or 0) + zlib.crc32(name.encode()) % 2 ** 16
        weights = _regularized_variable('weights', [1, 1, x.shape[-1], num_classes],
                                        tf.variance_scaling_initializer(SCORE_INIT_GAIN ** 2, 'fan_in',
                                                                        'truncated_normal', seed=seed))
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


# FCN-8s "at once" (Long, Shelhamer, Darrell) scales the skips so that the pretrained pool3/pool4 activations,
# much larger than fc7's, do not swamp the fused scores at the start of training; Udacity's layers() keeps them.
POOL4_SCALE = 0.01
POOL3_SCALE = 0.0001
# New runs leave the skips unscaled, whatever the encoder: with Adam a skip's scale is also the speed at which its
# scores learn, pool3's ten thousand times slower at FCN's (docs/network.md).
UNSCALED_SKIPS = (1.0, 1.0)
# (kernel, stride) of the three transposed convolutions; kernel = 2 x stride makes bilinear upsampling exact.
UPSCORE2 = (4, 2)
UPSCORE_POOL4 = (4, 2)
UPSCORE8 = (16, 8)


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes, skip_scales=None):
    """FCN-8s decoder on the VGG16 encoder.

    pool3 [N, H/8, W/8, 256], pool4 [N, H/16, W/16, 512], fc7 [N, H/32, W/32, 4096] -> [N, H, W, num_classes].
    H and W must be multiples of 32. skip_scales (pool4's, pool3's): None for FCN's (Udacity's signature).
    """
    pool4_scale, pool3_scale = skip_scales or (POOL4_SCALE, POOL3_SCALE)
    score_fr = score(vgg_layer7_out, num_classes, 'score_fr')                      # [N, H/32, W/32, K]
    scale_pool4 = tf.multiply(vgg_layer4_out, pool4_scale, name='scale_pool4')
    score_pool4 = score(scale_pool4, num_classes, 'score_pool4')                   # [N, H/16, W/16, K]
    upscore2 = upscore(score_fr, _spatial_shape(score_pool4), *UPSCORE2, 'upscore2')
    fuse_pool4 = tf.add(upscore2, score_pool4, name='fuse_pool4')                  # [N, H/16, W/16, K]
    scale_pool3 = tf.multiply(vgg_layer3_out, pool3_scale, name='scale_pool3')
    score_pool3 = score(scale_pool3, num_classes, 'score_pool3')                   # [N, H/8, W/8, K]
    upscore_pool4 = upscore(fuse_pool4, _spatial_shape(score_pool3), *UPSCORE_POOL4, 'upscore_pool4')
    fuse_pool3 = tf.add(upscore_pool4, score_pool3, name='fuse_pool3')             # [N, H/8, W/8, K]
    h, w = _spatial_shape(fuse_pool3)
    output_hw = [h * UPSCORE8[1], w * UPSCORE8[1]]
    return tf.identity(upscore(fuse_pool3, output_hw, *UPSCORE8, 'upscore8'), name='upscore8_out')


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, valid_pixels=None, decay=None, replicas=1,
             accumulate_steps=1):
    """Loss and Adam training op.

    nn_last_layer [N, H, W, K], correct_label [N, H, W, K] one-hot (all zeros = invalid pixel) ->
    (logits [N*H*W, K], train_op, cross_entropy_loss): the loss is the mean cross-entropy over valid pixels
    only; the train op minimises it plus the L2 weight decay of the new layers. One replica of several
    (cluster.py) gives the whole batch's valid_pixels, its own decay terms and the number of replicas, whose
    gradients the strategy sums: each then carries its share of the decay. With accumulate_steps N (one device),
    the weights change at every Nth step only, as with one batch N times larger (accumulated_update).
    """
    logits, cross_entropy_loss = masked_cross_entropy(nn_last_layer, correct_label, num_classes, valid_pixels)
    decay = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES) if decay is None else decay
    decay_loss = tf.add_n(decay) / replicas if decay else None
    optimizer, global_step = tf.train.AdamOptimizer(learning_rate), tf.train.get_or_create_global_step()
    if accumulate_steps > 1:
        pixels = tf.maximum(tf.reduce_sum(correct_label), 1.0)  # the loss's denominator: the batch's valid pixels
        train_op = accumulated_update(optimizer, cross_entropy_loss * pixels, pixels, decay_loss, global_step,
                                      accumulate_steps)
    else:
        total_loss = cross_entropy_loss if decay_loss is None else cross_entropy_loss + decay_loss
        train_op = optimizer.minimize(total_loss, global_step=global_step, name='train_op')
    return logits, train_op, cross_entropy_loss


def accumulated_update(optimizer, pixel_loss, pixels, decay_loss, global_step, steps):
    """The train op of gradient accumulation. Every step adds the gradient of its pixel loss (summed over its valid
    pixels) and its pixels up, and counts one step; every steps-th step the optimizer applies their quotient (the
    gradient of the mean over all their pixels: one batch steps times larger) plus the weight decay's gradient
    once, and the sums start again from zero. The sums are variables: a checkpoint keeps them."""
    variables = tf.trainable_variables()
    sums = [tf.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, name=v.op.name + '/accumulated')
            for v in variables]
    count = tf.Variable(0.0, trainable=False, name='accumulated_pixels')
    grads = tf.gradients(pixel_loss, variables)
    decay_grads = tf.gradients(decay_loss, variables) if decay_loss is not None else [None] * len(variables)
    added = [s.assign_add(g) for s, g in zip(sums, grads) if g is not None]
    added += [count.assign_add(pixels), global_step.assign_add(1)]

    def update():
        gradients = [s / count if d is None else s / count + d for s, d in zip(sums, decay_grads)]
        with tf.control_dependencies([optimizer.apply_gradients(zip(gradients, variables))]):
            return tf.group(*[s.assign(tf.zeros_like(s)) for s in sums], count.assign(0.0))

    with tf.control_dependencies(added):
        return tf.cond(tf.equal(global_step.read_value() % steps, 0), update, tf.no_op, name='train_op')


def masked_cross_entropy(nn_last_layer, correct_label, num_classes, valid_pixels=None):
    """(logits [N*H*W, K], the softmax cross-entropy summed over valid pixels and divided by valid_pixels):
    a labelled pixel has a one-hot label (scaled by its class weight with --balance-classes: a weighted mean), an
    invalid one (KITTI's black area) all zeros and counts nowhere. valid_pixels defaults to this batch's; a
    replica that sees part of a batch divides by the whole batch's."""
    logits = tf.reshape(nn_last_layer, [-1, num_classes], name='logits')
    labels = tf.reshape(correct_label, [-1, num_classes])
    valid = tf.reduce_sum(labels, axis=1)  # a labelled pixel's weight (1 unbalanced), 0 for an invalid one
    # The op's gradient (softmax - labels) holds for labels that sum to 1 only: weigh its loss, not its labels.
    pixel_loss = valid * tf.nn.softmax_cross_entropy_with_logits_v2(
        labels=labels / tf.maximum(valid, 1e-12)[:, None], logits=logits)
    valid_pixels = tf.reduce_sum(valid) if valid_pixels is None else valid_pixels
    return logits, tf.divide(tf.reduce_sum(pixel_loss), tf.maximum(valid_pixels, 1.0), name='cross_entropy_loss')


# The network as the library's modules take it (cluster.py replicates it, run_folder.py exports it): main's
# stage functions, layers with a run's skip scales.
Network = collections.namedtuple('Network', 'layers optimize masked_cross_entropy')


def network(skip_scales=UNSCALED_SKIPS):
    """The Network of a run whose skips are scaled by skip_scales (pool4's, pool3's; None: FCN's)."""
    return Network(functools.partial(layers, skip_scales=skip_scales), optimize, masked_cross_entropy)


# ------------------------------------------------------------------------------------------------ training

def learning_rate_at(step, total_steps, base, warmup_steps=WARMUP_STEPS):
    """Learning rate of step 1..total_steps: linear warm-up, then base * (1 - progress) ** POLY_POWER."""
    warmup = min(1.0, step / max(warmup_steps, 1))
    progress = (step - 1) / total_steps if total_steps else 0.0
    return base * warmup * (1.0 - progress) ** POLY_POWER


# What TensorFlow raises for an op it has no kernel for (these types, this device): at the first step, a setup
# the user can change (--precision), not a bug of a step that ran before.
KERNEL_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError)
# A training loss this many times its first value (or 1, if that was lower) has blown up, though finite: a
# healthy run's mean cross-entropy starts near ln(classes) and never climbs to a hundred nats.
DIVERGED_LOSS_FACTOR = 100


def diverged(loss, first_loss):
    """Whether a training loss is NaN, infinite, or blown up: DIVERGED_LOSS_FACTOR times the run's first loss."""
    return not np.isfinite(loss) or loss > DIVERGED_LOSS_FACTOR * max(first_loss, 1.0)


def training_step(sess, fetches, feed, run_options, first):
    """The loss of one training step (fetches: the train op, the loss). The run's first step failing for a kernel
    TensorFlow lacks raises FirstStepFailed, for the caller to say which arithmetic and what to try."""
    try:
        return sess.run(fetches, feed, options=run_options)[1]
    except KERNEL_ERRORS as e:
        if not first:
            raise
        raise FirstStepFailed(f'TensorFlow could not run the first training step ({type(e).__name__}: '
                              f'{e.message.splitlines()[0]})') from None


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5, learning_rate_value=1e-4,
             num_images=None, start=(0, ()), validation=(None, None), recorder=(None, None), run_options=None):
    """Train for `epochs` passes over get_batches_fn(batch_size) of num_images images; return one dict per epoch.

    num_images (when known) gives the progress bar its length and the learning rate its poly decay
    (learning_rate_at; without it, the warm-up only). start: (steps already taken, records of the finished
    epochs) of a resumed run: training goes on in the middle of the epoch where it stopped, skipping the batches
    that epoch already had (get_batches_fn must then yield that epoch's batches in the same order, as
    batches.batch_function's first_epoch does).

    validation: (validate_fn, patience). validate_fn() -> (dict of validation figures such as val_max_f,
    {name: overlay image}) runs after each epoch; its figures are printed and recorded. With patience N, training
    stops once the validation score (MaxF; mean IoU for scene parsing) has not improved for N epochs.
    recorder: (on_step, on_epoch_end), run_folder.epoch_recorder's: on_step(step, loss) after every step,
    on_epoch_end(history, overlays) after each epoch. A loss that becomes NaN, infinite or DIVERGED_LOSS_FACTOR
    times its first value raises LossDiverged naming the step. run_options (a RunOptions: a timeout) go with
    every training step.
    """
    (step, history), (validate_fn, patience), (on_step, on_epoch_end) = start, validation, recorder
    history, first_loss = list(history), None
    num_batches = -(-num_images // batch_size) if num_images else None
    total_steps = num_batches * epochs if num_batches else None
    first_epoch, skip = divmod(step, num_batches) if step else (0, 0)
    for epoch in range(first_epoch + 1, epochs + 1):
        begun, losses, overlays = time.time(), [], {}
        done = skip if epoch == first_epoch + 1 else 0  # batches this epoch had before the run stopped
        batches = prefetch(itertools.islice(get_batches_fn(batch_size), done, None))
        bar = tqdm(batches, total=num_batches, initial=done, desc=f'epoch {epoch}/{epochs}', leave=False)
        try:
            for images, labels in bar:
                feed = {input_image: images, correct_label: labels, keep_prob: keep_prob_value}
                step += 1
                if learning_rate is not None:
                    feed[learning_rate] = learning_rate_at(step, total_steps, learning_rate_value)
                loss = training_step(sess, [train_op, cross_entropy_loss], feed, run_options, first_loss is None)
                first_loss = loss if first_loss is None else first_loss
                if diverged(loss, first_loss):
                    bar.close()
                    raise LossDiverged(f'the training loss became {loss:.4g} at step {step} (epoch {epoch}; it was '
                                       f'{first_loss:.4g} at this run\'s first step): training diverged and stopped. '
                                       'Start a new run with a lower --learning-rate.')
                losses.append(float(loss))
                bar.set_postfix(loss=f'{np.mean(losses):.4f}')
                if on_step is not None:
                    on_step(step, float(loss))
        finally:
            batches.close()  # stops the producer thread, also on an error or Ctrl-C
        record = {'epoch': epoch, 'loss': float(np.mean(losses)) if losses else float('nan')}
        if validate_fn is not None:
            figures, overlays = validate_fn()
            record.update(figures)
        record['seconds'] = round(time.time() - begun, 1)
        history.append(record)
        print(' '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in record.items()
                       if not isinstance(v, (dict, list))), flush=True)
        if patience and validate_fn is not None:
            best = max(history, key=score_key)
            record['early_stop'] = epoch - best['epoch'] >= patience
        if on_epoch_end is not None:
            on_epoch_end(history, overlays)
        if record.get('early_stop'):
            print(f'early stop: the validation score has not improved for {patience} epoch(s) since epoch '
                  f'{best["epoch"]}', flush=True)
            break
    return history


def build_fcn(sess, vgg_dir, seed, num_classes=NUM_CLASSES, skip_scales=None, accumulate_steps=1):
    """FCN-8s with its training ops in sess's graph, every variable initialised: the VGG16 SavedModel in vgg_dir
    (or, for None, a He-initialised one seeded by seed), then layers (with skip_scales) and optimize for
    num_classes (accumulating accumulate_steps batches' gradients). Returns the tensors by name."""
    tf.set_random_seed(seed)
    correct_label = tf.placeholder(tf.float32, [None, None, None, num_classes], name='correct_label')
    learning_rate = tf.placeholder(tf.float32, [], name='learning_rate')
    channels = vgg.own_channels(vgg_dir) if vgg_dir else None
    restored = set()  # the loaded weights: not to re-initialise
    if channels:  # the project's own SavedModel: its graph built here, fc6/fc7 as matrix products, weights below
        input_image, keep_prob, layer3, layer4, layer7 = vgg.build_vgg16(channels, seed=seed)
    elif vgg_dir:
        try:
            input_image, keep_prob, layer3, layer4, layer7 = load_vgg(sess, vgg_dir)
        except (RuntimeError, KeyError, ValueError, tf.errors.OpError) as e:
            raise UserError(f'{vgg_dir} is not a VGG16 SavedModel tagged "{vgg.TAG}" with the Udacity tensors '
                            f'{", ".join(vgg.TENSOR_NAMES)}: {e}') from None
        restored = {v.name for v in tf.global_variables()}
    else:
        input_image, keep_prob, layer3, layer4, layer7 = vgg.build_vgg16(seed=seed)
    nn_last_layer = layers(layer3, layer4, layer7, num_classes, skip_scales)
    logits, train_op, cross_entropy_loss = optimize(nn_last_layer, correct_label, learning_rate, num_classes,
                                                    accumulate_steps=accumulate_steps)
    sess.run(tf.variables_initializer([v for v in tf.global_variables() if v.name not in restored]))
    if channels:
        vgg.restore_saved_model_weights(sess, vgg_dir)
    return dict(input_image=input_image, keep_prob=keep_prob, correct_label=correct_label,
                learning_rate=learning_rate, logits=logits, train_op=train_op,
                cross_entropy_loss=cross_entropy_loss, train_loss=cross_entropy_loss)


# ------------------------------------------------------------------------------------------------ the job

def run(argv=None, args=None):
    """The whole job, as in Udacity's project: data, weights, graph, training, outputs; with --resume, the rest
    of a stopped run. argv: the training flags (default: the process's); args: the same already parsed (main's).
    On several devices or machines (cluster.py) the same job, with one writer: the chief. Returns the run folder
    (None on the other workers)."""
    argv = sys.argv[1:] if argv is None else argv
    args = command_line.parse_args(argv) if args is None else args
    workers = cluster.from_environment()  # a bad TF_CONFIG stops here, before anything is read or written
    resume = resumed(args)
    if args.accumulate_steps > 1 and workers.replicas > 1:
        raise UserError(f'--accumulate-steps {args.accumulate_steps} trains on one device: several devices or '
                        'machines already make the batch larger (--batch-size is per step, over all replicas)')
    data = load_data(args, resume, workers)  # every file read and checked before the weights, the run folder
    arithmetic = precision.choose(args.precision)  # before the weights and the run folder: bf16 may be refused
    encoder = encoder_weights(args, resume, workers)
    recipe = {**data.recipe, 'learning_rate': encoder_learning_rate(args, data.recipe, data.layout.kind,
                                                                    random_encoder=encoder['vgg_dir'] is None)}
    run_dir, config = run_folder.start(args, argv, data, recipe, resume, arithmetic, workers, encoder)
    vgg_dir, fcn = encoder['vgg_dir'], network(encoder.get('skip_scales'))

    session_config = cluster.session_config(workers, precision.training_config(arithmetic[0]))
    with tf.Graph().as_default(), tf.Session(workers.target, config=session_config) as sess:
        num_classes = len(data.layout.classes)
        if workers.strategy is None:
            net = build_fcn(sess, vgg_dir, args.seed, num_classes, encoder.get('skip_scales'), args.accumulate_steps)
        else:
            net = cluster.build_replicated_fcn(sess, workers, vgg_dir, args.seed, fcn, num_classes,
                                               (data.source, data.train_names, data.val_names), data.dataset)
        try:
            history, best = train(sess, net, args, data, recipe, run_dir, resume, workers)
        except FirstStepFailed as e:
            hint = 'try --precision fp32' if arithmetic[0] == 'bf16' else 'reinstall: pip install -r requirements.txt'
            raise UserError(f'{e}, in {arithmetic[0]} arithmetic ({arithmetic[1]}): {hint}') from None
        if not workers.chief:
            print(f'task {workers.described["task"]} finished training; the chief writes the outputs', flush=True)
            return None
        best_checkpoint = run_folder.restore_best(sess, best, run_dir)  # the run's model from here on
        record = max(history, key=score_key)
        print(f'validation scores (%) of the best epoch, {record["epoch"]}:\n'
              + evaluation.format_record_table(record, data.layout.classes), flush=True)
        with files.writing(run_dir, 'the test-set outputs'):
            outputs.save_test_outputs(sess, net['logits'], net['keep_prob'], net['input_image'], data.layout,
                                      recipe['image_shape'], run_dir)
    run_folder.finish(run_dir, config, best_checkpoint, vgg_dir, fcn.layers, args.keep_last_checkpoint,
                      data.layout.classes)
    print(f'test-set outputs, checkpoints/best, {run_folder.SERVING_DIR}/ and the records written to {run_dir}')
    return run_dir


def train(sess, net, args, data, recipe, run_dir, resume, workers):
    """train_nn with validation after each epoch and, on the chief, the run folder's records and checkpoints
    as training goes; every worker validates, so that all stop together. Returns (history, best Checkpoint)."""
    last, best = run_folder.make_checkpoints()
    if resume:
        last.saver.restore(sess, resume.checkpoint)
    validate_fn = evaluation.make_validate_fn(sess, net, data.val_examples, recipe['image_shape'], data.layout,
                                              min(evaluation.VALIDATION_BATCH, 2 * recipe['batch_size']))
    if workers.chief:
        run_folder.warn_if_short_of_space(run_dir, (last, best))
        recorder = run_folder.epoch_recorder(sess, run_dir, (last, best), data.history, data.layout.classes)
        stopping = run_folder.checkpoint_on_interrupt(sess, last, run_dir, tf.train.get_global_step(),
                                                      -(-len(data.train_names) // recipe['batch_size']))
    else:
        recorder, stopping = (None, None), contextlib.nullcontext()
    get_batches = cluster.padded(data.get_batches_fn, workers.replicas) if workers.replicas > 1 else data.get_batches_fn
    sess.graph.finalize()  # from here on, a new op would be a bug (e.g. one built per image)
    with stopping, cluster.reporting_lost_workers(workers):
        history = train_nn(sess, data.epochs, recipe['batch_size'], get_batches, net['train_op'],
                           net['train_loss'], net['input_image'], net['correct_label'], net['keep_prob'],
                           net['learning_rate'], keep_prob_value=recipe['keep_prob'],
                           learning_rate_value=recipe['learning_rate'], num_images=len(data.train_names),
                           start=(data.start_step, data.history), validation=(validate_fn, args.patience),
                           recorder=recorder, run_options=cluster.run_options(workers, args.worker_timeout))
    return history, best


def resumed(args):
    """The stopped run of --resume (None without it), its own settings put into args; of the operational flags,
    a switch turned on stays on."""
    if not args.resume:
        return None
    resume = run_folder.load_run(args.resume)
    saved = {'balance_classes': False, **resume.config['settings']}  # (runs from before the flag: unbalanced)
    vars(args).update({k: v for k, v in saved.items()
                       if k in vars(args) and k != 'resume' and (k not in OPERATIONAL or v is True)})
    return resume


# A run's training data: source, layout, the data's recipe, split (and which), batches, validation examples,
# first step and records, epochs.
TrainingData = collections.namedtuple('TrainingData', 'dataset source layout recipe train_names val_names split '
                                                      'get_batches_fn val_examples start_step history epochs')


def load_data(args, resume, workers):
    """The run's TrainingData: the dataset (resume's, or datasets.resolve's) opened by its provider, its recipe,
    its split (its own validation split, or stretches of frames held out), every training and validation file
    read and checked."""
    if resume:
        dataset, source = resume.config['data']['dataset'], resume.config['data']['source']
        if not os.path.isdir(dataset):
            raise UserError(f'--resume {args.resume}: its dataset {dataset} is gone')
    else:
        counts = RECIPES['synthetic']['num_train'], RECIPES['synthetic']['num_test']
        # Only the chief downloads or generates: the other workers of a cluster may share its data folder.
        dataset, source = datasets.resolve(args.dataset, args.data_dir, args.kitti_url,
                                           workers.chief and not args.no_download, counts,
                                           0 if workers.chief else args.worker_timeout)
    layout, summary = datasets.open_training_layout(dataset, args.classes, args.background, source)
    print(summary, flush=True)
    recipe = settings(args, source, layout.kind)
    train_names, val_names, split_said = split(args, resume, layout)
    start_step, history = (resume.step, resume.history) if resume else (0, [])
    finished_epochs = start_step // -(-len(train_names) // recipe['batch_size'])
    history = [h for h in history if h['epoch'] <= finished_epochs]  # the records of checkpointed epochs
    epochs = history[-1]['epoch'] if history and history[-1].get('early_stop') else recipe['epochs']
    get_batches_fn = batches.batch_function(labelled_pairs(layout, train_names, '--dataset'), recipe['image_shape'],
                                            layout.load_pair, len(layout.classes), args.seed, finished_epochs,
                                            augment=not args.no_augment, balance=recipe['balance_classes'],
                                            check_pair=layout.check_pair)
    val_pairs = labelled_pairs(layout, val_names, f'--resume {args.resume}' if resume else '--dataset')
    val_examples = evaluation.load_examples(val_pairs, layout.load_pair)
    return TrainingData(dataset, source, layout, recipe, train_names, val_names, split_said, get_batches_fn,
                        val_examples, start_step, history, epochs)


def split(args, resume, layout):
    """(training names, validation names, which split): a resumed run's own, one sequence held out whole
    (--val-sequence), the layout's validation split, or stretches of consecutive frames held out (--val-fraction)."""
    names = [n for n, _, _ in layout.train + (layout.val or [])]
    if resume:  # the run's own split, whatever splitting does today
        own_train = None if layout.val is None or args.val_sequence else [n for n, _, _ in layout.train]
        return (*run_folder.resumed_split(resume, names, own_train), resume.config['data'].get('split'))
    if args.val_sequence:
        train_names = [n for n in names if layout.category(n) != args.val_sequence]
        val_names = [n for n in names if layout.category(n) == args.val_sequence]
        said = f'the sequence {args.val_sequence} held out whole, every other image trained on (--val-sequence)'
        if not val_names:
            raise UserError(f'--val-sequence {args.val_sequence}: no image of {layout.root} belongs to it; its '
                            f'sequences: {", ".join(sorted({layout.category(n) for n in names}))}')
    elif layout.val is None:
        train_names, val_names = split_train_val(names, args.val_fraction, args.seed, layout.category)
        said = f'stretches of consecutive frames of each sequence held out (--val-fraction {args.val_fraction:g})'
    else:
        train_names, val_names = [n for n, _, _ in layout.train], [n for n, _, _ in layout.val]
        said = 'the dataset\'s own validation split'
    if not train_names or not val_names:
        flag = f'--val-sequence {args.val_sequence}' if args.val_sequence else f'--val-fraction {args.val_fraction}'
        raise UserError(f'{flag} leaves {len(train_names)} training and {len(val_names)} validation images of '
                        f'{len(names)}: both need at least one')
    print(f'validation: {len(val_names)} images, {said}', flush=True)
    return train_names, val_names, said


def encoder_weights(args, resume, workers):
    """The encoder's weights of a run: source, vgg_dir (None: He-initialised) and skip_scales (older runs: none,
    that is FCN's; older pretrained runs recorded FCN's); a new run's resolved by weights.resolve_weights
    (downloaded or converted where needed, by the chief only), its skips unscaled."""
    if resume:
        saved = resume.config['weights']
        if saved['vgg_dir'] and not weights.vgg_is_complete(saved['vgg_dir']):
            raise UserError(f'--resume {args.resume}: its VGG16 {saved["vgg_dir"]} is gone')
        return saved
    vgg_dir, source = weights.resolve_weights(args.data_dir, args.vgg_init, args.vgg_dir, args.imagenet_weights,
                                              args.vgg_url, download=workers.chief and not args.no_download)
    return {**source, 'vgg_dir': vgg_dir and os.path.abspath(vgg_dir), 'skip_scales': UNSCALED_SKIPS}


def settings(args, data_source, kind='kitti'):
    """The effective training settings of the data: the recipe of its source and layout, overridden by the flags
    given; segmenting road alone (KITTI, or --classes road) is not class-balanced unless asked. The learning
    rate is the recipe's until the encoder is known (encoder_learning_rate)."""
    recipe = RECIPES['synthetic' if data_source == 'synthetic' else kind]
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in recipe.items()
              if k in ('epochs', 'batch_size', 'learning_rate', 'keep_prob', 'image_shape', 'balance_classes')}
    chosen['image_shape'] = tuple(chosen['image_shape'])
    if args.balance_classes is None and road_alone(args, kind):
        chosen['balance_classes'] = False
    return chosen


def encoder_learning_rate(args, recipe, kind, random_encoder):
    """The peak learning rate: the recipe's (or --learning-rate's), but RANDOM_ENCODER_LEARNING_RATE for a random
    encoder learning scene parsing, unless --learning-rate says otherwise."""
    if args.learning_rate is None and random_encoder and not road_alone(args, kind):
        return RANDOM_ENCODER_LEARNING_RATE
    return recipe['learning_rate']


def road_alone(args, kind):
    """Whether a run segments road alone: KITTI Road, or --classes road."""
    return args.classes == 'road' or kind == 'kitti'


# ---------------------------------------------------------------------------------------- command line

def main(argv=None, parsed=None):
    """The command line: `python main.py [flags]` trains (run); `python main.py evaluate|optimize|infer|synthetic
    ...` runs that command. parsed: argv already parsed, (command, flags). A UserError is one `error:` line and
    exit code 2; anything else keeps its traceback."""
    argv = sys.argv[1:] if argv is None else argv
    command, args = command_line.parse(argv) if parsed is None else parsed
    precision.reuse_cpu_memory()
    commands = {'train': lambda a: run(argv, a), 'evaluate': lambda a: evaluation.evaluate_command(a, build_fcn),
                'optimize': variants.optimize_command, 'infer': infer.infer_command,
                'synthetic': synthetic.synthetic_command, 'serve': serving.serve_command}
    try:
        commands[command](args)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:], COMMAND_LINE))
