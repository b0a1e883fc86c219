"""Training on several devices and machines with TensorFlow's own runtime: the strategy (none for one device,
which runs Udacity's graph as it is; MirroredStrategy over the GPUs of a machine; MultiWorkerMirroredStrategy
with its collective all-reduce for the machines named by TF_CONFIG), the Session it runs in, which task is the
chief (the only one that writes), the replicated training graph, and clear errors for a bad TF_CONFIG or a
lost worker."""
import collections
import contextlib
import functools
import json
import os
import socket
import time
import zlib

import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from fcn8s import vgg
from fcn8s.errors import UserError
from fcn8s.metrics import NUM_CLASSES

# Setting the cluster up waits longer than a step (recipes.STEP_TIMEOUT_S): workers started by hand start minutes
# apart.
START_TIMEOUT_S = 600
# A killed process's ports close only once the kernel has freed its memory (gigabytes for the full VGG16), which
# can outlast the first error of its peers on a busy machine: lost tasks are looked for this long.
LOST_TASK_PATIENCE_S = 15
# Where a run's training data comes from (datasets.resolve), as the workers' data check names it.
SOURCES = ('user', 'kitti', 'synthetic')
SOURCE_NAMES = {'user': 'a --dataset folder', 'kitti': 'KITTI Road', 'synthetic': 'the generated road scenes'}
# Relative difference of two workers' weight fingerprints beyond what another summation order can round.
WEIGHTS_TOLERANCE = 1e-9

# strategy: None for one device; target: the Session's ('' in process); config: its ConfigProto (None: TF's
# defaults); replicas: over all workers; task: (type, index) in TF_CONFIG or None; server: the gRPC server that
# must live as long as the Session; described: what config.json records; spec: TF_CONFIG's {job: [host:port]}.
Cluster = collections.namedtuple('Cluster', 'strategy target config replicas workers task chief server described '
                                            'spec')


def local(devices=None):
    """The Cluster of this process alone: MirroredStrategy over devices (default: every GPU when there are
    several), or one device without a strategy."""
    gpus = tf.config.list_physical_devices('GPU')
    devices = devices or ([f'/gpu:{i}' for i in range(len(gpus))] if len(gpus) > 1 else None)
    if not devices:
        return Cluster(None, '', None, 1, 1, None, True, None,
                       {'strategy': 'one device', 'replicas': 1, 'workers': 1}, None)
    config = tf.ConfigProto()
    cpus = sum(device.startswith('/cpu') for device in devices)
    if cpus > 1:  # several CPU devices in one process: tests, where graph mode needs them in the Session config
        config.device_count['CPU'] = cpus
    strategy = tf.distribute.MirroredStrategy(devices)
    return Cluster(strategy, '', config, len(devices), 1, None, True, None,
                   {'strategy': 'MirroredStrategy', 'replicas': len(devices), 'workers': 1, 'devices': devices}, None)


def parse_tf_config(text):
    """(cluster {job: [host:port]}, task type, task index) of a TF_CONFIG value; UserError saying what is wrong."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UserError(f'TF_CONFIG is not valid JSON ({e}): it must look like {{"cluster": {{"worker": '
                        '["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}') from None
    if not isinstance(value, dict) or not isinstance(value.get('cluster'), dict) or not value['cluster']:
        raise UserError('TF_CONFIG has no "cluster": it must name the tasks, e.g. {"cluster": {"worker": '
                        '["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}')
    cluster, task = value['cluster'], value.get('task') or {}
    unknown = set(cluster) - {'chief', 'worker'}
    if unknown:
        raise UserError(f'TF_CONFIG names jobs {", ".join(sorted(unknown))}: multi-worker training takes "chief" and '
                        '"worker" tasks only (no parameter servers)')
    bad = [a for tasks in cluster.values() for a in (tasks if isinstance(tasks, list) else [tasks])
           if not isinstance(a, str) or ':' not in a or not a.rsplit(':', 1)[1].isdigit()]
    if bad or not all(isinstance(tasks, list) and tasks for tasks in cluster.values()):
        raise UserError(f'TF_CONFIG\'s cluster must list "host:port" addresses per job; got {bad or cluster}')
    kind, index = task.get('type'), task.get('index')
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        sizes = ', '.join(f'{job}: {len(tasks)}' for job, tasks in cluster.items())
        raise UserError(f'TF_CONFIG\'s task {task} is not in its cluster ({sizes} tasks): set "task": {{"type": ..., '
                        '"index": ...} to this machine\'s place in the cluster')
    return cluster, kind, index


def check_port_free(address):
    """UserError if this machine cannot listen on address's port (another program, or a task of a run that is
    still going, uses it)."""
    port = int(address.rsplit(':', 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(('', port))
        except OSError as e:
            raise UserError(f'TF_CONFIG gives this task the address {address}, but port {port} is taken here '
                            f'({e.strerror}): stop what uses it, or choose another port') from None


def multi_worker(text):
    """The Cluster of this task in TF_CONFIG: MultiWorkerMirroredStrategy, and the gRPC server it runs in
    (in graph mode the strategy does not start one itself)."""
    cluster, kind, index = parse_tf_config(text)
    check_port_free(cluster[kind][index])
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    config = strategy.update_config_proto(tf.ConfigProto())
    try:
        server = tf.distribute.Server(resolver.cluster_spec(), job_name=kind, task_index=index, config=config,
                                      start=True)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f'cannot start task {kind}:{index} at {cluster[kind][index]}: {e}') from None
    workers = sum(len(tasks) for tasks in cluster.values())
    chief = kind == 'chief' or (kind == 'worker' and index == 0 and 'chief' not in cluster)
    hosts = {job: [address.rsplit(':', 1)[0] for address in tasks] for job, tasks in cluster.items()}
    return Cluster(strategy, server.target, config, strategy.num_replicas_in_sync, workers, (kind, index), chief,
                   server, {'strategy': 'MultiWorkerMirroredStrategy', 'replicas': strategy.num_replicas_in_sync,
                            'workers': workers, 'task': f'{kind}:{index}', 'cluster': hosts}, cluster)


def from_environment():
    """This process's Cluster: the one TF_CONFIG describes, else this machine's devices."""
    text = os.environ.get('TF_CONFIG', '').strip()
    return multi_worker(text) if text else local()


def session_config(cluster, arithmetic_config):
    """The cluster's ConfigProto with a precision's Grappler options (precision.training_config) merged in."""
    if cluster.config is None:
        return arithmetic_config
    config = tf.ConfigProto()
    config.CopyFrom(cluster.config)
    if arithmetic_config is not None:
        rewrite = config.graph_options.rewrite_options
        rewrite.MergeFrom(arithmetic_config.graph_options.rewrite_options)
        if cluster.task and rewrite.auto_mixed_precision_onednn_bfloat16 == rewriter_config_pb2.RewriterConfig.ON:
            # A worker receives its part of the graph as a GraphDef, checked against the public op definitions:
            # Grappler's fused convolution (_FusedConv2D) lists no bfloat16 there, though oneDNN's op that replaces
            # it in one process has it. Unfused, every op is one the check allows and oneDNN still runs in bf16.
            rewrite.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


def run_options(cluster, timeout_s):
    """RunOptions that end a step of a multi-worker run after timeout_s, or None in one process."""
    return tf.RunOptions(timeout_in_ms=int(1000 * timeout_s)) if cluster.task else None


def padded(get_batches_fn, replicas):
    """get_batches_fn whose batches are padded to a multiple of replicas with blank images of no valid pixel
    (all-zero labels): each replica gets an equal, non-empty share, and the padding adds nothing to the loss or
    the gradients (the network has no batch statistics)."""
    def batches(batch_size):
        for images, labels in get_batches_fn(batch_size):
            missing = -len(images) % replicas
            if missing:
                images = np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])
                labels = np.concatenate([labels, np.zeros((missing, *labels.shape[1:]), labels.dtype)])
            yield images, labels
    return batches


@contextlib.contextmanager
def reporting_lost_workers(cluster):
    """Turn the error a worker's death causes in the others (a step that times out, or a connection that
    breaks) into a UserError naming the tasks that are gone; one process alone reports nothing."""
    try:
        yield
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError, tf.errors.UnknownError) as e:
        if cluster.task is None:
            raise
        gone = lost_tasks(cluster)
        if not gone and not isinstance(e, (tf.errors.DeadlineExceededError, tf.errors.UnavailableError)):
            raise
        raise UserError(f'task {cluster.described["task"]} stopped: it lost contact with '
                        f'{", ".join(gone) or "another task of the cluster"} ({type(e).__name__}). Restart every '
                        'task; with the chief\'s RUN_DIR on a file system all can read, --resume RUN_DIR continues '
                        'the run') from None
    except tf.errors.InvalidArgumentError as e:
        if cluster.task is None or 'in the collective' not in (e.message or ''):
            raise
        raise UserError(f'task {cluster.described["task"]}: the workers built different networks '
                        f'({e.message.splitlines()[0]}). Every task needs the same flags, data and weights') from None


def lost_tasks(cluster, patience_s=LOST_TASK_PATIENCE_S):
    """The TF_CONFIG tasks, other than this one, that no longer accept connections, asked again every second for
    up to patience_s while every task still does."""
    deadline = time.monotonic() + patience_s
    while True:
        gone = []
        for job, addresses in cluster.spec.items():
            for index, address in enumerate(addresses):
                if (job, index) == cluster.task:
                    continue
                host, port = address.rsplit(':', 1)
                try:
                    socket.create_connection((host, int(port)), timeout=5).close()
                except OSError:
                    gone.append(f'{job}:{index} ({address})')
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(1)


def encoder_builder(vgg_dir, seed):
    """encoder(images, keep_prob) -> (layer3, layer4, layer7) that creates its variables with tf.get_variable,
    so that a strategy mirrors them: the VGG16 SavedModel of vgg_dir imported as a graph reading them
    (vgg.saved_model_encoder), or the encoder built in code: He-initialised for None, the project's own
    SavedModel's graph to restore its weights into (vgg.own_channels). Call it in every replica."""
    channels = vgg.own_channels(vgg_dir) if vgg_dir else None
    if vgg_dir and not channels:
        return vgg.saved_model_encoder(vgg_dir)
    build = functools.partial(vgg.build_vgg16, channels) if channels else vgg.build_vgg16
    return lambda images, keep_prob: build(seed=seed, image_input=images, keep_prob=keep_prob)[2:]


def data_fingerprint(source, train_names, val_names):
    """Numbers that tell a worker's training data from another's: its source (SOURCES' position), the number of
    training images, and checksums of the training and validation names (float64 holds them exactly)."""
    return (float(SOURCES.index(source)), float(len(train_names)), float(zlib.crc32('\n'.join(train_names).encode())),
            float(zlib.crc32('\n'.join(val_names).encode())))


def start_fingerprints(strategy, data):
    """[replicas, 1 + len(data)] float64, the same on every worker: per replica (its row, at its replica id; the
    strategy sums the one-hot rows) the sum of squares of all its weights, then its data_fingerprint. Workers
    with equal weights give equal sums; one that restored other weights than the chief's (a machine without the
    VGG16 files falls back on a random encoder of the same shapes) gives another. Squares of float32 values are
    exact in float64."""
    def fingerprint():
        context = tf.distribute.get_replica_context()
        weights = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float64))) for v in tf.trainable_variables()])
        own = tf.concat([weights[None], tf.constant(data, tf.float64)], axis=0)
        return own[None] * tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync,
                                      dtype=tf.float64)[:, None]

    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.extended.call_for_each_replica(fingerprint),
                           axis=None)


def replica_tasks(cluster):
    """The task ('chief:0', 'worker:1', ...) of each replica id."""
    per_worker = cluster.replicas // cluster.workers
    tasks = [f'{job}:{i}' for job in ('chief', 'worker') for i in range(len(cluster.spec.get(job, ())))]  # id order
    return [tasks[i // per_worker] for i in range(cluster.replicas)]


def check_same_data(cluster, data, dataset):
    """UserError naming the workers whose data fingerprints (one row per replica) differ from the chief's."""
    def described(row):
        return f'{SOURCE_NAMES[SOURCES[int(row[0])]]}, {int(row[1])} training images'

    differ = sorted({f'{task} ({described(row)})' for task, row in zip(replica_tasks(cluster), data)
                     if tuple(row) != tuple(data[0])})
    if differ:
        raise UserError(f'the workers train on different data: {", ".join(differ)} against the chief\'s '
                        f'{described(data[0])} (task {cluster.described["task"]} reads {dataset}). Put the same '
                        'dataset on every machine (DATA_DIR/data_road, or the same --dataset) before starting the '
                        'workers')


def check_same_weights(cluster, fingerprints, vgg_dir):
    """UserError naming the workers whose weights differ from the chief's (its first replica's), given every
    replica's sum of squares of its weights (start_fingerprints)."""
    differ = [f'{task} ({value:.9g})' for task, value in zip(replica_tasks(cluster), fingerprints)
              if abs(value - fingerprints[0]) > WEIGHTS_TOLERANCE * abs(fingerprints[0])]
    if differ:
        raise UserError(f'the workers start from different weights: {", ".join(sorted(set(differ)))} against the '
                        f'chief\'s sum of squares {fingerprints[0]:.9g} (task {cluster.described["task"]} loaded '
                        f'{vgg_dir or "no VGG16 weights: a He-initialised encoder"}). Put the same VGG16 weights '
                        '(data/vgg or --vgg-dir) on every machine before starting the workers')


def build_replicated_fcn(sess, cluster, vgg_dir, seed, network, num_classes=NUM_CLASSES, data=None, dataset=None):
    """FCN-8s trained by cluster's strategy in sess's graph, every replica on its share of each batch, every
    variable initialised (the chief's initial values broadcast to all; the encoder's weights from vgg_dir).

    network: main's Network (layers, optimize, masked_cross_entropy). Each replica's optimize takes the
    cross-entropy of its images over the valid pixels of the whole batch, plus its share of the weight decay, so
    that the strategy's sum of the replicas' gradients is the gradient of the single-device loss. Returns the
    tensors by name, as main's build_fcn does, with train_loss, the loss summed over the replicas, for training.
    On several machines, the weights and data (source, training names, validation names) of this worker's dataset
    folder, unless None (fed batches of benchmark.py), are compared with the chief's before the first step (a
    UserError names the workers that differ).
    """
    strategy = cluster.strategy
    encoder = encoder_builder(vgg_dir, seed)
    with strategy.scope():
        tf.set_random_seed(seed)
        input_image = tf.placeholder(tf.float32, [None, None, None, 3], name='input_image')
        correct_label = tf.placeholder(tf.float32, [None, None, None, num_classes], name='correct_label')
        learning_rate = tf.placeholder(tf.float32, [], name='learning_rate')
        keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')

        def replica_step(images, labels):
            context = tf.distribute.get_replica_context()
            share = tf.shape(images)[0] // context.num_replicas_in_sync  # batches are padded to a multiple
            first = context.replica_id_in_sync_group * share
            decay_before = len(tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES))
            nn_last_layer = network.layers(*encoder(images[first:first + share], keep_prob), num_classes)
            # This replica's own decay terms: replicas are built one after the other, each adding its own.
            decay = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)[decay_before:]
            _, train_op, loss = network.optimize(nn_last_layer, labels[first:first + share], learning_rate,
                                                 num_classes, tf.reduce_sum(labels), decay,
                                                 context.num_replicas_in_sync)
            return train_op, loss

        train_ops, losses = strategy.extended.call_for_each_replica(replica_step, args=(input_image, correct_label))
        train_op = strategy.group(train_ops)
        train_loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        # Validation and test outputs: the same network on this worker's own copy of the weights, whole batches.
        with tf.device(strategy.extended.worker_devices[0]), \
                tf.variable_scope(tf.get_variable_scope(), reuse=True):
            nn_last_layer = network.layers(*encoder(input_image, keep_prob), num_classes)
            logits, cross_entropy_loss = network.masked_cross_entropy(nn_last_layer, correct_label, num_classes)
        # One process's replicas are equal by construction (the Saver fills every copy): machines are compared.
        fingerprints = start_fingerprints(strategy, data_fingerprint(*data) if data else ()) if cluster.task else None
    with reporting_lost_workers(cluster):  # the chief's initial values go to every worker here
        sess.run(tf.global_variables_initializer(), options=run_options(cluster, START_TIMEOUT_S))
        if vgg_dir:
            vgg.restore_saved_model_weights(sess, vgg_dir)
        if fingerprints is not None:
            table = sess.run(fingerprints, options=run_options(cluster, START_TIMEOUT_S))
            check_same_data(cluster, table[:, 1:], dataset)
            check_same_weights(cluster, table[:, 0], vgg_dir)
    return dict(input_image=input_image, keep_prob=keep_prob, correct_label=correct_label,
                learning_rate=learning_rate, logits=logits, cross_entropy_loss=cross_entropy_loss,
                train_op=train_op, train_loss=train_loss)
