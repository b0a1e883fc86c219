"""fcn8s/evaluation.py, `main.py evaluate`: a run's figures scored again, in the bird's-eye view too, and with
test-time flip."""
import json
import os
import shutil
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest

import main
from fcn8s import kitti


def test_evaluate_repeats_a_multi_class_runs_figures(camvid_run):
    assert main.main(['evaluate', '--checkpoint', camvid_run]) == 0
    evaluated = json.load(open(os.path.join(camvid_run, 'eval.json')))
    best = max(json.load(open(os.path.join(camvid_run, 'metrics.json')))['epochs'], key=lambda h: h['val_score'])
    assert evaluated['mean_iou'] == pytest.approx(best['val_mean_iou'])
    assert os.path.isfile(os.path.join(camvid_run, 'eval_class_iou.png'))


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
