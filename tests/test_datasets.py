"""fcn8s/datasets.py: layouts recognised by their folders, class tables, and where the training data comes from
(a --dataset folder, KITTI in the data folder, or the generated scenes offline), with its errors."""
import os

import numpy as np
import pytest

from fcn8s import camvid, cityscapes, command_line, datasets, recipes
from fcn8s.errors import UserError
from fcn8s.metrics import ROAD_CLASSES
from tests.support import make_zip, resolve_dataset, resolve_weights, run_main, snapshot


def test_each_layout_is_recognised_by_its_folders(small_dataset, small_camvid, small_cityscapes, tmp_path):
    assert [datasets.provider(f).KIND for f in (small_dataset, small_camvid, small_cityscapes)] == ['kitti', 'camvid',
                                                                                             'cityscapes']
    (tmp_path / 'images').mkdir()
    with pytest.raises(UserError) as error:
        datasets.provider(str(tmp_path))
    said = str(error.value)
    assert 'none of the layouts' in said and 'no training/image_2' in said and 'no leftImg8bit/train' in said
    assert 'no train, trainannot' in said


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


def test_a_models_classes_come_from_its_layout_or_else_their_count():
    assert datasets.class_table('camvid', 11)[:2] == (camvid.CLASSES, camvid.PALETTE)
    assert datasets.class_table('cityscapes', 19)[:2] == (cityscapes.CLASSES, cityscapes.PALETTE)
    assert datasets.class_table(None, 19)[0] == cityscapes.CLASSES  # a model file alone: told by the count
    # Cityscapes' label images hold its labelIds, not the 19 train ids: road (train id 0) is labelId 7.
    assert datasets.class_table('cityscapes', 19)[2](np.array([[0]]))[0, 0] == 7
    names, palette, encode = datasets.class_table('camvid', 5)  # a layout whose classes were 5: numbered
    assert names == tuple(f'class {i}' for i in range(5)) and len(set(palette)) == 5


def test_a_missing_dataset_is_an_error_without_traceback(tmp_path):
    result = run_main('--dataset', str(tmp_path / 'nowhere'), '--no-download', '--runs-dir', str(tmp_path))
    assert result.returncode == 2
    assert 'nowhere: no such folder' in result.stderr and 'Traceback' not in result.stderr
    assert os.listdir(tmp_path) == []


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


def test_a_dataset_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / 'data_road.zip').write_bytes(make_zip({'data_road/x': b''}))
    result = run_main('--dataset', str(tmp_path / 'data_road.zip'), '--runs-dir', str(tmp_path / 'runs'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'data_road.zip is a file: it must be a dataset folder (unzip it first)' in result.stderr
    assert os.listdir(tmp_path) == ['data_road.zip']
