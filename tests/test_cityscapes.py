"""fcn8s/cityscapes.py: label ids decoded through cityscapesscripts' table, missing and colour labels named, and
road-only training on a Cityscapes layout."""
import json
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest

import main
from fcn8s import cityscapes, datasets
from fcn8s.errors import UserError
from tests.support import make_cityscapes


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


def test_road_only_training_on_cityscapes_keeps_kittis_outputs(thin_vgg, small_cityscapes, tmp_path):
    run_dir = main.run(['--dataset', small_cityscapes, '--classes', 'road', '--vgg-dir', thin_vgg, '--runs-dir',
                        str(tmp_path), '--epochs', '1', '--batch-size', '3', '--image-shape', '64', '128',
                        '--no-download', '--precision', 'fp32'])
    history = json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs']
    assert set(history[0]['val_kitti']) == {'frankfurt', 'all'} and 'val_max_f' in history[0]
    names = sorted(os.listdir(os.path.join(small_cityscapes, 'leftImg8bit', 'test', 'berlin')))
    assert sorted(os.listdir(os.path.join(run_dir, 'kitti'))) == names  # named like the test images
    assert iio.imread(os.path.join(run_dir, 'kitti', names[0])).shape == (64, 128)
