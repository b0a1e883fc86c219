"""python main.py end to end: the command line, the run folder (config, metrics, checkpoints, events, export),
resuming and a full disk."""
import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import benchmark
import helper
import main
from conftest import HERE, THIN, resolve_dataset, resolve_weights, run_main, snapshot, thin_fcn
from fcn8s import (batches, command_line, datasets, evaluation, files, images, inference, kitti, outputs, paths,
                   precision, recipes, run_folder, vgg)
from fcn8s.errors import UserError


def test_a_missing_dataset_is_an_error_without_traceback(tmp_path):
    result = run_main('--dataset', str(tmp_path / 'nowhere'), '--no-download', '--runs-dir', str(tmp_path))
    assert result.returncode == 2
    assert 'nowhere: no such folder' in result.stderr and 'Traceback' not in result.stderr
    assert os.listdir(tmp_path) == []


def test_an_image_shape_not_divisible_by_32_is_refused(tmp_path):
    result = run_main('--image-shape', '100', '300', '--runs-dir', str(tmp_path))
    assert result.returncode == 2 and 'multiples of 32' in result.stderr and 'Traceback' not in result.stderr


# What TensorFlow prints as it starts: absl's and its C++ log lines, CUDA stubs, CPU-feature and oneDNN notices, its
# Python deprecation warnings.
TENSORFLOW_NOISE = re.compile(r'^[IWEF]\d{4} |absl::|cuda|cpu_feature_guard|rebuild TensorFlow|oneDNN custom|'
                              r'WARNING:tensorflow', re.M)


# Runs a script as `python SCRIPT ARGS...` would, then says on stderr whether TensorFlow was imported.
RUN_AND_TELL = ('import runpy, sys\n'
                'sys.argv = sys.argv[1:]\n'
                'try:\n'
                '    runpy.run_path(sys.argv[0], run_name="__main__")\n'
                'except SystemExit as stop:\n'
                '    code = stop.code\n'
                'print("tensorflow imported:", "tensorflow" in sys.modules, file=sys.stderr)\n'
                'sys.exit(code)\n')


@pytest.mark.parametrize('command', [['main.py'], *[['main.py', name] for name in command_line.COMMANDS],
                                     ['benchmark.py']])
def test_help_answers_before_tensorflow_is_imported_without_a_tensorflow_line(command):
    result = subprocess.run([sys.executable, '-c', RUN_AND_TELL, os.path.join(HERE, command[0]), *command[1:],
                             '--help'], capture_output=True, text=True, cwd=HERE, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'})
    assert result.returncode == 0 and result.stdout.startswith('usage: '), result.stderr
    assert result.stderr == 'tensorflow imported: False\n', result.stderr


def test_a_training_run_shows_no_tensorflow_start_up_lines(small_dataset, thin_vgg, tmp_path):
    user_env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}  # as a user's terminal has it
    result = run_main('--dataset', small_dataset, '--vgg-dir', thin_vgg, '--epochs', '1', '--batch-size', '4',
                      '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download', '--precision', 'fp32',
                      '--runs-dir', str(tmp_path), env=user_env)
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert 'dataset ' in said and 'validation scores' in said  # the project's own lines are there
    assert not TENSORFLOW_NOISE.search(said), TENSORFLOW_NOISE.search(said).group(0)
    shown = run_main('--dataset', str(tmp_path / 'nowhere'), '--runs-dir', str(tmp_path),
                     env={**user_env, 'TF_CPP_MIN_LOG_LEVEL': '0'})
    assert TENSORFLOW_NOISE.search(shown.stderr)  # the user's own TF_CPP_MIN_LOG_LEVEL wins


@pytest.mark.parametrize('flags', [['--seed', '-1'], ['--val-fraction', '1'], ['--epochs', '0'],
                                   ['--keep-prob', '0']])
def test_out_of_range_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command_line.parse_args(flags)
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


@pytest.mark.parametrize('flags, kind, balanced', [
    ([], 'camvid', True), ([], 'cityscapes', True), ([], 'kitti', False), (['--classes', 'road'], 'camvid', False),
    (['--no-balance-classes'], 'camvid', False), (['--balance-classes'], 'kitti', True),
    (['--balance-classes', '--classes', 'road'], 'camvid', True)])
def test_scene_parsing_is_class_balanced_unless_road_alone_or_turned_off(flags, kind, balanced):
    assert main.settings(command_line.parse_args(flags), 'user', kind)['balance_classes'] is balanced


def test_a_random_encoder_learns_scene_parsing_at_its_own_rate_unless_told():
    def rate(flags, source, kind, random_encoder):
        args = command_line.parse_args(flags)
        return main.encoder_learning_rate(args, main.settings(args, source, kind), kind, random_encoder)

    for kind in ('kitti', 'camvid', 'cityscapes'):
        assert rate([], 'user', kind, False) == 1e-4  # pretrained
        assert rate(['--classes', 'road'], 'user', kind, True) == 1e-4
    for kind in ('camvid', 'cityscapes'):
        assert rate([], 'user', kind, True) == 3e-4
    for source, expected in (('user', 1e-4), ('synthetic', 3e-4)):  # KITTI's layout is road: its recipe's own rate
        assert rate([], source, 'kitti', True) == expected
    assert rate(['--learning-rate', '2e-5'], 'user', 'camvid', True) == 2e-5


COMMAND_PARSERS = {'main.py': command_line.train_parser, 'benchmark.py': benchmark.benchmark_parser,
                   **{f'main.py {name}': parser for name, parser in command_line.COMMANDS.items()}}


@pytest.mark.parametrize('command', COMMAND_PARSERS)
def test_every_option_of_every_command_has_a_help_text(command):
    parser = COMMAND_PARSERS[command]()
    options = [action for action in parser._actions if action.option_strings and action.dest != 'help']
    assert options
    missing = [action.option_strings[0] for action in options
               if not action.help or not action.help.strip() or action.help == argparse.SUPPRESS]
    assert not missing, f'{command}: options without a help text: {missing}'
    text = parser.format_help()
    assert all(action.option_strings[0] in text for action in options)


@pytest.mark.parametrize('command', [[], ['evaluate'], ['optimize'], ['infer'], ['synthetic']])
def test_help_of_each_command_prints_and_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(command + ['--help'])
    assert exit_info.value.code == 0
    assert ('--checkpoint' if command[:1] in (['evaluate'], ['optimize']) else '--') in capsys.readouterr().out


def test_offline_default_falls_back_to_synthetic_scenes_and_a_random_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(recipes.RECIPES['synthetic'], 'num_train', 6)
    monkeypatch.setitem(recipes.RECIPES['synthetic'], 'num_test', 3)
    args = command_line.parse_args(['--data-dir', str(tmp_path / 'data'), '--no-download'])
    folder, source = resolve_dataset(args)
    assert source == 'synthetic' and folder == str(tmp_path / 'data' / datasets.SYNTHETIC_DIR)
    assert len(os.listdir(os.path.join(folder, 'training', 'gt_image_2'))) == 6
    assert resolve_weights(args) == (None, {'source': 'random'})
    err = capsys.readouterr().err
    assert 'KITTI Road is not available' in err and 'data_road.zip' in err
    assert "Udacity's pretrained VGG16 is not available" in err and 'vgg.zip' in err
    assert "Keras' ImageNet VGG16 is not available" in err and '--imagenet-weights PATH' in err
    assert resolve_dataset(args) == (folder, 'synthetic')  # made once, then reused


def test_named_folders_never_fall_back(tmp_path, small_dataset):
    with pytest.raises(UserError, match='no such folder'):
        resolve_dataset(command_line.parse_args(['--dataset', str(tmp_path / 'missing')]))
    with pytest.raises(UserError, match='no VGG16 SavedModel there'):
        resolve_weights(command_line.parse_args(['--vgg-dir', str(tmp_path / 'missing'), '--no-download']))
    assert resolve_dataset(command_line.parse_args(['--dataset', small_dataset])) == (small_dataset, 'user')


def test_incomplete_default_folders_are_errors_not_fallbacks(tmp_path):
    (tmp_path / 'data_road' / 'training' / 'image_2').mkdir(parents=True)
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'saved_model.pb').write_bytes(b'')
    before = snapshot(tmp_path)
    args = command_line.parse_args(['--data-dir', str(tmp_path), '--no-download'])
    with pytest.raises(UserError, match='data_road exists but does not hold KITTI Road.*untouched'):
        resolve_dataset(args)
    with pytest.raises(UserError, match='vgg exists but does not hold a VGG16 SavedModel.*untouched'):
        resolve_weights(args)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ['data_road', 'vgg']


def test_end_to_end_run_writes_its_run_folder(thin_run, thin_vgg, small_dataset):
    run_dir = thin_run
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    for name in os.listdir(test_dir):
        assert iio.imread(os.path.join(run_dir, name)).shape == iio.imread(os.path.join(test_dir, name)).shape
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['data']['source'] == 'user' and config['weights']['source'] == 'udacity'
    assert config['weights']['skip_scales'] == list(main.UNSCALED_SKIPS)  # pretrained too: CamVid runs, recipes
    assert config['data']['val_images'] == 3 and config['settings']['epochs'] == 2
    assert config['precision'] == {'chosen': 'fp32', 'why': '--precision fp32'} and config['machine']
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert [h['epoch'] for h in history] == [1, 2]
    assert all(0 <= h['val_iou_at_0.5'] <= 1 and 0 <= h['val_max_f'] <= 1 and np.isfinite(h['val_loss'])
               and np.isfinite(h['loss']) for h in history)
    assert set(history[-1]['val_kitti']) == {'um', 'umm', 'uu', 'all'}
    assert np.sum(history[-1]['val_counts']['all']) == sum(np.sum(history[-1]['val_counts'][c]) for c in
                                                         ('um', 'umm', 'uu'))
    for plot in ('history.png', 'precision_recall.png'):
        assert iio.imread(os.path.join(run_dir, plot)).ndim == 3
    events = [os.path.join(run_dir, f) for f in os.listdir(run_dir) if f.startswith('events.out.tfevents')]
    tags = {value.tag for event in tf.train.summary_iterator(events[0]) for value in event.summary.value}
    assert {'train/loss', 'val/loss', 'val/max_f', 'val/iou_at_0.5'} <= tags
    overlays = [tag for tag in tags if tag.startswith('val/') and tag.endswith('.png')]
    assert sorted(kitti.category(tag[len('val/'):]) for tag in overlays) == ['um', 'umm', 'uu']  # one each
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0  # the best epoch's weights, scored again
    evaluated = json.load(open(os.path.join(run_dir, 'eval.json')))
    best = max(history, key=lambda h: h['val_max_f'])
    for category, scores in best['val_kitti'].items():
        assert evaluated['kitti'][category] == pytest.approx(scores)
    assert evaluated['loss'] == pytest.approx(best['val_loss'])
    assert main.main(['evaluate', '--checkpoint', run_dir, '--dataset', small_dataset]) == 0
    # The exported model gives the probabilities of the best checkpoint in the training graph.
    image = images.read_rgb(os.path.join(test_dir, os.listdir(test_dir)[0]))
    batch = images.resize_image(image, (64, 224))[None].astype(np.float32)
    best = tf.train.latest_checkpoint(os.path.join(run_dir, paths.BEST_CHECKPOINT))
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, thin_vgg, 0, skip_scales=config['weights']['skip_scales'])
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        expected = sess.run(outputs.road_probability(net['logits']), {net['input_image']: batch}).reshape(64, 224)
    with tf.Graph().as_default(), tf.Session() as sess:
        meta = tf.saved_model.loader.load(sess, ['serve'], os.path.join(run_dir, paths.SERVING_DIR))
        signature = meta.signature_def['serving_default']
        served = sess.run(signature.outputs['road_probability'].name, {signature.inputs['image'].name: batch})
    assert served.shape == (1, 64, 224)
    np.testing.assert_allclose(served[0], expected, atol=1e-5)
    assert len(json.load(open(os.path.join(run_dir, 'eval.json')))['images']) == 12
    # A finished run cannot be resumed: its training state is deleted, the best checkpoint and export stay.
    assert not os.path.exists(os.path.join(run_dir, paths.LAST_CHECKPOINT))
    for name in os.listdir(test_dir):
        confidence = iio.imread(os.path.join(run_dir, 'kitti', kitti.label_name(name)))
        assert confidence.dtype == np.uint8 and confidence.shape == iio.imread(os.path.join(test_dir, name)).shape[:2]


def test_a_he_initialised_run_trains_evaluates_and_exports_with_unscaled_skips(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(vgg, 'build_vgg16', functools.partial(vgg.build_vgg16, channels=THIN))  # thin, random
    run_dir = main.run(['--dataset', small_dataset, '--vgg-init', 'random', '--runs-dir', str(tmp_path), '--epochs',
                        '1', '--batch-size', '4', '--image-shape', '64', '224', '--val-fraction', '0.25',
                        '--no-download', '--precision', 'fp32'])
    config_path = os.path.join(run_dir, 'config.json')
    with open(config_path) as f:
        config = json.load(f)
    assert config['weights'] == {'source': 'random', 'vgg_dir': None, 'skip_scales': list(main.UNSCALED_SKIPS)}
    val_loss = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs'][0]['val_loss']
    evaluated = lambda: json.load(open(os.path.join(run_dir, 'eval.json')))['loss']
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0 and evaluated() == pytest.approx(val_loss)
    del config['weights']['skip_scales']  # as a run from before the record: FCN's scales, another model
    files.write_json(config_path, config)
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0 and evaluated() != pytest.approx(val_loss)
    batch = np.random.default_rng(0).uniform(0, 255, (1, 64, 224, 3)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, None, 0, skip_scales=main.UNSCALED_SKIPS)
        tf.train.Saver(tf.trainable_variables()).restore(
            sess, tf.train.latest_checkpoint(os.path.join(run_dir, paths.BEST_CHECKPOINT)))
        expected = sess.run(outputs.road_probability(net['logits']), {net['input_image']: batch}).reshape(1, 64, 224)
    served, _ = inference.saved_model_predictor(os.path.join(run_dir, paths.SERVING_DIR), (64, 224))
    np.testing.assert_allclose(served(batch), expected, atol=1e-5)


def test_gen_test_output_does_not_grow_the_graph(thin_vgg, small_dataset):
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        outputs = helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                         os.path.join(small_dataset, 'testing'), (64, 224))
        name, first = next(outputs)
        ops = len(sess.graph.get_operations())
        rest = list(outputs)
        again = list(helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                            os.path.join(small_dataset, 'testing'), (64, 224)))
        assert len(sess.graph.get_operations()) == ops
    assert len(rest) == 3 and len(again) == 4
    assert first.shape == iio.imread(os.path.join(small_dataset, 'testing', 'image_2', name)).shape


def test_save_inference_samples_writes_an_overlay_per_kitti_test_image_into_a_new_folder(thin_vgg, small_dataset,
                                                                                          tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'data_road').symlink_to(small_dataset)  # Udacity's data_dir/data_road/testing/image_2
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        folders = [helper.save_inference_samples(str(tmp_path / 'runs'), str(tmp_path / 'data'), sess, (64, 224),
                                                 net['logits'], net['keep_prob'], net['image_input'])
                   for _ in range(2)]
    assert folders[0] != folders[1] and all(os.path.dirname(f) == str(tmp_path / 'runs') for f in folders)
    assert sorted(os.listdir(folders[0])) == sorted(os.listdir(test_dir))
    for name in os.listdir(test_dir):
        assert iio.imread(os.path.join(folders[0], name)).shape == iio.imread(os.path.join(test_dir, name)).shape


def test_a_run_on_calibrated_kitti_scores_and_writes_the_birds_eye_view(thin_run, small_dataset, tmp_path, capsys):
    """The generated scenes have KITTI calibrations: the test set's BEV maps and their zip are written as KITTI's
    server takes them, evaluate scores in the bird's-eye view too and reports an image without calibration."""
    assert main.main(['evaluate', '--checkpoint', thin_run]) == 0
    evaluated = json.load(open(os.path.join(thin_run, 'eval.json')))
    assert evaluated['bev_images'] == 3 and evaluated['bev_without_calibration'] == 0  # the validation images
    assert set(evaluated['bev_kitti']) == {'um', 'umm', 'uu', 'all'} and 0 < evaluated['bev_max_f'] <= 1
    test_names = os.listdir(os.path.join(small_dataset, 'testing', 'image_2'))
    bev_dir = os.path.join(thin_run, 'kitti_bev')
    assert sorted(os.listdir(bev_dir)) == sorted(kitti.label_name(name) for name in test_names)
    for name in os.listdir(bev_dir):
        confidence = iio.imread(os.path.join(bev_dir, name))
        assert confidence.shape == (800, 400) and confidence.dtype == np.uint8 and confidence.max() > 0
    with zipfile.ZipFile(bev_dir + '.zip') as archive:  # the files in the archive's root
        assert sorted(archive.namelist()) == sorted(os.listdir(bev_dir))
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    os.remove(dataset / 'training' / 'calib' / 'uu_000001.txt')
    capsys.readouterr()
    assert main.main(['evaluate', '--checkpoint', thin_run, '--dataset', str(dataset)]) == 0
    said = capsys.readouterr().out
    assert "bird's-eye view (KITTI's 0.05 m grid, x -10..10 m, z 6..46 m), the 11 images with a calibration" in said
    assert "bird's-eye view: 1 of the 12 images have no calibration" in said
    evaluated = json.load(open(os.path.join(thin_run, 'eval.json')))
    assert evaluated['bev_images'] == 11 and evaluated['bev_without_calibration'] == 1
    assert 0 < evaluated['bev_kitti']['all']['max_f'] <= 1
    for category in ('um', 'umm', 'uu'):
        assert iio.imread(os.path.join(thin_run, f'eval_bev_{category}.png')).shape == (800, 400, 3)


def test_evaluate_with_test_time_flip_scores_the_mean_with_the_mirror_image(thin_run, capsys):
    assert main.main(['evaluate', '--checkpoint', thin_run]) == 0
    plain = json.load(open(os.path.join(thin_run, 'eval.json')))
    assert main.main(['evaluate', '--checkpoint', thin_run, '--tta', 'flip']) == 0
    flipped = json.load(open(os.path.join(thin_run, 'eval.json')))
    assert 'each averaged with its mirror image (--tta flip)' in capsys.readouterr().out
    assert (plain['tta'], flipped['tta']) == ('none', 'flip') and flipped['loss'] == pytest.approx(plain['loss'])
    assert 0 < flipped['max_f'] <= 1 and flipped['counts'] != plain['counts']  # other probabilities, scored


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


def bf16_training_flags(small_dataset, thin_vgg, runs_dir):
    return ['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--runs-dir', runs_dir, '--epochs', '1',
            '--batch-size', '4', '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download',
            '--precision', 'bf16']


@pytest.mark.skipif(precision.mixed_precision()[0] != 'bf16', reason=precision.mixed_precision()[1])
def test_bf16_training_runs_where_the_cpu_has_it(thin_vgg, small_dataset, tmp_path):
    run_dir = main.run(bf16_training_flags(small_dataset, thin_vgg, str(tmp_path / 'runs')))
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['settings']['precision'] == 'bf16' and config['finished']
    assert config['precision']['chosen'] == 'bf16' and 'oneDNN bfloat16' in config['precision']['why']
    # evaluate scores in the precision the run validated with, so it repeats the run's own figures
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0
    evaluated = json.load(open(os.path.join(run_dir, 'eval.json')))
    best = max(json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs'], key=lambda h: h['val_max_f'])
    assert evaluated['precision'] == 'bf16' and evaluated['kitti']['all'] == pytest.approx(best['val_kitti']['all'])


def test_bf16_training_is_refused_where_the_cpu_lacks_it(thin_vgg, small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, 'mixed_precision', lambda: (None, 'this CPU has neither AVX512_BF16 nor AMX'))
    assert main.main(bf16_training_flags(small_dataset, thin_vgg, str(tmp_path / 'runs'))) == 2
    assert 'this CPU has neither AVX512_BF16 nor AMX' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'runs')  # refused before a run folder is made


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


@pytest.mark.parametrize('found, chosen', [(('bf16', 'CPU with AMX_BF16: oneDNN bfloat16'), 'bf16'),
                                           ((None, 'this CPU has neither AVX512_BF16 nor AMX'), 'fp32'),
                                           (('fp16', 'GPU: float16 auto mixed precision'), 'fp32')])
def test_precision_auto_is_bf16_where_the_cpu_has_it_and_fp32_elsewhere(monkeypatch, found, chosen):
    monkeypatch.setattr(precision, 'mixed_precision', lambda: found)
    arithmetic, why = precision.choose('auto')
    assert arithmetic == chosen and why
    assert ('loss scaling' in why) == (found[0] == 'fp16')  # a GPU trains in fp32, and says why
    assert precision.choose('fp32') == ('fp32', '--precision fp32')
    assert precision.training_config('fp32') is None
    if chosen == 'bf16':
        assert precision.training_config('bf16').graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16


@pytest.mark.parametrize('given, used', [(None, 'true'), ('false', 'false')])
def test_tensorflow_keeps_and_reuses_cpu_memory_unless_the_user_said_otherwise(small_dataset, tmp_path, monkeypatch,
                                                                             given, used):
    if given is None:
        monkeypatch.delenv(precision.BFC_SWITCH, raising=False)
    else:
        monkeypatch.setenv(precision.BFC_SWITCH, given)
    switch_at_first_session = []

    def first_session(*args, **kwargs):
        switch_at_first_session.append(os.environ.get(precision.BFC_SWITCH))
        raise InterruptedError  # enough: what matters is before

    monkeypatch.setattr(tf, 'Session', first_session)
    with pytest.raises(InterruptedError):
        main.main(['--dataset', small_dataset, '--vgg-init', 'random', '--runs-dir', str(tmp_path), '--val-fraction',
                   '0.25'])
    assert switch_at_first_session == [used]
