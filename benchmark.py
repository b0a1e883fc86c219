"""How fast FCN-8s runs on this machine: `python benchmark.py` prints a table and writes benchmark.json.

It needs no data: a He-initialised VGG16 and generated road scenes at KITTI's size. It measures
- the ceiling of the machine in fp32 and bf16 GFLOP/s (the best of a few large matrix products and a VGG16-sized
  convolution: bf16 reaches AMX only through some of oneDNN's kernels),
- FCN-8s forward and training-step time per image at 160x576 and at KITTI's full 375x1242 (run at 384x1248, the
  next multiples of 32, which the network needs), at batch 1 and the training batch, in fp32 and (where the CPU
  has it) bf16, with the achieved GFLOP/s (FLOPs counted from the graph by TensorFlow's profiler) and its share
  of the ceiling, and the fixed cost of a training step (the part that does not grow with the batch),
- peak memory (RSS) of each measurement (each runs in a process of its own),
- the input pipeline alone (images per second decoded, resized, augmented) and the training step fed by it
  against the same step on pre-loaded arrays,
- the latency of each optimized variant (main.py optimize's models: TensorFlow's frozen graphs and TFLite models,
  and the ONNX models through ONNX Runtime and through OpenVINO) at 160x576.

`python benchmark.py --profile` shows instead where a training step's time goes, per phase (forward and loss,
backward, Adam update) and per op type, and the forward pass in the training graph against the frozen graph.
"""
import argparse
import sys

from fcn8s import command_line
from fcn8s.recipes import WARMUP_RUNS


def benchmark_parser():
    """The flags of `python benchmark.py`."""
    parser = argparse.ArgumentParser(
        prog='benchmark.py',
        description='How fast FCN-8s runs on this machine: prints a table and writes benchmark.json. Random weights '
                    'and generated images: no data needed; a long run on a small CPU (--profile is shorter).')
    parser.add_argument('--repeats', type=int, default=2,
                        help='timed runs per forward and training measurement, after one warm-up run '
                             '[default: %(default)s]')
    parser.add_argument('--variant-runs', type=int, default=10,
                        help='timed runs per optimized variant, after '
                             f'{WARMUP_RUNS} warm-up runs [default: %(default)s]')
    parser.add_argument('--profile', action='store_true',
                        help='instead: where a training step\'s time goes, per phase and op type (TensorFlow\'s '
                             'step stats), at 96x320 batch 2 and 160x576 batch 4, fp32 and bf16, and the forward '
                             'pass in the training graph against the frozen one')
    parser.add_argument('--serving', metavar='RUN_DIR',
                        help='instead: `main.py serve --model RUN_DIR` under 1, 4 and 16 concurrent clients on this '
                             'machine (throughput, p50/p95 latency, failures, the server\'s memory), against `main.py '
                             'infer`\'s images/s on the same model and generated KITTI-size scenes')
    parser.add_argument('--serving-seconds', type=float, default=60,
                        help='how long each count of clients sends requests, with --serving [default: %(default)g]')
    parser.add_argument('--output',
                        help='where to write the results [default: benchmark.json; profile.json with --profile; '
                             'serving.json with --serving]')
    return parser


def parse_args(argv=None):
    """benchmark.py's flags, checked."""
    parser = benchmark_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.variant_runs < 2 or args.serving_seconds <= 0:
        parser.error('--repeats must be at least 1, --variant-runs at least 2 and --serving-seconds above 0')
    return args


if __name__ == '__main__':  # --help and a mistyped flag answer here, before TensorFlow takes seconds to load
    parse_args(sys.argv[1:])
with command_line.quiet_tensorflow():
    import tensorflow.compat.v1 as tf

# isort: split
import concurrent.futures
import json
import multiprocessing
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import tempfile
import time

import httpx
import numpy as np

import helper
import main
from fcn8s import (batches, cluster, conversion, evaluation, files, images, inference, kitti, paths, precision, recipes,
                   run_folder, synthetic, vgg)
from fcn8s.errors import UserError
from fcn8s.metrics import NUM_CLASSES
from fcn8s.precision import machine, mixed_precision

tf.disable_eager_execution()

SMALL, FULL = (160, 576), (384, 1248)  # the KITTI recipe's input size; KITTI's 375x1242 rounded up to /32
TRAIN_BATCH = recipes.RECIPES['kitti']['batch_size']
MATMUL_SIZE = 4096
KITTI_SIZE = (375, 1242)
PIPELINE_IMAGES = 24  # generated KITTI-size scenes for the input pipeline and the training comparison
CALIBRATION_IMAGES = 16  # enough for the int8 variant's speed (its accuracy is main.py optimize's job)


def seconds_per_call(fn, repeats, warmup=1):
    """Median wall time of fn() over repeats calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def ceiling_shapes():
    """(name, FLOPs, build(dtype) -> op) of the products whose best speed is the machine's ceiling: square
    matrix products (of two variables, as training multiplies, and of a variable by constant weights, which
    oneDNN lays out once) and a 3x3 convolution of VGG16's conv4 size with constant weights. bf16 reaches AMX
    only through oneDNN's convolution and matrix kernels, and not at every shape: the best of them is the
    ceiling. (Two constants would be multiplied once, by Grappler's constant folding, and measure nothing.)"""
    n = MATMUL_SIZE
    conv_input, conv_filter = (4, 40, 144, 512), (3, 3, 512, 512)
    conv_flops = 2 * np.prod(conv_input) * np.prod(conv_filter[:3])

    def random(shape, dtype, seed, constant=False):
        value = np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)
        return tf.cast(tf.constant(value) if constant else tf.Variable(value).read_value(), dtype)

    return [
        (f'matmul {n}x{n} (variables)', 2 * n ** 3,
         lambda dtype: tf.matmul(random((n, n), dtype, 1), random((n, n), dtype, 2)).op),
        (f'matmul {n}x{n} (constant weights)', 2 * n ** 3,
         lambda dtype: tf.matmul(random((n, n), dtype, 1), random((n, n), dtype, 2, constant=True)).op),
        ('conv 3x3x512x512 on 4x40x144', conv_flops,
         lambda dtype: tf.nn.conv2d(random(conv_input, dtype, 3), random(conv_filter, dtype, 4, constant=True), 1,
                                    'SAME').op),
    ]


def training_arithmetics():
    """The arithmetics measured here: fp32, and bf16 where the CPU has it (GPUs' fp16 is not built)."""
    return ('fp32', 'bf16') if mixed_precision()[0] == 'bf16' else ('fp32',)


def compute_ceiling(repeats):
    """{'float32': GFLOP/s, 'bfloat16': GFLOP/s, 'shapes': {name: {dtype: GFLOP/s}}}: the best of ceiling_shapes
    per arithmetic (bf16 only where the CPU has it)."""
    result = {'shapes': {}}
    dtypes = (tf.float32, tf.bfloat16)[:len(training_arithmetics())]  # fp32, then bf16 where the CPU has it
    for name, flops, build in ceiling_shapes():
        for dtype in dtypes:
            with tf.Graph().as_default(), tf.Session() as sess:
                op = build(dtype)  # run as an op: no copy of the result to numpy
                sess.run(tf.global_variables_initializer())
                seconds = seconds_per_call(lambda: sess.run(op), max(repeats, 3))
            result['shapes'].setdefault(name, {})[dtype.name] = flops / seconds / 1e9
    for dtype in dtypes:
        result[dtype.name] = max(shape[dtype.name] for shape in result['shapes'].values())
    return result


def fcn_graph(batch, shape, train, fc_as_matmul=True):
    """A graph with FCN-8s (He-initialised VGG16, fc6/fc7 as matrix products or, as SavedModel encoders run them,
    convolutions) for a static input [batch, H, W, 3], and, with train, its loss and Adam step. Returns (graph,
    feeds {name: tensor}, fetch, GFLOP per call counted by the profiler)."""
    with tf.Graph().as_default():
        _, keep_prob, layer3, layer4, layer7 = vgg.build_vgg16(seed=0, fc_as_matmul=fc_as_matmul)
        last = main.network().layers(layer3, layer4, layer7, NUM_CLASSES)
        label = tf.placeholder(tf.float32, [None, None, None, NUM_CLASSES], name='correct_label')
        learning_rate = tf.placeholder(tf.float32, [], name='learning_rate')
        if train:
            main.optimize(last, label, learning_rate, NUM_CLASSES)
        meta = tf.train.export_meta_graph()
    # Imported again with static input shapes, so that the profiler can count every op's FLOPs.
    with tf.Graph().as_default() as graph:
        image = tf.placeholder(tf.float32, [batch, *shape, 3])
        label = tf.placeholder(tf.float32, [batch, *shape, NUM_CLASSES])
        tf.train.import_meta_graph(meta, input_map={vgg.IMAGE_INPUT: image, 'correct_label:0': label})
        options = tf.profiler.ProfileOptionBuilder.float_operation()
        options['output'] = 'none'
        flops = tf.profiler.profile(graph, options=options).total_float_ops
    fetch = graph.get_operation_by_name('train_op') if train else graph.get_tensor_by_name('upscore8_out:0').op
    feeds = {'image': image, 'label': label, 'keep_prob': graph.get_tensor_by_name(vgg.KEEP_PROB),
             'learning_rate': graph.get_tensor_by_name('learning_rate:0'),
             'loss': graph.get_tensor_by_name('cross_entropy_loss:0') if train else None}
    return graph, feeds, fetch, flops / 1e9


def network_speed(shape, train, repeats, arithmetic):
    """Seconds per image and GFLOP per image of FCN-8s forward (or a training step) at batch 1 and TRAIN_BATCH,
    at arithmetic 'fp32' or 'bf16' (training's Session config)."""
    rows = []
    for batch in (1, TRAIN_BATCH):
        graph, feeds, fetch, gflop = fcn_graph(batch, shape, train)
        feed = random_feed(feeds, batch, shape, train)
        with tf.Session(graph=graph, config=precision.training_config(arithmetic)) as sess:
            with graph.as_default():
                sess.run(tf.global_variables_initializer())
            graph.finalize()
            seconds = seconds_per_call(lambda: sess.run(fetch, feed), repeats)
        rows.append({'case': 'training step' if train else 'forward', 'precision': arithmetic, 'shape': list(shape),
                     'batch': batch, 's_per_image': seconds / batch, 'gflop_per_image': gflop / batch,
                     'gflops': gflop / seconds, 'peak_rss_gb': peak_rss_gb()})
    return rows


def random_batch(batch, shape):
    """(pixels float32 [batch, H, W, 3] in 0-255, one-hot road labels [batch, H, W, 2]), the same every call."""
    rng = np.random.RandomState(0)
    pixels = rng.uniform(0, 255, (batch, *shape, 3)).astype(np.float32)
    return pixels, batches.one_hot(rng.randint(0, 2, (batch, *shape)).astype(np.int8))


def random_feed(feeds, batch, shape, train, keep_prob=0.5):
    """A feed of fcn_graph's placeholders: random pixels and (for training) random labels."""
    pixels, labels = random_batch(batch, shape)
    feed = {feeds['image']: pixels}
    if train:
        feed.update({feeds['label']: labels, feeds['learning_rate']: 1e-6, feeds['keep_prob']: keep_prob})
    return feed


def fixed_step_costs(rows):
    """{(precision, 'HxW'): seconds} of a training step that do not grow with the batch: a step costs
    fixed + batch x per_image, so from batch 1 and TRAIN_BATCH, fixed = t1 - (tB - t1) / (B - 1)."""
    steps = {(r['precision'], tuple(r['shape']), r['batch']): r['s_per_image'] * r['batch'] for r in rows
             if r['case'] == 'training step'}
    costs = {}
    for (arithmetic, shape, batch), seconds in steps.items():
        if batch == 1 and (arithmetic, shape, TRAIN_BATCH) in steps:
            per_image = (steps[arithmetic, shape, TRAIN_BATCH] - seconds) / (TRAIN_BATCH - 1)
            costs[arithmetic, f'{shape[0]}x{shape[1]}'] = seconds - per_image
    return costs


def step_phase(node_name):
    """The part of a training step a node belongs to, from its name (tf.gradients and the optimizer name them)."""
    if node_name.startswith('gradients'):
        return 'backward'
    if node_name.startswith(('train_op', 'beta1_power', 'beta2_power')) or 'Adam' in node_name:
        return 'Adam update'
    return 'forward and loss'


def step_profile(shape, batch, arithmetic, fc_as_matmul, repeats):
    """Where a training step's time goes at shape and batch: the step's wall time, and the time of its ops
    (TensorFlow's step stats, summed over both cores' threads) per phase and per op type."""
    graph, feeds, fetch, gflop = fcn_graph(batch, shape, train=True, fc_as_matmul=fc_as_matmul)
    feed = random_feed(feeds, batch, shape, train=True, keep_prob=1.0)
    with tf.Session(graph=graph, config=precision.training_config(arithmetic)) as sess:
        with graph.as_default():
            sess.run(tf.global_variables_initializer())
        graph.finalize()
        step = seconds_per_call(lambda: sess.run(fetch, feed), repeats)
        forward = seconds_per_call(lambda: sess.run(feeds['loss'], feed), repeats)
        trace = tf.RunMetadata()
        sess.run(fetch, feed, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE), run_metadata=trace)
    phases, op_types = {}, {}
    for device in trace.step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label  # "name = OpType(inputs)"
            op_type = label.split(' = ')[1].split('(')[0] if ' = ' in label else node.node_name
            seconds = node.all_end_rel_micros / 1e6
            phases[step_phase(node.node_name)] = phases.get(step_phase(node.node_name), 0) + seconds
            op_types[op_type] = op_types.get(op_type, 0) + seconds
    return {'shape': list(shape), 'batch': batch, 'precision': arithmetic, 'fc_as_matmul': fc_as_matmul,
            'step_s': step, 'forward_loss_s': forward,
            'gflops': gflop / step, 'phases': phases,
            'op_types': dict(sorted(op_types.items(), key=lambda kv: -kv[1]))}


def forward_comparison(shape, arithmetic, repeats, folder):
    """Milliseconds per image of the FCN-8s forward pass at shape, in the training graph (weights are variables,
    as validation runs it) at batch 1 and evaluation.VALIDATION_BATCH, and frozen (weights are constants, as
    main.py optimize and infer run it) at batch 1."""
    rows = {}
    with tf.Graph().as_default() as graph, tf.Session(config=precision.training_config(arithmetic)) as sess:
        image, _, layer3, layer4, layer7 = vgg.build_vgg16(seed=0)
        last = main.network().layers(layer3, layer4, layer7, NUM_CLASSES)
        sess.run(tf.global_variables_initializer())
        tag = f'{arithmetic}-{shape[0]}x{shape[1]}'
        checkpoint = tf.train.Saver().save(sess, os.path.join(folder, f'forward-{tag}'))
        graph.finalize()
        for batch in (1, evaluation.VALIDATION_BATCH):
            pixels, _ = random_batch(batch, shape)
            rows[f'training graph, batch {batch}'] = 1000 * seconds_per_call(
                lambda: sess.run(last.op, {image: pixels}), repeats) / batch
    saved_model = run_folder.export_serving_model(checkpoint, None, 0, os.path.join(folder, f'saved-model-{tag}'),
                                                  main.network().layers)
    frozen = conversion.freeze(saved_model, shape)
    if arithmetic != 'fp32':
        frozen = conversion.grappler(frozen, arithmetic)
    predict, _ = inference.graph_predictor(frozen)
    pixels, _ = random_batch(1, shape)
    rows['frozen, batch 1'] = 1000 * seconds_per_call(lambda: predict(pixels), repeats)
    return {'shape': list(shape), 'precision': arithmetic, 'ms_per_image': rows}


def replicated_speed(workers, shape, batch, repeats, arithmetic):
    """Images per second of training steps of the full FCN-8s (He-initialised encoder built in code) at shape
    and global batch, replicated by a cluster.Cluster; and the bytes all-reduced per step (every gradient)."""
    with tf.Graph().as_default(), tf.Session(workers.target, config=cluster.session_config(
            workers, precision.training_config(arithmetic))) as sess:
        net = cluster.build_replicated_fcn(sess, workers, None, 0, main.network())
        gradient_bytes = sum(v.shape.num_elements() * v.dtype.base_dtype.size for v in tf.trainable_variables())
        sess.graph.finalize()
        pixels, labels = random_batch(batch, shape)
        feed = {net['input_image']: pixels, net['correct_label']: labels, net['learning_rate']: 1e-6}
        options = cluster.run_options(workers, cluster.START_TIMEOUT_S)
        seconds = seconds_per_call(lambda: sess.run(net['train_op'], feed, options=options), repeats)
    return {'images_per_s': batch / seconds, 'step_s': seconds, 'allreduce_mb': gradient_bytes / 2 ** 20}


def one_device_speed(shape, batch, repeats, arithmetic):
    """Images per second of the single-device training step (main.build_fcn's graph) at shape and batch."""
    with tf.Graph().as_default(), tf.Session(config=precision.training_config(arithmetic)) as sess:
        net = main.build_fcn(sess, None, 0, skip_scales=main.UNSCALED_SKIPS)
        sess.graph.finalize()
        pixels, labels = random_batch(batch, shape)
        feed = {net['input_image']: pixels, net['correct_label']: labels, net['learning_rate']: 1e-6}
        seconds = seconds_per_call(lambda: sess.run(net['train_op'], feed), repeats)
    return {'images_per_s': batch / seconds, 'step_s': seconds}


def two_cpu_devices_speed(shape, batch, repeats, arithmetic):
    return replicated_speed(cluster.local(['/cpu:0', '/cpu:1']), shape, batch, repeats, arithmetic)


def worker_speed(tf_config, shape, batch, repeats, arithmetic):
    """replicated_speed in a worker process of the TF_CONFIG cluster (loopback ports)."""
    os.environ['TF_CONFIG'] = tf_config  # read by TensorFlow's cluster resolver
    return replicated_speed(cluster.multi_worker(tf_config), shape, batch, repeats, arithmetic)


def scaling(shape, batch, repeats, arithmetic):
    """Training throughput on one device, on two CPU devices in one process (MirroredStrategy) and in two worker
    processes on loopback (MultiWorkerMirroredStrategy), each in processes of their own. On one machine's two
    cores the replicas share the cores: this measures the strategies' overhead, not a speed-up."""
    rows = {'one device': in_child(one_device_speed, shape, batch, repeats, arithmetic),
            'two CPU devices, one process': in_child(two_cpu_devices_speed, shape, batch, repeats, arithmetic)}
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    addresses = [f'127.0.0.1:{s.getsockname()[1]}' for s in sockets]
    for s in sockets:
        s.close()
    configs = [json.dumps({'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': i}}) for i in (0, 1)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn')) as pool:
        jobs = [pool.submit(worker_speed, config, shape, batch, repeats, arithmetic) for config in configs]
        rows['two worker processes, loopback'] = jobs[0].result(timeout=1800)
        jobs[1].result(timeout=600)
    return {'shape': list(shape), 'batch': batch, 'precision': arithmetic, 'rows': rows}


def make_scenes(folder):
    """PIPELINE_IMAGES generated road scenes at KITTI's size, in KITTI's layout; the dataset folder."""
    return synthetic.make_synthetic_kitti(os.path.join(folder, 'road'), PIPELINE_IMAGES, 1, seed=0,
                                          sizes=(KITTI_SIZE,), progress=False)


def input_pipeline(dataset, shape):
    """Images per second of each stage of the input pipeline, on one core: reading and checking a KITTI-size
    image and its label, resizing both to shape, and augmenting (flip, zoom, photometric jitter)."""
    pairs = kitti.training_pairs(os.path.join(dataset, 'training'))
    start = time.perf_counter()
    examples = [kitti.load_pair(image, label) for image, label in pairs]
    read = time.perf_counter() - start
    start = time.perf_counter()
    resized = [(images.resize_image(image, shape), images.resize_nearest(classes, shape))
               for image, classes in examples]
    resize = time.perf_counter() - start
    rng = np.random.RandomState(0)
    start = time.perf_counter()
    for image, classes in resized:
        image, classes = batches.flip_scale_crop(image, classes, rng)
        batches.jitter_photometric(image, rng)
    augment = time.perf_counter() - start
    n = len(pairs)
    return {'images': n, 'read_per_s': n / read, 'resize_per_s': n / resize, 'augment_per_s': n / augment,
            'all_per_s': n / (read + resize + augment)}


def training_feed(dataset, shape, repeats):
    """Seconds per training step at shape and TRAIN_BATCH: on pre-loaded arrays, and fed by the training loop's
    own input pipeline (main.train_nn over helper.gen_batch_function with augmentation)."""
    graph, feeds, fetch, _ = fcn_graph(TRAIN_BATCH, shape, train=True)
    get_batches_fn = helper.gen_batch_function(os.path.join(dataset, 'training'), shape, seed=0, augment=True)
    images, labels = next(get_batches_fn(TRAIN_BATCH))
    steps = []
    with tf.Session(graph=graph) as sess:
        with graph.as_default():
            sess.run(tf.global_variables_initializer())
        graph.finalize()
        feed = {feeds['image']: images, feeds['label']: labels, feeds['keep_prob']: 0.5,
                feeds['learning_rate']: 1e-6}
        # As many steps as the pipeline run below times, so that both medians are alike in noise.
        preloaded = seconds_per_call(lambda: sess.run(fetch, feed), max(repeats, PIPELINE_IMAGES // TRAIN_BATCH - 1))
        last = time.perf_counter()

        def on_step(step, loss):
            nonlocal last
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        main.train_nn(sess, 1, TRAIN_BATCH, get_batches_fn, fetch, feeds['loss'], feeds['image'], feeds['label'],
                      feeds['keep_prob'], feeds['learning_rate'], keep_prob_value=0.5, learning_rate_value=1e-6,
                      num_images=PIPELINE_IMAGES, recorder=(on_step, None))
    fed = float(np.median(steps[1:]))  # the first step also waits for the first batch
    return {'shape': list(shape), 'batch': TRAIN_BATCH, 'preloaded_s': preloaded, 'pipeline_s': fed,
            'steps': len(steps) - 1, 'slowdown': fed / preloaded - 1}


def build_variant(frozen_path, variant, path, calibration, precision):
    """Write variant (a name of paths.VARIANT_FILES) of the frozen graph at frozen_path to path; return the seconds."""
    start = time.perf_counter()
    frozen = inference.read_graph_def(frozen_path)
    files.atomic_write(path, conversion.make_variant(frozen, variant, precision, calibration))
    return time.perf_counter() - start


def build_variants(dataset, folder):
    """Export a He-initialised FCN-8s as main.py does, freeze it at SMALL and write each optimized variant into
    folder, two at a time (Grappler, the TFLite converter and the ONNX export use one core each). Returns
    {variant: seconds to build, or the reason it was skipped}."""
    with tf.Graph().as_default(), tf.Session() as sess:
        _, _, layer3, layer4, layer7 = vgg.build_vgg16(seed=0)
        main.network().layers(layer3, layer4, layer7, NUM_CLASSES)
        sess.run(tf.global_variables_initializer())
        checkpoint = tf.train.Saver().save(sess, os.path.join(folder, 'model'))
    saved_model = run_folder.export_serving_model(checkpoint, None, 0, os.path.join(folder, 'saved_model'),
                                                   main.network().layers)
    frozen_path = os.path.join(folder, 'frozen.pb')
    files.atomic_write(frozen_path, conversion.freeze(saved_model, SMALL).SerializeToString())
    training = os.path.join(dataset, 'training', 'image_2')
    calibration = [images.resize_image(images.read_rgb(os.path.join(training, name)), SMALL)
                   for name in kitti.list_images(training)[:CALIBRATION_IMAGES]]
    precision, why = mixed_precision()
    built = {'bf16': why} if precision is None else {}
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn')) as pool:
        # The ONNX models come from the SavedModel at a dynamic size, as main.py optimize makes them.
        onnx = pool.submit(conversion.write_onnx_variants, saved_model, calibration, folder)
        jobs = {variant: pool.submit(build_variant, frozen_path, variant, os.path.join(folder, file), calibration,
                                     precision)
                for variant, file in paths.VARIANT_FILES.items()
                if variant not in built and variant not in paths.ONNX_VARIANTS}
        built.update({variant: job.result() for variant, job in jobs.items()})
        built.update(onnx.result())
    return built


def variant_latency(folder, built, runs):
    """Latency at batch 1 and file size of each variant build_variants wrote into folder."""
    rows = []
    for variant, file in paths.VARIANT_FILES.items():
        if isinstance(built.get(variant), str):
            rows.append({'variant': variant, 'skipped': built[variant]})
            continue
        path = os.path.join(folder, file)
        try:
            predictor = inference.variant_predictor(variant, path, SMALL)
        except UserError as e:  # its runtime (OpenVINO) not installed
            rows.append({'variant': variant, 'skipped': str(e)})
            continue
        rows.append({'variant': variant, 'size_mb': os.path.getsize(path) / 2 ** 20,
                     **({'build_s': built[variant]} if variant in built else {}),  # (OpenVINO: the ONNX files)
                     **inference.latency(predictor, runs)})
    fp32 = next(row for row in rows if row['variant'] == 'fp32')
    for row in rows:
        if 'median_ms' in row:
            row['speedup'] = fp32['median_ms'] / row['median_ms']
    return {'rows': rows, 'peak_rss_gb': peak_rss_gb()}


def in_child(fn, *args):
    """fn(*args) in a fresh process, so that its peak memory is its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
        return pool.submit(fn, *args).result()


def format_report(report):
    ceiling = report['ceiling_gflops']
    lines = [f'Machine: {report["machine"]}; TensorFlow {report["tensorflow"]}, Python {report["python"]}.',
             'Ceiling (best of ' + ', '.join(ceiling['shapes']) + '): ' + ', '.join(
                 f'{name} {ceiling[dtype]:.0f} GFLOP/s' for name, dtype in (('fp32', 'float32'), ('bf16', 'bfloat16'))
                 if dtype in ceiling) + '.', '',
             '| FCN-8s | precision | input | batch | s/image | images/s | GFLOP/image | GFLOP/s | of its ceiling '
             '| peak RSS (GB) |',
             '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for row in report['network']:
        top = ceiling['bfloat16' if row['precision'] == 'bf16' else 'float32']
        lines.append(f'| {row["case"]} | {row["precision"]} | {row["shape"][0]}x{row["shape"][1]} | {row["batch"]} | '
                     f'{row["s_per_image"]:.3f} | {1 / row["s_per_image"]:.2f} | {row["gflop_per_image"]:.1f} | '
                     f'{row["gflops"]:.0f} | {100 * row["gflops"] / top:.0f}% | {row["peak_rss_gb"]:.1f} |')
    costs = fixed_step_costs(report['network'])
    lines += ['', 'Fixed cost of a training step (the part that does not grow with the batch, from batch 1 and '
              f'{TRAIN_BATCH}): ' + ', '.join(
                  f'{arithmetic} at {shape} ' + (f'{seconds:.3f} s' if seconds > 0 else
                                                 f'none measurable ({seconds:.3f} s: batch {TRAIN_BATCH} was no '
                                                 'faster per image)')
                  for (arithmetic, shape), seconds in costs.items()) + '.']
    scale = report['scaling']
    first = next(iter(scale['rows'].values()))
    lines += ['', f'| training, {scale["precision"]}, {scale["shape"][0]}x{scale["shape"][1]}, global batch '
              f'{scale["batch"]} | step (s) | images/s | vs one device |', '|---|---:|---:|---:|']
    lines += [f'| {name} | {row["step_s"]:.2f} | {row["images_per_s"]:.2f} | '
              f'{row["images_per_s"] / first["images_per_s"]:.2f}x |' for name, row in scale['rows'].items()]
    lines.append(f'All-reduced per step: {scale["rows"]["two CPU devices, one process"]["allreduce_mb"]:.0f} MiB '
                 '(the fp32 gradients of every trainable variable).')
    pipe, feed = report['input_pipeline'], report['training_feed']
    lines += ['', f'Input pipeline, one core, {pipe["images"]} generated {KITTI_SIZE[0]}x{KITTI_SIZE[1]} PNG scenes '
              f'to {SMALL[0]}x{SMALL[1]}: read and check {pipe["read_per_s"]:.1f} images/s, resize '
              f'{pipe["resize_per_s"]:.1f}/s, augment {pipe["augment_per_s"]:.1f}/s (all three: '
              f'{pipe["all_per_s"]:.1f}/s; training reads and resizes once, then augments each batch).',
              f'Training step at {SMALL[0]}x{SMALL[1]}, batch {feed["batch"]}: {feed["preloaded_s"]:.2f} s on '
              f'pre-loaded arrays, {feed["pipeline_s"]:.2f} s fed by the training loop\'s pipeline (median of '
              f'{feed["steps"]} steps): {100 * feed["slowdown"]:+.1f}%.', '',
              f'| optimized variant ({SMALL[0]}x{SMALL[1]}, batch 1) | median (ms) | p90 (ms) | images/s | '
              'speed-up vs fp32 | size (MB) |', '|---|---:|---:|---:|---:|---:|']
    for row in report['variants']['rows']:
        if 'skipped' in row:
            lines.append(f'| {row["variant"]} | skipped: {row["skipped"]} | | | | |')
            continue
        lines.append(f'| {row["variant"]} | {row["median_ms"]:.1f} | {row["p90_ms"]:.1f} | '
                     f'{row["images_per_s"]:.2f} | {row["speedup"]:.2f}x | {row["size_mb"]:.0f} |')
    lines.append(f'\nPeak RSS of the optimized variants\' process: {report["variants"]["peak_rss_gb"]:.1f} GB. '
                 f'Total time: {report["seconds"] / 60:.1f} min.')
    return '\n'.join(lines)


def format_profile(report, top=8):
    """The --profile tables: per training step, its phases and its costliest op types; then forward passes."""
    lines = [f'Machine: {report["machine"]}; TensorFlow {report["tensorflow"]}.']
    for row in report['steps']:
        total = sum(row['op_types'].values())
        fc = 'fc6/fc7 as matrix products' if row['fc_as_matmul'] else 'fc6/fc7 as convolutions'
        lines += ['', f'Training step, {row["precision"]}, {fc}, {row["shape"][0]}x{row["shape"][1]}, batch '
                  f'{row["batch"]}: {row["step_s"]:.3f} s ({row["gflops"]:.0f} GFLOP/s), forward and loss alone '
                  f'{row["forward_loss_s"]:.3f} s; op time summed over threads {total:.3f} s:', '',
                  '| phase or op type | s | share |',
                  '|---|---:|---:|']
        lines += [f'| {name} | {seconds:.3f} | {100 * seconds / total:.0f}% |' for name, seconds in
                  sorted(row['phases'].items(), key=lambda kv: -kv[1])]
        lines += [f'| `{name}` | {seconds:.3f} | {100 * seconds / total:.0f}% |' for name, seconds in
                  list(row['op_types'].items())[:top]]
    lines += ['', '| forward pass, ms per image | ' + ' | '.join(report['forwards'][0]['ms_per_image']) + ' |',
              '|---|' + '---:|' * len(report['forwards'][0]['ms_per_image'])]
    for row in report['forwards']:
        lines.append(f'| {row["precision"]}, {row["shape"][0]}x{row["shape"][1]} | '
                     + ' | '.join(f'{ms:.1f}' for ms in row['ms_per_image'].values()) + ' |')
    return '\n'.join(lines)


def profile_steps(args):
    """The --profile report: step profiles and forward comparisons, each measured in a process of its own."""
    arithmetics = training_arithmetics()
    report = {'machine': machine(), 'tensorflow': tf.__version__, 'steps': [], 'forwards': []}
    with tempfile.TemporaryDirectory() as folder:
        for arithmetic in arithmetics:
            for shape, batch in (((96, 320), 2), (SMALL, TRAIN_BATCH)):
                for fc_as_matmul in (False, True):
                    print(f'profiling a training step, {arithmetic}, {shape[0]}x{shape[1]}, batch {batch}, '
                          f'fc6/fc7 as {"matrix products" if fc_as_matmul else "convolutions"} ...', flush=True)
                    report['steps'].append(in_child(step_profile, shape, batch, arithmetic, fc_as_matmul,
                                                    max(args.repeats, 3)))
                print(f'forward passes, {arithmetic}, {shape[0]}x{shape[1]} ...', flush=True)
                report['forwards'].append(in_child(forward_comparison, shape, arithmetic, max(args.repeats, 5),
                                                   folder))
                files.write_json(args.output, report)
    return report


SERVING_CLIENTS = (1, 4, 16)
SERVING_WARMUP_S = 5  # 16 clients before the first measurement: the server's memory is taken after it


def serving_benchmark(run_dir, seconds):
    """main.py serve --model run_dir under each count of SERVING_CLIENTS concurrent clients (threads of this
    process, each sending its next request when answered) for `seconds`, on PIPELINE_IMAGES generated KITTI-size
    scenes: images/s, p50/p95 latency, failed requests, the server's RSS after the warm-up and after each count;
    against main.py infer's images/s on the same images and model; whether SIGTERM then ends it with 0."""
    report = {'machine': machine(), 'date': time.strftime('%Y-%m-%d %H:%M'), 'model': run_dir,
              'command': ' '.join(['python benchmark.py', *sys.argv[1:]]), 'rows': []}
    with tempfile.TemporaryDirectory() as folder:
        scenes = os.path.join(make_scenes(folder), 'training', 'image_2')
        said = subprocess.run([sys.executable, 'main.py', 'infer', '--model', run_dir, '--input', scenes, '--output',
                               os.path.join(folder, 'overlays')], capture_output=True, text=True, check=True).stdout
        overall, median_ms = re.search(r'([\d.]+) per second overall, ([\d.]+) ms median in the model', said).groups()
        report['infer'] = {'images_per_s': float(overall), 'model_median_ms': float(median_ms)}
        bodies = []
        for name in sorted(os.listdir(scenes)):
            with open(os.path.join(scenes, name), 'rb') as f:
                bodies.append(f.read())
        with open(os.path.join(folder, 'serve.log'), 'w+') as log:
            server = subprocess.Popen([sys.executable, 'main.py', 'serve', '--model', run_dir, '--port', '0'],
                                      stdout=log, stderr=subprocess.STDOUT)
            try:
                url = served_url(log, server)
                report['server'] = httpx.get(url + '/v1/model').json()
                report['healthz_per_s'] = framework_rate(url, 5)
                client_load(url, bodies, 16, SERVING_WARMUP_S)
                report['rss_after_warmup_mb'] = process_rss_mb(server.pid)
                for clients in SERVING_CLIENTS:
                    print(f'{clients} client(s) for {seconds:g} s ...', flush=True)
                    row = client_load(url, bodies, clients, seconds)
                    report['rows'].append({**row, 'rss_mb': process_rss_mb(server.pid)})
                report['calls_by_batch'] = httpx.get(url + '/v1/model').json()['calls_by_batch']
            finally:
                server.send_signal(signal.SIGTERM)
                report['exit_code_at_sigterm'] = server.wait(120)
            log.seek(0)
            report['tracebacks_in_log'] = log.read().count('Traceback')
    return report


def served_url(log, server, timeout=300):
    """The address main.py serve says it serves on, from its log file, once it answers /healthz."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and server.poll() is None:
        log.seek(0)
        found = re.search(r'serving on (http://\S+)/ ', log.read())
        if found and httpx.get(found.group(1) + '/healthz').status_code == 200:
            return found.group(1)
        time.sleep(0.5)
    log.seek(0)
    raise UserError(f'main.py serve did not start:\n{log.read()}')


def framework_rate(url, seconds):
    """GET /healthz answered per second to one client: what the HTTP stack itself costs a request."""
    count, end = 0, time.monotonic() + seconds
    with httpx.Client(base_url=url) as http:
        while time.monotonic() < end:
            count += http.get('/healthz').status_code == 200
    return count / seconds


def client_load(url, bodies, clients, seconds):
    """{clients, requests, failed, images_per_s, p50_ms, p95_ms} of `clients` threads, each posting the next of
    bodies (PNG bytes) as soon as its last was answered, for `seconds`."""
    def client(offset):
        latencies, failed = [], 0
        with httpx.Client(base_url=url, timeout=60) as http:
            end, i = time.monotonic() + seconds, offset
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    failed += http.post('/v1/segment', content=bodies[i % len(bodies)]).status_code != 200
                except httpx.HTTPError:
                    failed += 1
                latencies.append(time.perf_counter() - start)
                i += 1
        return latencies, failed

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    latencies = np.concatenate([r[0] for r in results])
    return {'clients': clients, 'requests': len(latencies), 'failed': sum(r[1] for r in results),
            'images_per_s': len(latencies) / wall, 'p50_ms': 1000 * float(np.percentile(latencies, 50)),
            'p95_ms': 1000 * float(np.percentile(latencies, 95))}


def process_rss_mb(pid):
    """The resident memory of process pid, in MB."""
    with open(f'/proc/{pid}/status') as f:
        return int(re.search(r'VmRSS:\s+(\d+) kB', f.read()).group(1)) / 1024


def format_serving(report):
    """serving_benchmark's report as a table."""
    server, infer = report['server'], report['infer']
    lines = [f'Machine: {report["machine"]}; model {server["model"]}, batches of up to {server["max_batch"]}.',
             f'main.py infer on the same images: {infer["images_per_s"]:.2f} images/s overall, '
             f'{infer["model_median_ms"]:.1f} ms median in the model; GET /healthz: '
             f'{report["healthz_per_s"]:.0f} answers/s to one client.', '',
             '| clients | requests | failed | images/s | p50 ms | p95 ms | server RSS MB |',
             '|---:|---:|---:|---:|---:|---:|---:|']
    lines += [f'| {r["clients"]} | {r["requests"]} | {r["failed"]} | {r["images_per_s"]:.2f} | {r["p50_ms"]:.0f} | '
              f'{r["p95_ms"]:.0f} | {r["rss_mb"]:.0f} |' for r in report['rows']]
    return '\n'.join(lines + ['', f'RSS after the warm-up: {report["rss_after_warmup_mb"]:.0f} MB; model calls by '
                                   f'batch: {report["calls_by_batch"]}; exit code at SIGTERM: '
                                   f'{report["exit_code_at_sigterm"]}; tracebacks in its log: '
                                   f'{report["tracebacks_in_log"]}'])


def run_benchmark(argv=None):
    args = parse_args(argv)
    args.output = args.output or ('profile.json' if args.profile else 'serving.json' if args.serving else
                                  'benchmark.json')
    precision.reuse_cpu_memory()  # as main.py trains; its child processes inherit it
    start = time.time()
    if args.profile:
        print(format_profile(profile_steps(args)) + f'\nwritten to {args.output}')
        return
    if args.serving:
        report = serving_benchmark(args.serving, args.serving_seconds)
        files.write_json(args.output, report)
        print(format_serving(report) + f'\nwritten to {args.output}')
        return
    report = {'machine': machine(), 'tensorflow': tf.__version__, 'python': platform.python_version(),
              'date': time.strftime('%Y-%m-%d %H:%M'),
              'command': ' '.join(['python benchmark.py', *(sys.argv[1:] if argv is None else argv)])}
    steps = [('ceiling', 'ceiling_gflops', compute_ceiling, (args.repeats,))]
    arithmetics = training_arithmetics()
    for shape in (SMALL, FULL):
        for train in (False, True):
            for arithmetic in arithmetics:
                steps.append((f'{"training step" if train else "forward"} at {shape[0]}x{shape[1]}, {arithmetic}',
                              None, network_speed, (shape, train, args.repeats, arithmetic)))
    with tempfile.TemporaryDirectory() as folder:
        print('generating road scenes', flush=True)
        dataset = make_scenes(folder)
        steps += [('input pipeline', 'input_pipeline', input_pipeline, (dataset, SMALL)),
                  ('training step fed by the input pipeline', 'training_feed', training_feed,
                   (dataset, SMALL, args.repeats)),
                  ('scaling over replicas', 'scaling', scaling, (SMALL, TRAIN_BATCH, args.repeats, 'fp32'))]
        report['network'] = []
        for title, key, fn, fn_args in steps:
            print(f'{title} ...', flush=True)
            result = in_child(fn, *fn_args)
            if key:
                report[key] = result
            else:
                report['network'] += result
            files.write_json(args.output, report)  # as it goes: a later failure keeps what was measured
        print('building the optimized variants, two at a time (minutes on a small machine) ...', flush=True)
        report['variant_build_s'] = build_variants(dataset, folder)  # its own worker processes
        print('optimized variants ...', flush=True)
        report['variants'] = in_child(variant_latency, folder, report['variant_build_s'], args.variant_runs)
    report['seconds'] = time.time() - start
    files.write_json(args.output, report)
    print(format_report(report) + f'\nwritten to {args.output}')


if __name__ == '__main__':
    sys.exit(run_benchmark())
