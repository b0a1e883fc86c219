"""fcn8s/run_folder.py: new run folders, resuming an interrupted run (to the same weights) and what resuming
refuses, a full disk and a read-only runs folder."""
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import main
from fcn8s import batches, command_line, evaluation, paths, run_folder, vgg
from fcn8s.errors import UserError
from tests.support import HERE, THIN


def test_new_run_dir_never_reuses_a_folder(tmp_path):
    dirs = {run_folder.new_run_dir(str(tmp_path)) for _ in range(3)}
    assert len(dirs) == 3


@pytest.mark.parametrize('where, encoder', [('mid-epoch', 'saved model'), ('validation', 'saved model'),
                                            ('mid-epoch', 'he')])  # he: its skips unscaled, also when resumed
def test_an_interrupted_run_resumes_to_the_same_weights(thin_vgg, small_dataset, tmp_path, monkeypatch, capsys,
                                                        where, encoder):
    # Without dropout: its random masks come from stateful random ops, whose streams restart in a new session.
    weights = ['--vgg-dir', thin_vgg] if encoder == 'saved model' else ['--vgg-init', 'random']
    if encoder == 'he':
        monkeypatch.setattr(vgg, 'build_vgg16', functools.partial(vgg.build_vgg16, channels=THIN))
    flags = ['--dataset', small_dataset, *weights, '--epochs', '2', '--batch-size', '3', '--image-shape', '64',
             '224', '--val-fraction', '0.25', '--keep-prob', '1', '--no-download', '--keep-last-checkpoint']
    straight = main.run(flags + ['--runs-dir', str(tmp_path / 'straight')])
    original = batches.batch_function

    def interrupted_at_step_4(*args, **kwargs):  # 9 training images, batch 3: in the middle of epoch 2
        get_batches_fn, taken = original(*args, **kwargs), []

        def interrupted(batch_size):
            for batch in get_batches_fn(batch_size):
                if len(taken) == 4:
                    raise KeyboardInterrupt
                taken.append(batch)
                yield batch

        return interrupted

    original_validate = evaluation.make_validate_fn

    def interrupted_in_epoch_2_validation(*args):
        validate_fn, calls = original_validate(*args), []

        def validate():
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return validate_fn()

        return validate

    if where == 'mid-epoch':
        monkeypatch.setattr(batches, 'batch_function', interrupted_at_step_4)
    else:
        monkeypatch.setattr(evaluation, 'make_validate_fn', interrupted_in_epoch_2_validation)
    assert main.main(flags + ['--runs-dir', str(tmp_path / 'stopped')]) == 130
    run_dir = str(next((tmp_path / 'stopped').iterdir()))
    err = capsys.readouterr().err
    stopped_at = 4 if where == 'mid-epoch' else 6  # at 6, epoch 2's checkpoint is not written: it is redone
    assert f'interrupted at step {stopped_at}' in err and f'python main.py --resume {run_dir}' in err
    monkeypatch.setattr(batches, 'batch_function', original)
    monkeypatch.setattr(evaluation, 'make_validate_fn', original_validate)
    assert main.run(['--resume', run_dir]) == run_dir
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert [h['epoch'] for h in history] == [1, 2]
    resumed = json.load(open(os.path.join(run_dir, 'config.json')))['resumed'][0]
    assert resumed['at_step'] == (4 if where == 'mid-epoch' else 3)
    assert resumed['flags'] == {'worker_timeout': 120, 'keep_last_checkpoint': True, 'no_download': True}
    a = tf.train.latest_checkpoint(os.path.join(straight, paths.LAST_CHECKPOINT))
    b = tf.train.latest_checkpoint(os.path.join(run_dir, paths.LAST_CHECKPOINT))
    names = [name for name, _ in tf.train.list_variables(a)]
    assert 'global_step' in names and 'score_fr/weights/Adam' in names
    assert tf.train.load_variable(b, 'global_step') == 6
    for name in names:
        np.testing.assert_allclose(tf.train.load_variable(b, name), tf.train.load_variable(a, name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert tf.train.latest_checkpoint(os.path.join(run_dir, paths.BEST_CHECKPOINT))
    with pytest.raises(UserError, match='that run finished'):
        main.run(['--resume', run_dir])


def test_resume_keeps_the_runs_split_and_refuses_a_dataset_whose_training_images_changed():
    config = {'data': {'dataset': '/d', 'train_images': 2, 'val_names': ['b.png']}}
    resume = run_folder.Resume(config, None, 0, [])
    assert run_folder.resumed_split(resume, ['a.png', 'b.png', 'c.png']) == (['a.png', 'c.png'], ['b.png'])
    assert run_folder.resumed_split(resume, [], own_train=['x.png', 'y.png']) == (['x.png', 'y.png'], ['b.png'])
    with pytest.raises(UserError, match='its dataset /d changed: 3 training images now, 2 when the run started'):
        run_folder.resumed_split(resume, ['a.png', 'b.png', 'c.png', 'd.png'])


def test_resume_refuses_other_flags_and_folders_that_are_not_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        command_line.parse_args(['--resume', str(tmp_path), '--epochs', '3'])
    assert 'drop --epochs' in capsys.readouterr().err
    with pytest.raises(UserError, match='not a run folder of this project'):
        main.run(['--resume', str(tmp_path)])


def namespace_with_tmpfs():
    """Why a private tmpfs cannot be mounted here (unshare -rm: a user and mount namespace), or None if it can."""
    if not shutil.which('unshare'):
        return 'no unshare command to make a private mount namespace'
    probe = subprocess.run(['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /mnt'],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f'cannot mount a private tmpfs: {probe.stderr.strip()}'


def in_small_disk(script, tmp_path, timeout=240):
    """Run a shell script in a private mount namespace with $RUNS a tmpfs (mounted by the script): the disk
    fills up for real, and the namespace, its mount and its processes end with the script."""
    result = subprocess.run(['unshare', '-rm', 'bash', '-c', script], capture_output=True, text=True,
                            timeout=timeout, cwd=HERE, env={**os.environ, 'RUNS': str(tmp_path / 'runs'),
                                                             'PYTHON': sys.executable})
    return result.stdout + result.stderr


@pytest.mark.skipif(namespace_with_tmpfs() is not None, reason=str(namespace_with_tmpfs()))
def test_a_full_disk_stops_with_an_error_keeps_the_last_checkpoint_and_the_run_resumes(small_dataset, tmp_path):
    # A model whose checkpoints are a few MB, so that a tmpfs can be sized to hold epoch 1 but not epoch 2's last.
    vgg_dir = vgg.save_vgg16(str(tmp_path / 'vgg'), channels=(4, 8, 16, 32, 32, 256))
    with tf.Session() as sess:
        main.build_fcn(sess, vgg_dir, 0)
        last, best = run_folder.make_checkpoints()
    # Epoch 1 writes best + last; epoch 2 writes best (fits) and then last (needs last.bytes more: does not fit).
    size = int(1.5 * last.bytes + best.bytes + 1.5e6)
    assert best.bytes + 1e6 < 0.5 * last.bytes + 1.5e6 < last.bytes  # margins of about 1 MB either way
    (tmp_path / 'runs').mkdir()
    flags = (f'--dataset {small_dataset} --vgg-dir {vgg_dir} --runs-dir "$RUNS" --epochs 2 --batch-size 4 '
             '--image-shape 64 224 --val-fraction 0.25 --no-download')
    output = in_small_disk(f'''
        mount -t tmpfs -o size={size} tmpfs "$RUNS" || exit 99
        "$PYTHON" main.py {flags} 2>&1; echo "first exit $?"
        run=$(ls -d "$RUNS"/*/); ls "$run/checkpoints/last"
        mount -o remount,size=64m "$RUNS"
        "$PYTHON" main.py --resume "$run" 2>&1; echo "second exit $?"
        ls "$run"; cat "$run/config.json"''', tmp_path)
    first, second = output.split('first exit ')[0], output.split('first exit ')[1]
    assert 'may need' in first and 'warning:' in first  # the free space was checked before training
    assert re.search(r'error: cannot write a checkpoint into \S+/checkpoints/last: the disk is full .*needs '
                     r'[\d.]+ MB.*--resume \S+ \(from model-3\)', first), output
    assert 'Traceback' not in output and second.startswith('2\n')
    listing = second.split('\n')[1:4]
    assert sorted(listing) == ['checkpoint', 'model-3.data-00000-of-00001', 'model-3.index']  # nothing half-written
    assert 'second exit 0' in second and 'saved_model' in second and '"finished"' in second, output


@pytest.mark.skipif(namespace_with_tmpfs() is not None, reason=str(namespace_with_tmpfs()))
def test_a_read_only_runs_folder_is_a_clear_error(small_dataset, thin_vgg, tmp_path):
    (tmp_path / 'runs').mkdir()
    output = in_small_disk(f'''
        mount -t tmpfs -o ro tmpfs "$RUNS" || exit 99
        "$PYTHON" main.py --dataset {small_dataset} --vgg-dir {thin_vgg} --runs-dir "$RUNS"/new --no-download \
            --image-shape 64 224 --val-fraction 0.25; echo "exit $?"''', tmp_path)
    assert re.search(r'error: cannot write a run folder into \S+/new: Read-only file system', output), output
    assert 'exit 2' in output and 'Traceback' not in output


def test_a_damaged_config_is_named_when_resuming(thin_run, tmp_path):
    run_dir = tmp_path / 'run'
    shutil.copytree(thin_run, run_dir)
    config = run_dir / 'config.json'
    config.write_text(config.read_text()[:100])
    with pytest.raises(UserError, match=f'its {re.escape(str(config))} cannot be read .*settings are unknown'):
        main.run(['--resume', str(run_dir)])
    config.unlink()
    with pytest.raises(UserError, match='not a run folder of this project .it has no config.json'):
        main.run(['--resume', str(run_dir)])


def test_the_serving_signature_is_predict_signature_defs_without_its_deprecation_notice(caplog):
    with tf.Graph().as_default():
        image = tf.placeholder(tf.float32, [None, None, None, 3], name='image')
        road = tf.identity(image[..., 0], name='road_probability')
        with caplog.at_level(logging.INFO, logger='tensorflow'):
            ours = tf.saved_model.build_signature_def({'image': run_folder.tensor_info(image)},
                                                      {'road_probability': run_folder.tensor_info(road)},
                                                      tf.saved_model.PREDICT_METHOD_NAME)
        assert not caplog.records  # the notice TensorFlow logs for its TF1 helper: a user saw it after every run
        assert ours == tf.saved_model.signature_def_utils.predict_signature_def({'image': image},
                                                                                {'road_probability': road})
