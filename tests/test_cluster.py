"""Training on several devices and machines (fcn8s/cluster.py): two CPU devices in one process against one device,
TF_CONFIG's checks, and two worker processes of `python main.py` on loopback ports."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import helper
import main
from fcn8s import cluster, images, precision, vgg
from fcn8s.errors import UserError
from tests.support import HERE, THIN


def train_steps(build, sess_target_config, vgg_dir, small_dataset, steps, replicas):
    """Weights {name: value} and losses after `steps` steps of batch 3 (odd: the replicas' padding is used)
    on the small dataset's seeded batches, for a graph from build(sess)."""
    get_batches_fn = helper.gen_batch_function(os.path.join(small_dataset, 'training'), (64, 224), seed=0,
                                               augment=True)
    if replicas > 1:
        get_batches_fn = cluster.padded(get_batches_fn, replicas)
    target, config = sess_target_config
    losses = []
    with tf.Graph().as_default(), tf.Session(target, config=config) as sess:
        net = build(sess)
        batches = get_batches_fn(3)
        for _ in range(steps):
            images, labels = next(batches)
            _, loss = sess.run([net['train_op'], net.get('train_loss', net['cross_entropy_loss'])],
                               {net['input_image']: images, net['correct_label']: labels,
                                net['learning_rate']: 1e-3, net['keep_prob']: 1.0})
            losses.append(loss)
        weights = {v.op.name: sess.run(v) for v in tf.trainable_variables()}
        step = sess.run(tf.train.get_global_step())
        fc6_ops = {op.type for op in sess.graph.get_operations() if 'fc6/' in op.name}
    return weights, losses, step, fc6_ops


@pytest.mark.parametrize('encoder', ['saved_model', 'own_saved_model', 'built_in_code'])
def test_two_devices_train_as_one_device_on_the_same_batches(thin_vgg, small_dataset, monkeypatch, tmp_path,
                                                             encoder):
    """MirroredStrategy over two CPU devices against one device: the same weights after 2 steps (batches of 3
    images, so that one replica's share is padded), the same loss; the encoder from a SavedModel imported onto
    mirrored variables, the project's own SavedModel built in code and restored, or a random one built in code.
    (From a random start, float rounding grows quickly with the steps: after 4 steps some biases differ by 1e-3
    of their size.)"""
    vgg_dir = thin_vgg if encoder == 'saved_model' else None
    if encoder == 'own_saved_model':
        vgg_dir = vgg.save_vgg16(str(tmp_path / 'vgg'), THIN, seed=3, info={'source': 'imagenet'})
    if encoder == 'built_in_code':  # the thin encoder in code: build_vgg16 with the thin channels
        original = cluster.vgg.build_vgg16
        monkeypatch.setattr(cluster.vgg, 'build_vgg16', lambda **kw: original(channels=THIN, **kw))
    single = train_steps(lambda sess: main.build_fcn(sess, vgg_dir, 0), ('', None), vgg_dir, small_dataset, 2, 1)
    two = cluster.local(['/cpu:0', '/cpu:1'])
    assert two.replicas == 2 and two.described['strategy'] == 'MirroredStrategy'
    mirrored = train_steps(lambda sess: cluster.build_replicated_fcn(sess, two, vgg_dir, 0,
                                                                     main.network(None)),
                           ('', two.config), vgg_dir, small_dataset, 2, 2)
    assert single[2] == mirrored[2] == 2  # one global step per step, however many replicas
    np.testing.assert_allclose(mirrored[1], single[1], rtol=1e-5)
    assert set(mirrored[0]) == set(single[0])
    initial = train_steps(lambda sess: main.build_fcn(sess, vgg_dir, 0), ('', None), vgg_dir, small_dataset, 0, 1)
    if vgg_dir:  # the SavedModel's weights (its seed is not the graph's), fc6 as it builds it
        np.testing.assert_array_equal(initial[0]['fc6/weights'], tf.train.load_variable(
            os.path.join(vgg_dir, 'variables', 'variables'), 'fc6/weights'))
    own = encoder != 'saved_model'
    assert ('MatMul' in mirrored[3]) == own and ('Conv2D' in mirrored[3]) != own, mirrored[3]
    for name, value in single[0].items():  # relative to each tensor (float rounding grows with every step)
        assert np.linalg.norm(mirrored[0][name] - value) <= 1e-5 * np.linalg.norm(value), name
    # Two steps moved every tensor a hundred times further than that: equality is not of initial values.
    assert all(np.linalg.norm(value - initial[0][name]) > 1e-3 * np.linalg.norm(value)
               for name, value in single[0].items())


@pytest.mark.parametrize('value, says', [
    ('{"cluster": ', 'TF_CONFIG is not valid JSON'),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
     'no parameter servers'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', 'is not in its cluster'),
    ('{"cluster": {"worker": ["nowhere"]}, "task": {"type": "worker", "index": 0}}', 'host:port'),
])
def test_a_malformed_tf_config_is_a_clear_error(value, says):
    with pytest.raises(UserError, match=re.escape(says)):
        cluster.parse_tf_config(value)


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        address = f'127.0.0.1:{taken.getsockname()[1]}'
        with pytest.raises(UserError, match=f'{re.escape(address)}, but port .* is taken here'):
            cluster.check_port_free(address)


def free_ports(count):
    """Ports on 127.0.0.1 that nothing listens on now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(flags, tmp_path, count=2, own_flags=None):
    """`python main.py flags` (and worker i's own_flags[i]) as the workers of a TF_CONFIG cluster on loopback,
    each with its own runs folder tmp_path/runs_<index>; (processes, their log paths)."""
    addresses = [f'127.0.0.1:{port}' for port in free_ports(count)]
    processes, logs = [], []
    for index in range(count):
        tf_config = json.dumps({'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': index}})
        logs.append(tmp_path / f'worker_{index}.log')
        with open(logs[-1], 'w') as log:
            processes.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, 'main.py'), *flags, *(own_flags or {}).get(index, ()), '--runs-dir',
                 str(tmp_path / f'runs_{index}')],
                stdout=log, stderr=subprocess.STDOUT, cwd=HERE, env={**os.environ, 'TF_CONFIG': tf_config}))
    return processes, logs


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def thin_flags(small_dataset, thin_vgg, epochs, arithmetic='fp32'):
    return ['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--epochs', str(epochs), '--batch-size', '3',
            '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download', '--precision', arithmetic,
            '--keep-prob', '1', '--learning-rate', '1e-3', '--worker-timeout', '20']



def road_probability(run_dir, batch):
    with tf.Graph().as_default(), tf.Session() as sess:
        signature = tf.saved_model.loader.load(sess, ['serve'], os.path.join(run_dir, 'saved_model')).signature_def[
            'serving_default']
        return sess.run(signature.outputs['road_probability'].name, {signature.inputs['image'].name: batch})


BF16_CPU = precision.mixed_precision()


# bf16: a replica rounds its half of a batch, one process the whole batch: equal to bf16's precision, not fp32's.
@pytest.mark.parametrize('arithmetic, tolerance', [
    ('fp32', 1e-4),
    pytest.param('bf16', 3e-2, marks=pytest.mark.skipif(BF16_CPU[0] != 'bf16', reason=BF16_CPU[1]))])
def test_two_worker_processes_train_as_one_and_only_the_chief_writes(small_dataset, thin_vgg, tmp_path, arithmetic,
                                                                     tolerance):
    flags = thin_flags(small_dataset, thin_vgg, 2, arithmetic)
    processes, logs = start_workers(flags, tmp_path)
    try:
        codes = [process.wait(timeout=240) for process in processes]
    finally:
        stop(processes)
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert not (tmp_path / 'runs_1').exists()  # the other worker wrote nothing
    (chief_run,) = (tmp_path / 'runs_0').iterdir()
    config = json.loads((chief_run / 'config.json').read_text())
    assert config['cluster']['workers'] == 2 and config['cluster']['replicas'] == 2
    assert config['cluster']['strategy'] == 'MultiWorkerMirroredStrategy' and config['finished']
    single = main.run(flags + ['--runs-dir', str(tmp_path / 'single')])
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    image = np.stack([images.resize_image(images.read_rgb(os.path.join(test_dir, name)), (64, 224))
                      for name in ('um_000000.png', 'uu_000000.png')]).astype(np.float32)
    expected = road_probability(single, image)
    assert expected.std() > 0.01  # a trained model whose probabilities vary: agreement means something
    assert config['precision']['chosen'] == arithmetic
    np.testing.assert_allclose(road_probability(str(chief_run), image), expected, atol=tolerance)


def test_a_worker_that_dies_stops_the_other_with_an_error_naming_it(small_dataset, thin_vgg, tmp_path):
    processes, logs = start_workers(thin_flags(small_dataset, thin_vgg, epochs=500), tmp_path)
    try:
        deadline = time.time() + 120
        while 'epoch 2 ' not in logs[1].read_text() and time.time() < deadline:  # training, not setting up
            assert processes[1].poll() is None, logs[1].read_text()[-2000:]
            time.sleep(1)
        processes[1].send_signal(signal.SIGKILL)
        code = processes[0].wait(timeout=120)  # the chief stops on its own (a chief that hung would time out here)
    finally:
        stop(processes)
    said = logs[0].read_text()
    assert code == 2 and 'Traceback' not in said
    lost = r'error: task worker:0 stopped: it lost contact with worker:1 \(127\.0\.0\.1:\d+\)'
    assert re.search(lost, said), said[-2000:]


def test_workers_that_start_from_different_weights_stop_with_an_error(small_dataset, thin_vgg, tmp_path):
    # As a machine without data/vgg would: the same shapes, other weights (here another seed's, not random).
    other = vgg.save_vgg16(str(tmp_path / 'other_vgg'), channels=THIN, seed=5)
    processes, logs = start_workers(thin_flags(small_dataset, thin_vgg, epochs=1), tmp_path,
                                    own_flags={1: ['--vgg-dir', other]})
    try:
        codes = [process.wait(timeout=180) for process in processes]
    finally:
        stop(processes)
    for code, log in zip(codes, logs):  # both stop, naming the same worker
        said = log.read_text()
        assert code == 2 and 'Traceback' not in said, said[-2000:]
        assert re.search(r'error: the workers start from different weights: worker:1 \([\d.e+-]+\) against the '
                         r"chief's sum of squares", said), said[-2000:]
        assert 'epoch 1 ' not in said  # before the first step
    assert f'task worker:1 loaded {other}' in logs[1].read_text()


def data_flags(data_dir, thin_vgg):
    """thin_flags for a run on what DATA_DIR holds (KITTI in data_road, else generated scenes in synthetic_road)."""
    return ['--data-dir', str(data_dir), '--vgg-dir', thin_vgg, '--epochs', '1', '--batch-size', '3',
            '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download', '--precision', 'fp32',
            '--worker-timeout', '5']


def test_a_worker_without_the_chiefs_dataset_stops_with_an_error_naming_it(small_dataset, thin_vgg, tmp_path):
    (tmp_path / 'chief_data').mkdir()
    (tmp_path / 'chief_data' / 'data_road').symlink_to(small_dataset)  # the chief has KITTI, the worker nothing
    processes, logs = start_workers([], tmp_path, own_flags={0: data_flags(tmp_path / 'chief_data', thin_vgg),
                                                             1: data_flags(tmp_path / 'worker_data', thin_vgg)})
    try:
        code = processes[1].wait(timeout=120)
    finally:
        stop(processes)
    said = logs[1].read_text()
    assert code == 2 and 'Traceback' not in said, said[-2000:]
    missing = os.path.join(str(tmp_path / 'worker_data'), 'data_road')
    assert (f'error: this worker has no training data: neither KITTI Road ({missing}) nor the generated scenes'
            in said and 'within 5 s (--worker-timeout)' in said), said[-2000:]


def test_a_worker_with_other_data_than_the_chief_stops_before_training(small_dataset, thin_vgg, tmp_path):
    # The chief trains on KITTI; the worker's data folder has no KITTI but generated scenes of an earlier run.
    for data_dir, folder in (('chief_data', 'data_road'), ('worker_data', 'synthetic_road')):
        (tmp_path / data_dir).mkdir()
        (tmp_path / data_dir / folder).symlink_to(small_dataset)
    processes, logs = start_workers([], tmp_path, own_flags={0: data_flags(tmp_path / 'chief_data', thin_vgg),
                                                             1: data_flags(tmp_path / 'worker_data', thin_vgg)})
    try:
        codes = [process.wait(timeout=180) for process in processes]
    finally:
        stop(processes)
    for code, log in zip(codes, logs):  # both stop before the first step, naming the worker and both sources
        said = log.read_text()
        assert code == 2 and 'Traceback' not in said and 'epoch 1 ' not in said, said[-2000:]
        assert re.search(r'error: the workers train on different data: worker:1 \(the generated road scenes, \d+ '
                         r"training images\) against the chief's KITTI Road, \d+ training images", said), said[-2000:]


def test_the_data_check_names_the_tasks_that_differ_from_the_chief():
    spec = {'chief': ['a:1'], 'worker': ['b:1', 'c:1']}
    three = cluster.Cluster(None, '', None, 3, 3, ('worker', 1), False, None, {'task': 'worker:1'}, spec)
    kitti = cluster.data_fingerprint('kitti', ['um_000000.png', 'um_000001.png'], ['um_000002.png'])
    cluster.check_same_data(three, [kitti] * 3, 'data/data_road')
    other_split = cluster.data_fingerprint('kitti', ['um_000000.png', 'um_000002.png'], ['um_000001.png'])
    with pytest.raises(UserError, match=r"different data: worker:0 \(KITTI Road, 2 training images\) against the "
                                        r"chief's KITTI Road, 2 training images \(task worker:1 reads data/data_road"):
        cluster.check_same_data(three, [kitti, other_split, kitti], 'data/data_road')


def test_a_malformed_tf_config_is_one_error_line_and_writes_nothing(small_dataset, thin_vgg, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, 'main.py'), *thin_flags(small_dataset, thin_vgg, 1),
                             '--runs-dir', str(tmp_path / 'runs')], capture_output=True, text=True, timeout=120,
                            cwd=HERE, env={**os.environ, 'TF_CONFIG': '{"cluster": {"worker": ["127.0.0.1:1"]}'})
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'error: TF_CONFIG is not valid JSON' in result.stderr and not (tmp_path / 'runs').exists()


def test_the_weights_check_names_the_tasks_that_differ_from_the_chief():
    spec = {'chief': ['a:1'], 'worker': ['b:1', 'c:1']}  # replica ids: chief 0, then the workers
    three = cluster.Cluster(None, '', None, 3, 3, ('worker', 0), False, None, {'task': 'worker:0'}, spec)
    cluster.check_same_weights(three, [840.1, 840.1, 840.1], None)  # equal: nothing to say
    with pytest.raises(UserError, match=r"different weights: worker:1 \(841\) against the chief's sum of squares "
                                        r'840\.1 \(task worker:0 loaded no VGG16 weights'):
        cluster.check_same_weights(three, [840.1, 840.1, 841.0], None)


def test_a_lost_task_is_looked_for_until_its_port_closes(monkeypatch):
    # A killed worker's port closes only once the kernel has freed its memory: at first it may still answer.
    listening = socket.socket()
    listening.bind(('127.0.0.1', 0))
    listening.listen()
    address = f'127.0.0.1:{listening.getsockname()[1]}'
    workers = cluster.Cluster(None, '', None, 2, 2, ('worker', 0), True, None, {},
                              {'worker': ['127.0.0.1:1', address]})  # this task's own address is not asked
    pauses = []

    def pause(seconds):  # lost_tasks' wait between two rounds of asking: the port closes during the second
        pauses.append(seconds)
        if len(pauses) == 2:
            listening.close()

    monkeypatch.setattr(cluster, 'time', types.SimpleNamespace(monotonic=time.monotonic, sleep=pause))
    try:
        assert cluster.lost_tasks(workers, patience_s=0) == [] and pauses == []
        assert cluster.lost_tasks(workers, patience_s=30) == [f'worker:1 ({address})']
        assert pauses == [1, 1]  # asked three times, a second apart: twice while the port answered, then lost
    finally:
        listening.close()
