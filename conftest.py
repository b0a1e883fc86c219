"""Fixtures shared by project_tests.py and tests/ (their helpers are in tests/support.py): thin SavedModels with
the VGG tensor names, small KITTI-, CamVid- and Cityscapes-layout folders of synthetic scenes, finished thin runs. Each
test runs in a graph of its own. No network, GPU, KITTI or real VGG16."""
import os

import pytest
import tensorflow.compat.v1 as tf

import main
from fcn8s import synthetic, vgg
from tests.support import CAMVID, SMALL_SIZES, THIN, make_cityscapes


@pytest.fixture(autouse=True)
def graph():
    with tf.Graph().as_default() as g:
        yield g


@pytest.fixture(autouse=True)
def empty_keras_cache(tmp_path_factory, monkeypatch):
    """Keras' cache may hold the real 550 MB ImageNet weights: tests must never find (and convert) them."""
    monkeypatch.setenv('KERAS_HOME', str(tmp_path_factory.mktemp('keras_home')))


@pytest.fixture(scope='session')
def thin_vgg(tmp_path_factory):
    return vgg.save_vgg16(str(tmp_path_factory.mktemp('weights') / 'vgg'), channels=THIN)


@pytest.fixture(scope='session')
def small_dataset(tmp_path_factory):
    return synthetic.make_synthetic_kitti(str(tmp_path_factory.mktemp('data') / 'road'), 12, 4, seed=1,
                                          sizes=SMALL_SIZES, progress=False)


@pytest.fixture(scope='session')
def thin_run(thin_vgg, small_dataset, tmp_path_factory):
    """A finished run folder: 2 epochs of the thin model at 64x224 on the small dataset, in fp32."""
    runs = tmp_path_factory.mktemp('runs')
    with tf.Graph().as_default():
        run_dir = main.run(['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--runs-dir', str(runs),
                            '--epochs', '2', '--batch-size', '4', '--image-shape', '64', '224',
                            '--val-fraction', '0.25', '--no-download', '--precision', 'fp32'])
    assert os.path.dirname(run_dir) == str(runs)
    return run_dir


@pytest.fixture(scope='session')
def optimized_run(thin_run):
    with tf.Graph().as_default():
        assert main.main(['optimize', '--checkpoint', thin_run, '--runs', '2']) == 0
    return thin_run


@pytest.fixture(scope='session')
def small_camvid(tmp_path_factory):
    """The synthetic scenes in CamVid's layout: 8 train, 4 val, 3 test images of 64x96 (class ids 0-10)."""
    return synthetic.make_synthetic_camvid(str(tmp_path_factory.mktemp('data') / 'camvid'), 8, 4, 3, seed=1,
                                           size=(64, 96), progress=False)


@pytest.fixture(scope='session')
def real_camvid(tmp_path_factory):
    """A CamVid folder of a few real frames of ../shared/camvid, linked (never copied into the repository): train
    from two drives, val from a third stretch; skipped where ../shared/camvid is absent."""
    if not os.path.isdir(CAMVID):
        pytest.skip('the real CamVid frames are not in ../shared/camvid')
    root = tmp_path_factory.mktemp('camvid')
    chosen = {'train': sorted(os.listdir(os.path.join(CAMVID, 'train')))[::60][:6],
              'val': sorted(os.listdir(os.path.join(CAMVID, 'val')))[:2]}
    for split, names in chosen.items():
        for folder in (split, split + 'annot'):
            os.makedirs(root / folder)
            for name in names:
                os.symlink(os.path.join(CAMVID, folder, name), root / folder / name)
    return str(root)


@pytest.fixture(scope='session')
def small_cityscapes(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp('data') / 'cityscapes')


@pytest.fixture(scope='session')
def camvid_run(thin_vgg, small_camvid, tmp_path_factory):
    """A finished scene-parsing run: 2 epochs of the thin model on the synthetic CamVid set, 11 classes."""
    with tf.Graph().as_default():
        return main.run(['--dataset', small_camvid, '--vgg-dir', thin_vgg, '--runs-dir',
                         str(tmp_path_factory.mktemp('runs')), '--epochs', '2', '--batch-size', '4', '--image-shape',
                         '64', '96', '--learning-rate', '1e-3', '--keep-prob', '1', '--no-download', '--precision',
                         'fp32'])
