"""fcn8s/kitti.py, KITTI Road's layout and labels: colours decoded, images paired with labels by name, the summary
of a dataset folder, and what a broken dataset says."""
import os
import re
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import helper
import main
from fcn8s import batches, kitti, metrics
from fcn8s.errors import UserError
from tests.support import KITTI_SAMPLES, snapshot


def test_decode_label_of_a_hand_made_patch():
    gt = np.array([[[255, 0, 255], [255, 0, 0]], [[0, 0, 0], [255, 0, 255]]], np.uint8)
    classes = kitti.decode_label(gt)
    np.testing.assert_array_equal(classes, [[metrics.ROAD, metrics.NON_ROAD], [metrics.IGNORE, metrics.ROAD]])
    np.testing.assert_array_equal(batches.one_hot(classes), [[[0, 1], [1, 0]], [[0, 0], [0, 1]]])


def test_decode_label_names_unknown_colours():
    gt = np.zeros((2, 2, 3), np.uint8)
    gt[0, 0] = (255, 0, 254)
    with pytest.raises(ValueError, match=r'\(255, 0, 254\): 1 px'):
        kitti.decode_label(gt)


def test_batches_pair_images_and_labels_by_name(small_dataset, tmp_path):
    """Labels listed in another order than images (a stray lane label sorts between them) still pair by name."""
    folder = tmp_path / 'training'
    folder.mkdir()
    os.symlink(os.path.join(small_dataset, 'training', 'image_2'), folder / 'image_2')
    (folder / 'gt_image_2').mkdir()
    src = os.path.join(small_dataset, 'training', 'gt_image_2')
    for name in os.listdir(src):
        os.symlink(os.path.join(src, name), folder / 'gt_image_2' / name)
    os.symlink(os.path.join(src, 'um_road_000000.png'), folder / 'gt_image_2' / 'um_lane_000001.png')
    pairs = kitti.training_pairs(str(folder))
    assert all(os.path.basename(l) == kitti.label_name(os.path.basename(i)) for i, l in pairs)
    images, labels = next(helper.gen_batch_function(str(folder), (64, 224))(100))
    assert images.shape == (12, 64, 224, 3) and labels.shape == (12, 64, 224, 2)
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 255
    assert set(np.unique(labels.sum(-1))) <= {0.0, 1.0}


def test_an_image_without_ground_truth_is_a_clear_error(small_dataset, tmp_path):
    folder = tmp_path / 'training'
    (folder / 'gt_image_2').mkdir(parents=True)
    os.symlink(os.path.join(small_dataset, 'training', 'image_2'), folder / 'image_2')
    with pytest.raises(UserError, match='um_000000.png needs .*um_road_000000.png'):
        helper.gen_batch_function(str(folder), (64, 224))


@pytest.mark.skipif(not os.path.isdir(KITTI_SAMPLES), reason='no real KITTI samples beside the project')
def test_real_kitti_files_load():
    training = os.path.join(KITTI_SAMPLES, 'training')
    images, labels = next(helper.gen_batch_function(training, (160, 576))(2))
    assert images.shape == (2, 160, 576, 3) and labels.shape == (2, 160, 576, 2)
    road = labels[..., 1].mean()
    invalid = (labels.sum(-1) == 0).mean()
    assert 0.1 < road < 0.3 and 0 < invalid < 0.05  # um_road_000000/1: ~15 % road, ~2 % invalid
    tops = images[:, :40].mean()
    assert tops > images[:, -40:].mean()  # bright sky above, dark road below: not transposed


def test_dataset_summary_counts_converts_and_ignores(small_dataset, tmp_path):
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    image = iio.imread(dataset / 'training/image_2/um_000000.png')
    iio.imwrite(dataset / 'training/image_2/um_000000.png', np.dstack([image, np.full(image.shape[:2], 200,
                                                                                      np.uint8)]))
    iio.imwrite(dataset / 'testing/image_2/um_000000.png', image[..., 0])  # grayscale
    shutil.copy(dataset / 'training/gt_image_2/um_road_000000.png', dataset / 'training/gt_image_2/um_lane_000000.png')
    (dataset / 'training/image_2/.DS_Store').write_bytes(b'\0')
    shutil.copy(dataset / 'training/gt_image_2/um_road_000000.png', dataset / 'training/gt_image_2/um_road_000099.png')
    summary = kitti.summary(kitti.open_layout(str(dataset)), 'user')
    lines = summary.splitlines()
    assert lines[0] == f'dataset {dataset} (user)'
    assert lines[2].split() == ['training', 'images', '4', '4', '4', '12']
    assert lines[3].split() == ['road', 'labels', '5', '4', '4', '13']
    assert lines[4].split() == ['test', 'images', '2', '1', '1', '4']
    assert 'note: 1 image(s) in PIL mode L are converted to RGB' in lines
    assert 'note: 1 image(s) in PIL mode RGBA are converted to RGB (alpha dropped)' in lines
    assert 'ignored: 1 lane label(s) (*_lane_*: the ego-lane, not the road)' in lines
    assert f'ignored: 1 file(s) not named like KITTI\'s, e.g. {dataset}/training/image_2/.DS_Store' in lines
    assert f'ignored: 1 road label(s) without their image, e.g. {dataset}/training/gt_image_2/um_road_000099.png' \
        in lines
    rgb, _ = kitti.load_pair(str(dataset / 'training/image_2/um_000000.png'),
                              str(dataset / 'training/gt_image_2/um_road_000000.png'))
    np.testing.assert_array_equal(rgb, image)


def write_label(path, edit):
    gt = iio.imread(path)
    iio.imwrite(path, edit(gt))


def paint(gt, colour, rows=3):
    gt = gt.copy()
    gt[:rows, :5] = colour
    return gt


BROKEN_DATASETS = {
    # name: (how to break a copy of the small dataset, the file the message names, what it says)
    'missing test folder': (lambda d: shutil.rmtree(d / 'testing/image_2'), 'testing/image_2', 'does not exist'),
    'empty training set': (lambda d: [p.unlink() for p in (d / 'training/image_2').iterdir()],
                           'training/image_2', 'holds no images'),
    'only a lane label': (lambda d: os.replace(d / 'training/gt_image_2/um_road_000001.png',
                                               d / 'training/gt_image_2/um_lane_000001.png'),
                          'training/image_2/um_000001.png', 'lane labels mark the ego-lane, not the road'),
    'label of the wrong size': (lambda d: write_label(d / 'training/gt_image_2/uu_road_000002.png',
                                                      lambda gt: gt[:, :-10]),
                                'training/gt_image_2/uu_road_000002.png', 'but its image is'),
    'foreign label colours': (lambda d: write_label(d / 'training/gt_image_2/umm_road_000003.png',
                                                    lambda gt: paint(gt, (0, 255, 0))),
                              'training/gt_image_2/umm_road_000003.png', '(0, 255, 0): 15 px'),
    'RGBA label': (lambda d: write_label(d / 'training/gt_image_2/um_road_000002.png',
                                         lambda gt: np.dstack([gt, np.full(gt.shape[:2], 255, np.uint8)])),
                   'training/gt_image_2/um_road_000002.png', 'labels must be RGB'),
    'truncated image': (lambda d: (d / 'training/image_2/um_000003.png').write_bytes(
                            (d / 'training/image_2/um_000003.png').read_bytes()[:3000]),
                        'training/image_2/um_000003.png', 'cannot be read as an image'),
    'float image': (lambda d: Image.fromarray(np.full((64, 224), 0.5, np.float32)).save(
                        d / 'training/image_2/umm_000002.png', format='TIFF'),  # a .png in name only
                    'training/image_2/umm_000002.png', 'neither 8-bit nor 16-bit grey'),
    'not an image': (lambda d: (d / 'training/image_2/uu_000001.png').write_text('<html>'),
                     'training/image_2/uu_000001.png', 'cannot be read as an image'),
}


@pytest.mark.parametrize('case', BROKEN_DATASETS)
def test_a_broken_dataset_is_a_clear_error_and_stays_untouched(small_dataset, tmp_path, capsys, case):
    breakage, named, says = BROKEN_DATASETS[case]
    dataset = tmp_path / 'road'
    shutil.copytree(small_dataset, dataset)
    breakage(dataset)
    before = snapshot(dataset)
    code = main.main(['--dataset', str(dataset), '--vgg-init', 'random', '--runs-dir', str(tmp_path / 'runs'),
                      '--image-shape', '64', '224', '--val-fraction', '0.25'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err
    assert re.search(f'error: .*{re.escape(str(dataset / named))}.*{re.escape(says)}', err), err
    assert snapshot(dataset) == before and not (tmp_path / 'runs').exists()
