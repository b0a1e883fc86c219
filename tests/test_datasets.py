"""Datasets beyond KITTI (datasets.py, cityscapes.py, camvid.py): layouts detected by their folders, labels
decoded through the datasets' own tables, road-only mappings, pairing by name, scene-parsing metrics against
Cityscapes' own evaluation, and a multi-class run end to end."""
import json
import os
import re
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cityscapes_eval

import helper
import main
from conftest import make_cityscapes
from fcn8s import camvid, cityscapes, datasets, files, metrics, synthetic
from fcn8s.errors import UserError
from fcn8s.metrics import ROAD_CLASSES


def test_each_layout_is_recognised_by_its_folders(small_dataset, small_camvid, small_cityscapes, tmp_path):
    assert [datasets.provider(f).KIND for f in (small_dataset, small_camvid, small_cityscapes)] == ['kitti', 'camvid',
                                                                                             'cityscapes']
    (tmp_path / 'images').mkdir()
    with pytest.raises(UserError) as error:
        datasets.provider(str(tmp_path))
    said = str(error.value)
    assert 'none of the layouts' in said and 'no training/image_2' in said and 'no leftImg8bit/train' in said
    assert 'no train, trainannot' in said


def test_cityscapes_label_ids_become_train_ids_with_void_ignored():
    table = cityscapes.decoder(road_only=False)
    # road, sidewalk, building, car; unlabeled, ego vehicle, static, bicycle
    ids = np.array([[7, 8, 11, 26], [0, 1, 4, 33]], np.uint8)
    classes = cityscapes.decode_label('x.png', ids, table)
    np.testing.assert_array_equal(classes, [[0, 1, 2, 13], [-1, -1, -1, 18]])
    assert cityscapes.CLASSES[0] == 'road' and cityscapes.CLASSES[18] == 'bicycle' and len(cityscapes.CLASSES) == 19
    np.testing.assert_array_equal(cityscapes.label_ids(classes[0]), [7, 8, 11, 26])  # back to the server's ids
    road = cityscapes.decode_label('x.png', ids, cityscapes.decoder(road_only=True))
    np.testing.assert_array_equal(road, [[1, 0, 0, 0], [-1, -1, -1, 0]])  # road; labelled non-road; void
    with pytest.raises(UserError, match=r'x.png has label ids \[40, 200\]'):
        cityscapes.decode_label('x.png', np.array([[40, 7, 200]], np.uint8), table)


def test_camvid_ids_keep_their_classes_and_11_is_ignored():
    ids = np.array([[0, 3, 8, 10, 11]], np.uint8)
    np.testing.assert_array_equal(camvid.decode_label('a.png', ids, camvid.decoder(False)), [[0, 3, 8, 10, -1]])
    np.testing.assert_array_equal(camvid.decode_label('a.png', ids, camvid.decoder(True)), [[0, 1, 0, 0, -1]])
    with pytest.raises(UserError, match=r"a.png has label ids \[12, 37\]: CamVid's class ids are 0-10"):
        camvid.decode_label('a.png', np.array([[12, 37, 3]], np.uint8), camvid.decoder(False))


def test_layouts_pair_images_and_labels_by_name_and_take_their_own_splits(small_camvid, small_cityscapes):
    cam = datasets.open_layout(small_camvid)
    assert (len(cam.train), len(cam.val), len(cam.test)) == (8, 4, 3) and cam.classes == camvid.CLASSES
    assert all(os.path.basename(image) == os.path.basename(label) and '/trainannot/' in label
               for _, image, label in cam.train)
    assert all(label for _, _, label in cam.test) and cam.category('0006R0_000001.png') == '0006R0'
    city = datasets.open_layout(small_cityscapes, 'road')
    assert (len(city.train), len(city.val), len(city.test)) == (6, 3, 2) and city.classes == ROAD_CLASSES
    assert all(label.endswith(name.replace('_leftImg8bit.png', '_gtFine_labelIds.png'))
               for name, _, label in city.train)
    assert [label for _, _, label in city.test] == [None, None]  # the benchmark withholds them
    image, classes = city.load_pair(city.train[0][1], city.train[0][2])
    assert image.shape == (64, 128, 3) and set(np.unique(classes)) <= {-1, 0, 1} and (classes[-4:] == -1).all()


def test_camvid_needs_its_val_labels_but_not_its_test_labels(small_camvid, tmp_path):
    root = tmp_path / 'camvid'
    shutil.copytree(small_camvid, root)
    (root / 'testannot' / '0001TP_000000.png').unlink()  # withheld, as benchmarks do
    layout = datasets.open_layout(str(root))
    assert [label for name, _, label in layout.test if name == '0001TP_000000.png'] == [None]
    label = root / 'valannot' / '0006R0_000000.png'
    label.unlink()
    with pytest.raises(UserError, match=f'0006R0_000000.png has no label: {re.escape(str(label))} is missing .1 of '
                                        '4 val images'):
        datasets.open_layout(str(root))


def test_a_missing_label_and_a_colour_label_are_named(small_cityscapes, tmp_path):
    root = make_cityscapes(tmp_path / 'c', counts=(('train', 'ulm', 2), ('val', 'ulm', 1)))
    label = os.path.join(root, 'gtFine', 'train', 'ulm', 'ulm_000001_000019_gtFine_labelIds.png')
    os.remove(label)
    with pytest.raises(UserError, match=f'ulm_000001_000019_leftImg8bit.png has no label: {re.escape(label)} is '
                                        'missing .1 of 2 train images'):
        datasets.open_layout(root)
    iio.imwrite(label, np.zeros((64, 128, 3), np.uint8))
    layout = datasets.open_layout(root)
    with pytest.raises(UserError, match='is a PIL mode RGB image: labels must be one-channel'):
        layout.load_pair(layout.train[1][1], label)


def test_scene_parsing_figures_match_cityscapes_own_evaluation(tmp_path):
    """One pair of images, ground truth and prediction in labelIds, scored by cityscapesscripts'
    evalPixelLevelSemanticLabeling and by this project (trainIds, fast_hist, segmentation_scores)."""
    rng = np.random.default_rng(0)
    eval_ids = [label.id for label in cityscapes.EVAL_LABELS]
    truth = rng.choice(eval_ids[:6] + [0, 1], (40, 60)).astype(np.uint8)  # six classes and two void ids
    prediction = np.where(rng.random((40, 60)) < 0.7, truth, rng.choice(eval_ids[:8], (40, 60))).astype(np.uint8)
    prediction[~np.isin(prediction, eval_ids)] = eval_ids[0]  # a prediction is always an evaluated class
    iio.imwrite(tmp_path / 'gt_gtFine_labelIds.png', truth)
    iio.imwrite(tmp_path / 'pred.png', prediction)
    args = cityscapes_eval.args
    args.evalInstLevelScore, args.quiet = False, True
    matrix = cityscapes_eval.generateMatrix(args)
    cityscapes_eval.evaluatePair(str(tmp_path / 'pred.png'), str(tmp_path / 'gt_gtFine_labelIds.png'), matrix, {},
                                 {}, args)
    theirs = {cityscapes_eval.id2label[i].name: cityscapes_eval.getIouScoreForLabel(i, matrix, args)
              for i in args.evalLabels}
    table = cityscapes.decoder(road_only=False)
    hist = metrics.fast_hist(cityscapes.decode_label('gt', truth, table),
                             cityscapes.decode_label('p', prediction, table), len(cityscapes.CLASSES))
    ours = metrics.segmentation_scores(hist)
    for name, iou in zip(cityscapes.CLASSES, ours['iou']):
        assert (np.isnan(iou) and np.isnan(theirs[name])) or iou == pytest.approx(theirs[name]), name
    assert ours['mean_iou'] == pytest.approx(cityscapes_eval.getScoreAverage(theirs, args))
    assert np.isfinite(ours['iou'][:6]).all() and 0.3 < ours['mean_iou'] < 0.9  # a case with something to compare


def test_the_synthetic_camvid_set_has_the_scenes_classes(small_camvid):
    annotations = os.path.join(small_camvid, 'trainannot')
    classes = iio.imread(os.path.join(annotations, os.listdir(annotations)[0]))
    assert classes.dtype == np.uint8 and set(np.unique(classes)) <= set(synthetic.SCENE_CLASS.values())
    assert {camvid.ROAD, synthetic.SCENE_CLASS['sky']} <= set(np.unique(classes))
    image, scene = synthetic.render_scene_classes(np.random.default_rng(7), 64, 96)
    kitti_image, _ = synthetic.render_scene(np.random.default_rng(7), 64, 96)
    np.testing.assert_array_equal(image, kitti_image)  # the same scene as the KITTI-layout one


def test_main_py_synthetic_writes_the_camvid_set_and_never_into_an_existing_folder(tmp_path, capsys):
    root = tmp_path / 'demo'
    assert main.main(['synthetic', str(root), '--counts', '2', '1', '1']) == 0
    assert datasets.provider(str(root)).KIND == 'camvid'
    layout = datasets.open_layout(str(root))
    assert (len(layout.train), len(layout.val), len(layout.test)) == (2, 1, 1)
    before = sorted(p.name for p in root.rglob('*'))
    assert main.main(['synthetic', str(root), '--counts', '1', '1', '1']) == 2
    assert 'already exists' in capsys.readouterr().err and sorted(p.name for p in root.rglob('*')) == before
    (tmp_path / 'mine.partial').mkdir()
    (tmp_path / 'mine.partial' / 'notes.txt').write_text('a folder of the user that happens to have that name')
    assert main.main(['synthetic', str(tmp_path / 'mine'), '--counts', '1', '1', '1']) == 2
    assert (tmp_path / 'mine.partial' / 'notes.txt').exists() and not (tmp_path / 'mine').exists()
    interrupted = tmp_path / 'again.partial'
    interrupted.mkdir()
    (interrupted / files.STAGING_MARK).touch()  # an interrupted generation: made anew
    assert main.main(['synthetic', str(tmp_path / 'again'), '--counts', '1', '1', '1']) == 0
    assert not interrupted.exists() and not (tmp_path / 'again' / files.STAGING_MARK).exists()


@pytest.fixture(scope='session')
def camvid_run(thin_vgg, small_camvid, tmp_path_factory):
    """A finished scene-parsing run: 2 epochs of the thin model on the synthetic CamVid set, 11 classes."""
    with tf.Graph().as_default():
        return main.run(['--dataset', small_camvid, '--vgg-dir', thin_vgg, '--runs-dir',
                         str(tmp_path_factory.mktemp('runs')), '--epochs', '2', '--batch-size', '4', '--image-shape',
                         '64', '96', '--learning-rate', '1e-3', '--keep-prob', '1', '--no-download', '--precision',
                         'fp32'])


def test_a_multi_class_run_writes_class_overlays_labels_and_a_legend(camvid_run, small_camvid):
    config = json.load(open(os.path.join(camvid_run, 'config.json')))
    assert config['data']['layout'] == 'camvid' and config['data']['classes'] == list(camvid.CLASSES)
    assert config['data']['val_names'] == sorted(os.listdir(os.path.join(small_camvid, 'val')))  # its own split
    history = json.load(open(os.path.join(camvid_run, 'metrics.json')))['epochs']
    last = history[-1]
    assert set(last['val_classes']) == set(camvid.CLASSES) and 0 <= last['val_mean_iou'] <= 1
    assert last['val_score'] == last['val_mean_iou'] and np.array(last['val_confusion']).shape == (11, 11)
    assert np.isnan(last['val_classes']['Pedestrian']['iou'] or np.nan)  # never in the scenes: left out
    for name in os.listdir(os.path.join(small_camvid, 'test')):
        overlay = iio.imread(os.path.join(camvid_run, name))
        labels = iio.imread(os.path.join(camvid_run, 'labels', name))
        assert overlay.shape == (64, 96, 3) and labels.shape == (64, 96) and labels.dtype == np.uint8
        assert labels.max() <= 10
    assert iio.imread(os.path.join(camvid_run, 'legend.png')).shape[0] == 20 * 11
    assert os.path.isfile(os.path.join(camvid_run, 'class_iou.png')) and not os.path.exists(
        os.path.join(camvid_run, 'kitti'))


def test_evaluate_repeats_a_multi_class_runs_figures(camvid_run):
    assert main.main(['evaluate', '--checkpoint', camvid_run]) == 0
    evaluated = json.load(open(os.path.join(camvid_run, 'eval.json')))
    best = max(json.load(open(os.path.join(camvid_run, 'metrics.json')))['epochs'], key=lambda h: h['val_score'])
    assert evaluated['mean_iou'] == pytest.approx(best['val_mean_iou'])
    assert os.path.isfile(os.path.join(camvid_run, 'eval_class_iou.png'))


def test_road_only_training_on_cityscapes_keeps_kittis_outputs(thin_vgg, small_cityscapes, tmp_path):
    run_dir = main.run(['--dataset', small_cityscapes, '--classes', 'road', '--vgg-dir', thin_vgg, '--runs-dir',
                        str(tmp_path), '--epochs', '1', '--batch-size', '3', '--image-shape', '64', '128',
                        '--no-download', '--precision', 'fp32'])
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert set(history[0]['val_kitti']) == {'frankfurt', 'all'} and 'val_max_f' in history[0]
    names = sorted(os.listdir(os.path.join(small_cityscapes, 'leftImg8bit', 'test', 'berlin')))
    assert sorted(os.listdir(os.path.join(run_dir, 'kitti'))) == names  # named like the test images
    assert iio.imread(os.path.join(run_dir, 'kitti', names[0])).shape == (64, 128)


def test_a_models_classes_come_from_its_layout_or_else_their_count():
    assert datasets.class_table('camvid', 11)[:2] == (camvid.CLASSES, camvid.PALETTE)
    assert datasets.class_table('cityscapes', 19)[:2] == (cityscapes.CLASSES, cityscapes.PALETTE)
    assert datasets.class_table(None, 19)[0] == cityscapes.CLASSES  # a model file alone: told by the count
    # Cityscapes' label images hold its labelIds, not the 19 train ids: road (train id 0) is labelId 7.
    assert datasets.class_table('cityscapes', 19)[2](np.array([[0]]))[0, 0] == 7
    names, palette, encode = datasets.class_table('camvid', 5)  # a layout whose classes were 5: numbered
    assert names == tuple(f'class {i}' for i in range(5)) and len(set(palette)) == 5


def test_optimize_and_infer_work_on_a_multi_class_run(camvid_run, small_camvid, tmp_path, capsys):
    """optimize scores each variant on mean IoU (with --tta flip here); infer writes class-coloured overlays and, with
    --probabilities, CamVid's label images, from the run folder and from an optimized file alone."""
    assert main.main(['optimize', '--checkpoint', camvid_run, '--runs', '2', '--tta', 'flip']) == 0
    report = json.load(open(os.path.join(camvid_run, 'optimized', 'optimization.json')))
    assert report['score_name'] == 'mean IoU' and report['tta'] == 'flip'
    assert 'each averaged with its mirror image (--tta flip)' in open(os.path.join(camvid_run, 'optimized',
                                                                                   'optimization.md')).read()
    fp32 = next(row for row in report['variants'] if row['variant'] == 'fp32')
    reference = next(row for row in report['variants'] if row['variant'] == 'saved_model')
    assert fp32['score'] == pytest.approx(reference['score'], abs=1e-3) and 0 < fp32['score'] <= 1
    test_dir = os.path.join(small_camvid, 'test')
    # (fp32 for the run folder: --precision auto could take a faster int8 model, whose labels differ a little)
    for model, out, extra in ((camvid_run, 'run', ['--precision', 'fp32']),
                              (os.path.join(camvid_run, 'optimized', 'int8.tflite'), 'file', [])):
        assert main.main(['infer', '--model', model, '--input', test_dir, '--output', str(tmp_path / out),
                          '--probabilities', *extra]) == 0
        assert '11 classes' in capsys.readouterr().out
        for name in os.listdir(test_dir):
            assert iio.imread(tmp_path / out / name).shape == (64, 96, 3)
            labels = iio.imread(tmp_path / out / 'probabilities' / name)
            assert labels.shape == (64, 96) and labels.max() <= 10
    run_labels = iio.imread(os.path.join(camvid_run, 'labels', name))
    assert (iio.imread(tmp_path / 'run' / 'probabilities' / name) == run_labels).mean() > 0.99  # as training's


# ----------------------------------------------------------------------------- real frames: SegNet's CamVid

def test_real_camvid_frames_are_read_as_a_camvid_layout_with_its_11_classes_and_void(real_camvid):
    layout = datasets.open_layout(real_camvid)
    assert layout.kind == 'camvid' and layout.classes == camvid.CLASSES and len(layout.classes) == 11
    assert [name for name, _, _ in layout.train] == sorted(os.listdir(os.path.join(real_camvid, 'train')))
    assert all(os.path.basename(image) == os.path.basename(label) for _, image, label in layout.train + layout.val)
    raw_void, void, seen = 0, 0, set()
    for _, image_path, label_path in layout.train + layout.val:
        image, classes = layout.load_pair(image_path, label_path)
        raw = iio.imread(label_path)
        assert image.shape == (360, 480, 3) and classes.shape == (360, 480) and classes.dtype == np.int8
        assert set(np.unique(classes)) <= set(range(11)) | {metrics.IGNORE}
        np.testing.assert_array_equal(classes[raw < 11], raw[raw < 11])  # ids 0-10 are the classes themselves
        raw_void, void = raw_void + int((raw == camvid.UNLABELLED).sum()), void + int((classes == metrics.IGNORE).sum())
        seen |= set(np.unique(classes[classes >= 0]).tolist())
    assert void == raw_void > 0  # unlabelled (11), and only it, is void
    assert {camvid.ROAD, camvid.CLASSES.index('Sky'), camvid.CLASSES.index('Building')} <= seen


def test_a_short_training_on_real_camvid_frames_lowers_the_loss(real_camvid, thin_vgg):
    layout = datasets.open_layout(real_camvid)
    pairs = [(image, label) for _, image, label in layout.train]
    get_batches_fn = helper.gen_batch_function(None, (96, 128), pairs=pairs, load_pair=layout.load_pair,
                                               num_classes=11)
    images, labels = next(get_batches_fn(6))
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, thin_vgg, 0, num_classes=11)
        feed = {net['input_image']: images, net['correct_label']: labels, net['keep_prob']: 1.0,
                net['learning_rate']: 1e-3}
        losses = [sess.run([net['train_op'], net['cross_entropy_loss']], feed)[1] for _ in range(20)]
    assert losses[0] == pytest.approx(np.log(11), rel=0.1)  # score layers start near zero: a uniform guess
    assert losses[-1] < 0.8 * losses[0]
