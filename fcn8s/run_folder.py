"""What a training run keeps in its folder, RUNS_DIR/<YYYYmmdd-HHMMSS>/: config.json and metrics.json,
checkpoints (last: everything to resume; best: the model) and resuming from them, TensorBoard events and plots,
and the exported SavedModel.

Every file is committed so that an interruption anywhere, a Ctrl-C or a full disk, leaves a run that
`python main.py --resume RUN_DIR` continues: a checkpoint counts only once TensorFlow has written all of it.
"""
import collections
import contextlib
import json
import os
import platform
import shutil
import sys
import time

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf

from fcn8s import files, outputs, plots, precision, vgg
from fcn8s.command_line import OPERATIONAL
from fcn8s.errors import LossDiverged, UserError
from fcn8s.metrics import ROAD_CLASSES, is_road, score_key
from fcn8s.paths import BEST_CHECKPOINT, LAST_CHECKPOINT, SERVING_DIR

# The validation figures drawn in TensorBoard, where a record has them (road models, or scene parsing).
SCALARS = ('val_max_f', 'val_iou_at_0.5', 'val_mean_iou', 'val_pixel_accuracy', 'val_mean_accuracy')

# A stopped run to continue: its config.json, the path of its last checkpoint, that checkpoint's global step,
# and the metrics.json records of the epochs it finished.
Resume = collections.namedtuple('Resume', 'config checkpoint step history')
# A kind of checkpoint of a run: its saver, its folder inside the run folder, and the bytes one checkpoint takes.
Checkpoint = collections.namedtuple('Checkpoint', 'saver folder bytes')


def new_run_dir(runs_dir):
    """Create and return runs_dir/<YYYYmmdd-HHMMSS>, with a suffix if that exists: never reuse a folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    with files.writing(runs_dir, 'a run folder'):
        os.makedirs(runs_dir, exist_ok=True)
        for suffix in [''] + [f'-{i}' for i in range(1, 100)]:
            path = os.path.join(runs_dir, stamp + suffix)
            try:
                os.makedirs(path)
                return path
            except FileExistsError:
                continue
    raise UserError(f'could not create a new run folder in {runs_dir}')


def read_config(run_dir, flag):
    """The config.json of a run folder; UserError naming the flag and the file if it is not one or is damaged."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.isfile(path):
        raise UserError(f'{flag} {run_dir}: not a run folder of this project (it has no config.json)')
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{flag} {run_dir}: its {path} cannot be read ({e}); without it the run\'s settings are '
                        'unknown') from None


def load_run(run_dir):
    """The Resume state of a run folder; UserError if it cannot be resumed."""
    config = read_config(run_dir, '--resume')
    if config.get('finished'):
        raise UserError(f'--resume {run_dir}: that run finished ({config["finished"]}); nothing to resume')
    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, LAST_CHECKPOINT))
    if checkpoint is None:
        raise UserError(f'--resume {run_dir}: no checkpoint in {os.path.join(run_dir, LAST_CHECKPOINT)} (a run '
                        'saves one after each epoch and when interrupted)')
    try:
        with open(os.path.join(run_dir, 'metrics.json')) as f:
            history = json.load(f)['epochs']
    except (OSError, ValueError, KeyError):
        history = []
    step = int(tf.train.load_variable(checkpoint, tf.GraphKeys.GLOBAL_STEP))
    return Resume(config, checkpoint, step, history)


def resumed_split(resume, names, own_train=None):
    """(train names, val names) of a resumed run: its own validation names, and for training its layout's own
    train split (own_train) or else the dataset's other images; UserError if their number changed since the
    run started, which would change every batch after the resume."""
    data = resume.config['data']
    val_names = data['val_names']
    held = set(val_names)
    train_names = [n for n in names if n not in held] if own_train is None else own_train
    if len(train_names) != data['train_images']:
        raise UserError(f'--resume: its dataset {data["dataset"]} changed: {len(train_names)} training images '
                        f'now, {data["train_images"]} when the run started (the batches would not be the same)')
    return train_names, val_names


def finished_run(run_dir, flag):
    """(config, its SavedModel folder) of a run that finished, whose serving model was exported."""
    config = read_config(run_dir, flag)
    saved_model = os.path.join(run_dir, SERVING_DIR)
    if not config.get('finished') or not os.path.isfile(os.path.join(saved_model, 'saved_model.pb')):
        raise UserError(f'{flag} {run_dir}: that run has not finished, so it has no {SERVING_DIR}/ yet '
                        f'(python main.py --resume {run_dir} finishes it)')
    return config, saved_model


def write_config(run_dir, config):
    with files.writing(run_dir, 'config.json'):
        files.write_json(os.path.join(run_dir, 'config.json'), config)


def start(args, argv, data, recipe, resume, arithmetic, workers, encoder):
    """(run folder, its config) of a new run of main.py (argv: its flags, args parsed; data: main's TrainingData),
    or of the resumed one; config.json written either way, with the recipe, the encoder's weights, the (precision,
    why) chosen and the cluster, and the run's line printed. Only the chief writes: other workers get (None,
    None)."""
    if resume:
        run_dir, config = args.resume, resume.config
        config.setdefault('resumed', []).append({'at_step': data.start_step, 'precision': arithmetic[0],
                                                 'cluster': workers.described,
                                                 'flags': {k: getattr(args, k) for k in OPERATIONAL},
                                                 'time': time.strftime('%Y-%m-%d %H:%M:%S')})
    else:
        run_dir = new_run_dir(args.runs_dir) if workers.chief else None
        config = {
            'command': ['main.py', *argv],
            'settings': {**vars(args), **recipe},
            'data': {'source': data.source, 'dataset': os.path.abspath(data.dataset), 'layout': data.layout.kind,
                     'classes': list(data.layout.classes), 'palette': [list(c) for c in data.layout.palette],
                     'train_images': len(data.train_names),
                     'val_images': len(data.val_names), 'val_names': data.val_names, 'split': data.split},
            'weights': encoder,
            'precision': {'chosen': arithmetic[0], 'why': arithmetic[1]},
            'machine': precision.machine(),
            'cluster': workers.described,
            'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__, 'numpy': np.__version__},
        }
    if not workers.chief:
        return None, None
    write_config(run_dir, config)
    print(f'run folder {run_dir}: data {data.source} ({len(data.train_names)} train, {len(data.val_names)} val), '
          f'weights {encoder["source"]}, precision {arithmetic[0]} ({arithmetic[1]}), '
          f'{workers.described["strategy"]} ({workers.replicas} replica(s), {workers.workers} worker(s)), {recipe}'
          + (f', resuming at step {data.start_step}' if resume else ''), flush=True)
    return run_dir, config


# ------------------------------------------------------------------------------------------------- checkpoints

def make_checkpoints():
    """(last, best) Checkpoints of the default graph: last holds every variable (weights, Adam's moments, the
    step: all that resuming needs), best the weights of the best epoch. No meta graph: the code rebuilds it."""
    kinds = []
    for variables, folder in ((tf.global_variables(), LAST_CHECKPOINT), (tf.trainable_variables(), BEST_CHECKPOINT)):
        saver = tf.train.Saver(variables, max_to_keep=1, save_relative_paths=True)
        kinds.append(Checkpoint(saver, folder, sum(v.shape.num_elements() * v.dtype.base_dtype.size
                                                   for v in variables)))
    return tuple(kinds)


def warn_if_short_of_space(run_dir, checkpoints):
    """Warn when the disk of run_dir cannot hold what the run will write: each checkpoint twice (the next one is
    written before the previous one is deleted) and the exported model, the size of the best checkpoint."""
    last, best = checkpoints
    needs = {last.folder: 2 * last.bytes, best.folder: 2 * best.bytes, SERVING_DIR: best.bytes}
    free = files.free_bytes(run_dir)
    if free < sum(needs.values()):
        parts = ', '.join(f'{what} {files.size_text(n)}' for what, n in needs.items())
        print(f'warning: {run_dir} has {files.size_text(free)} free, but this run may need '
              f'{files.size_text(sum(needs.values()))} ({parts}); if the disk fills up it stops with an error and '
              'can be resumed once there is space', file=sys.stderr, flush=True)


def _out_of_disk(error):
    """Whether a TensorFlow or OS error while writing is a full, read-only or forbidden disk (the user's)."""
    message = getattr(error, 'message', '') or str(error)
    return isinstance(error, tf.errors.ResourceExhaustedError) or files.is_disk_error(error) or any(
        text in message for text in ('No space left', 'Read-only file system', 'Permission denied'))


def save_checkpoint(checkpoint, sess, run_dir, global_step):
    """Save a checkpoint into its folder of run_dir. A failure leaves the previous checkpoint the latest one; a
    full disk is a UserError naming the folder and the space a checkpoint needs."""
    path = os.path.join(run_dir, checkpoint.folder)
    step = sess.run(global_step)
    try:
        os.makedirs(path, exist_ok=True)
        checkpoint.saver.save(sess, os.path.join(path, 'model'), global_step=step, write_meta_graph=False)
    except (tf.errors.OpError, OSError) as e:
        # TensorFlow writes each file under a temporary name, removes it on failure, and updates the `checkpoint`
        # state file only once a checkpoint is complete: the previous one stays the latest.
        if not _out_of_disk(e):
            raise
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, LAST_CHECKPOINT))
        raise UserError(f'cannot write a checkpoint into {path}: the disk is full or not writable (a checkpoint '
                        f'there needs {files.size_text(checkpoint.bytes)}, {files.size_text(files.free_bytes(path))} '
                        f'are free). Free some space, then continue with python main.py --resume {run_dir}'
                        + (f' (from {os.path.basename(latest)})' if latest else ' (no epoch was saved yet: start '
                                                                                'again)')) from None


def restore_best(sess, best, run_dir):
    """Restore the best epoch's weights (the best Checkpoint's latest) into sess and return that checkpoint;
    UserError when no epoch had a finite validation score."""
    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, best.folder))
    if checkpoint is None:
        raise UserError('no epoch had a finite validation score (a validation split without a class to score?): '
                        f'no best model; see {os.path.join(run_dir, "metrics.json")}')
    best.saver.restore(sess, checkpoint)
    return checkpoint


@contextlib.contextmanager
def checkpoint_on_interrupt(sess, last, run_dir, global_step, num_batches):
    """Ctrl-C saves a last checkpoint mid-epoch and says how to resume; a training error (a diverged loss) names
    the last good checkpoint."""
    try:
        yield
    except KeyboardInterrupt:
        step = sess.run(global_step)
        if step % num_batches:  # mid-epoch; at an epoch's end its own checkpoint (or none: redo it) stands
            save_checkpoint(last, sess, run_dir, global_step)
        saved = tf.train.latest_checkpoint(os.path.join(run_dir, LAST_CHECKPOINT))
        print(f'\ninterrupted at step {step}: the last checkpoint is {saved or "none (no epoch finished)"}.'
              + (f' To continue: python main.py --resume {run_dir}' if saved else ''), file=sys.stderr, flush=True)
        raise
    except LossDiverged as e:
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, LAST_CHECKPOINT))
        raise UserError(f'{e} The last good checkpoint is {latest or "none (no epoch finished)"}.') from None


# ------------------------------------------------------------------------------------ metrics, events, plots

def scalar_summary(values):
    """A TensorBoard Summary of {tag: float}, made without graph ops (the graph is finalised)."""
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()
                             if value is not None and np.isfinite(value)])


def image_summary(tag, image):
    """A TensorBoard Summary of one uint8 image [H, W, 3]."""
    encoded = iio.imwrite('<bytes>', image, extension='.png')
    return tf.Summary(value=[tf.Summary.Value(tag=tag, image=tf.Summary.Image(
        height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=encoded))])


def epoch_recorder(sess, run_dir, checkpoints, history, classes):
    """(on_step, on_epoch_end) for train_nn: TensorBoard events (`tensorboard --logdir runs`) of every step, and
    after each epoch its events, plots, the best checkpoint if it is the best epoch, metrics.json and the last
    checkpoint. history: the records of the epochs already finished (a resumed run's); classes: the model's."""
    last, best = checkpoints
    writer = tf.summary.FileWriter(run_dir)
    global_step = tf.train.get_global_step()
    best_score = max(map(score_key, history), default=-np.inf)

    def on_step(step, loss):
        writer.add_summary(scalar_summary({'train/loss': loss}), step)

    def on_epoch_end(epochs, overlays):
        nonlocal best_score
        record, step = epochs[-1], sess.run(global_step)
        writer.add_summary(scalar_summary({'epoch/loss': record['loss'], 'val/loss': record['val_loss'],
                                           **{f'val/{key[4:]}': record[key] for key in SCALARS if key in record}}),
                           step)
        for name, image in overlays.items():
            writer.add_summary(image_summary(f'val/{name}', image), step)
        writer.flush()
        with files.writing(run_dir, 'the plots and metrics.json'):
            plots.plot_history(epochs, os.path.join(run_dir, 'history.png'))
            plots.plot_scores(record, is_road(classes), run_dir, '', f'validation, epoch {record["epoch"]}')
        # Committed in this order so that an interruption anywhere leaves a consistent run: a best checkpoint
        # without its record is saved again when the epoch is redone, and a record whose last checkpoint is
        # missing is dropped on resume (history is cut at the checkpoint's step).
        if score_key(record) > best_score:
            save_checkpoint(best, sess, run_dir, global_step)
            best_score = score_key(record)
        with files.writing(run_dir, 'metrics.json'):
            files.write_json(os.path.join(run_dir, 'metrics.json'), {'epochs': epochs})
        save_checkpoint(last, sess, run_dir, global_step)

    return on_step, on_epoch_end


# ------------------------------------------------------------------------------------------- the end of a run

def tensor_info(tensor):
    """The TensorInfo a signature records of tensor: what predict_signature_def builds, without the TF1 deprecation
    notice its helper logs at the end of every run."""
    return tf.TensorInfo(name=tensor.name, dtype=tensor.dtype.as_datatype_enum, tensor_shape=tensor.shape.as_proto())


def export_serving_model(checkpoint, vgg_dir, seed, export_dir, layers, classes=ROAD_CLASSES):
    """Write the model of checkpoint as a SavedModel (tag `serve`) whose `serving_default` signature maps
    `image` [N, H, W, 3] raw RGB 0-255 (H, W multiples of 32: the run's image_shape is what it was trained at)
    to `road_probability` [N, H, W] for a road model, else to `class_probabilities` [N, H, W, K] (K classes):
    inference without this project's code. A fresh graph, without training ops: the VGG16 of vgg_dir (None: a
    He-initialised one, seeded) and layers, main's decoder with the run's skip scales; export_dir must not exist."""
    with tf.Graph().as_default(), tf.Session() as sess:
        if vgg_dir:
            # Udacity's keep_prob is a placeholder without a default: fixed at 1.0, serving needs only the image.
            tf.saved_model.loader.load(sess, [vgg.TAG], vgg_dir, input_map={vgg.KEEP_PROB: tf.constant(1.0)})
            input_image, layer3, layer4, layer7 = (sess.graph.get_tensor_by_name(name)
                                                   for name in (vgg.IMAGE_INPUT, *vgg.OUTPUTS))
        else:
            input_image, _, layer3, layer4, layer7 = vgg.build_vgg16(seed=seed, fc_as_matmul=False)
        last = layers(layer3, layer4, layer7, len(classes))
        logits = tf.reshape(last, [-1, len(classes)], name='logits')
        if is_road(classes):
            output = {'road_probability': tf.reshape(outputs.road_probability(logits), tf.shape(input_image)[:3],
                                                     name='road_probability')}
        else:
            output = {'class_probabilities': tf.reshape(outputs.class_probabilities(logits), tf.shape(last),
                                                        name='class_probabilities')}
        tf.train.Saver(tf.trainable_variables()).restore(sess, checkpoint)
        signature = tf.saved_model.build_signature_def({'image': tensor_info(input_image)},
                                                       {name: tensor_info(t) for name, t in output.items()},
                                                       tf.saved_model.PREDICT_METHOD_NAME)
        builder = tf.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(sess, [tf.saved_model.tag_constants.SERVING],
                                             signature_def_map={'serving_default': signature})
        builder.save()
    return export_dir


def finish(run_dir, config, best, vgg_dir, layers, keep_last, classes=ROAD_CLASSES):
    """Export the best checkpoint as RUN_DIR/saved_model, mark the run finished in config.json and, unless
    keep_last, delete checkpoints/last: a finished run cannot be resumed, so its training state is dead weight."""
    serving_dir = os.path.join(run_dir, SERVING_DIR)
    if os.path.isdir(serving_dir):  # this run's own, from an export that was interrupted
        shutil.rmtree(serving_dir)
    try:
        export_serving_model(best, vgg_dir, config['settings']['seed'], serving_dir, layers, classes)
    except (tf.errors.OpError, OSError) as e:
        shutil.rmtree(serving_dir, ignore_errors=True)
        if not _out_of_disk(e):
            raise
        raise UserError(f'cannot export the model into {serving_dir}: the disk is full or not writable '
                        f'({files.size_text(files.free_bytes(run_dir))} free). Free some space, then finish the run '
                        f'with python main.py --resume {run_dir}') from None
    config['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
    write_config(run_dir, config)
    if not keep_last:
        shutil.rmtree(os.path.join(run_dir, LAST_CHECKPOINT), ignore_errors=True)
