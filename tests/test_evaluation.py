"""fcn8s/evaluation.py, `main.py evaluate`: a run's figures scored again, in the bird's-eye view too, and with
test-time flip; what a user acts on: the confusion matrix, every image's figures and the worst images."""
import csv
import json
import os
import shutil
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest

import main
from fcn8s import batches, camvid, evaluation, kitti, metrics, run_folder
from fcn8s.errors import UserError
from fcn8s.layout import Layout
from fcn8s.metrics import ROAD_CLASSES


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


def scene_hist():
    """Truth [[0, 0, 1], [1, 2, void]] against the prediction [[0, 1, 1], [1, 1, 2]], 4 classes.

    The void pixel counts nowhere: 5 valid pixels, 3 right (pixel accuracy 3/5). Class 0: 1 right, 2 in the
    truth, 1 predicted: IoU 1 / (2 + 1 - 1) = 1/2; class 1: 2 / (2 + 4 - 2) = 1/2; class 2: 0 / (1 + 0) = 0;
    class 3 neither occurs nor is predicted: left out. Mean IoU (1/2 + 1/2 + 0) / 3 = 1/3."""
    return metrics.fast_hist([[0, 0, 1], [1, 2, -1]], [[0, 1, 1], [1, 1, 2]], 4)


def road_hist(prob, truth=((1, 1, 0), (0, -1, 1))):
    """A road image's counts [2, LEVELS], as score_examples makes them."""
    return metrics.fast_hist(np.array(truth), metrics.confidence(np.array(prob)), metrics.NUM_CLASSES, metrics.LEVELS)


def test_image_figures_of_hand_made_images():
    """Road: truth [[road, road, non-road], [non-road, void, road]], road probability [[0.9, 0.2, 0.6], [0.1, 0.7,
    0.8]]. At 0.5, of the 5 valid pixels: TP 2, FN 1 (0.2), FP 1 (0.6), TN 1: pixel accuracy 3/5, road IoU
    2 / (2 + 1 + 1) = 1/2, road F 2 TP / (2 TP + FP + FN) = 4/6 = 2/3. Without road in truth or prediction there is
    no road IoU nor F (nan), and every pixel is right. The road image's confusion matrix at 0.5, as evaluate draws
    a road model's: [[TN, FP], [FN, TP]] = [[1, 1], [1, 2]]."""
    assert evaluation.image_figures(scene_hist(), road=False) == pytest.approx(
        {'valid_pixels': 5, 'pixel_accuracy': 3 / 5, 'mean_iou': 1 / 3})
    assert evaluation.image_figures(road_hist([[0.9, 0.2, 0.6], [0.1, 0.7, 0.8]]), road=True) == pytest.approx(
        {'valid_pixels': 5, 'pixel_accuracy': 3 / 5, 'road_iou_at_0.5': 1 / 2, 'road_f_at_0.5': 2 / 3})
    np.testing.assert_array_equal(
        evaluation.working_confusion(road_hist([[0.9, 0.2, 0.6], [0.1, 0.7, 0.8]]), road=True), [[1, 1], [1, 2]])
    empty = evaluation.image_figures(road_hist(np.full((2, 3), 0.1), np.zeros((2, 3), int)), road=True)
    assert empty['pixel_accuracy'] == 1 and np.isnan(empty['road_iou_at_0.5']) and np.isnan(empty['road_f_at_0.5'])


def road_layout():
    return Layout('test', '', ROAD_CLASSES, ((0, 0, 0), (0, 255, 0)), [], None, [], lambda name: name[:2], None, None,
                  None)


def test_image_figures_keeps_the_worst_images_and_writes_a_row_per_image():
    """Road IoUs at 0.5 of the images a..e: 1/2, 1 (all right), nan (no road anywhere: never among the worst),
    0 (road missed), 1/2 (a tie with a, scored later). The two worst kept: d, then a."""
    probs = {'a': [[0.9, 0.2, 0.6], [0.1, 0.7, 0.8]], 'b': [[0.9, 0.9, 0.1], [0.1, 0.1, 0.9]],
             'd': np.full((2, 3), 0.1), 'e': [[0.9, 0.2, 0.6], [0.1, 0.7, 0.8]]}
    per_image = evaluation.ImageFigures(road_layout(), 2)
    image = np.zeros((2, 3, 3), np.uint8)
    for name in 'abcde':
        truth = np.zeros((2, 3), np.int8) if name == 'c' else np.array([[1, 1, 0], [0, -1, 1]], np.int8)
        prob = np.full((2, 3), 0.1) if name == 'c' else np.array(probs[name])
        per_image(f'{name}x.png', image, truth, prob, road_hist(prob, truth))
    assert [name for name, *_ in per_image.worst_images()] == ['dx.png', 'ax.png']
    rows = list(csv.DictReader(per_image.csv_text().splitlines()))
    assert [(row['name'], row['category'], row['valid_pixels']) for row in rows] == [
        (f'{name}x.png', f'{name}x', '5' if name != 'c' else '6') for name in 'abcde']
    assert [float(row['road_iou_at_0.5'] or 'nan') for row in rows] == pytest.approx([0.5, 1, np.nan, 0, 0.5],
                                                                                     nan_ok=True)
    assert rows[2]['road_f_at_0.5'] == '' and float(rows[0]['road_f_at_0.5']) == pytest.approx(2 / 3)
    assert len(evaluation.ImageFigures(road_layout(), 0).worst_images()) == 0


def test_gallery_picture_puts_image_truth_and_prediction_side_by_side():
    """Road: truth painted green where road, the void pixel (0, 0) left as it is; wider than GALLERY_WIDTH, the
    three are scaled down together; scene parsing paints with the layout's palette."""
    image = np.full((4, 5, 3), 100, np.uint8)
    truth = np.array([[-1, 1, 0, 0, 0]] * 4, np.int8)
    picture = evaluation.gallery_picture(image, truth, np.full((4, 5), 0.9), road_layout())
    assert picture.shape == (4, 15, 3)
    assert (picture[:, :5] == image).all()
    assert (picture[0, 5] == 100).all() and picture[0, 6, 1] > 100 and (picture[0, 7] == 100).all()
    assert (picture[:, 10:, 1] > 100).all()  # all predicted road
    wide = evaluation.gallery_picture(np.zeros((300, 1000, 3), np.uint8), np.zeros((300, 1000), np.int8),
                                      np.zeros((300, 1000)), road_layout())
    assert wide.shape == (160, evaluation.GALLERY_WIDTH, 3)
    scene = road_layout()._replace(classes=('sky', 'car'), palette=((0, 0, 255), (255, 0, 0)))
    painted = evaluation.gallery_picture(image, truth, np.ones((4, 5), int), scene)
    assert (painted[0, 5] == 100).all() and painted[0, 7, 2] > 100 and (painted[:, 10:, 0] > 100).all()


def test_evaluate_writes_the_confusion_matrix_every_images_figures_and_the_worst(thin_run, camvid_run, capsys):
    """A road run and a scene-parsing run: eval_confusion.png, a CSV row per scored image in scoring order, the
    gallery of min(N, images) pictures, worst first (ties in scoring order), each the image | truth | prediction
    triple at the image's own size; --worst 0: none, and the previous gallery gone."""
    for run_dir, worst, figure in ((thin_run, 2, 'road_iou_at_0.5'), (camvid_run, 8, 'mean_iou')):
        assert main.main(['evaluate', '--checkpoint', run_dir, '--worst', str(worst)]) == 0
        folder = os.path.join(run_dir, 'eval_worst')
        assert folder in capsys.readouterr().out
        assert iio.imread(os.path.join(run_dir, 'eval_confusion.png')).shape[0] >= 300
        _, examples = evaluation.validation_set(run_dir, run_folder.read_config(run_dir, '--checkpoint'))
        rows = list(csv.DictReader(open(os.path.join(run_dir, 'eval_images.csv'))))
        assert [row['name'] for row in rows] == [name for name, _, _ in examples]
        assert all(int(row['valid_pixels']) > 0 and 0 <= float(row['pixel_accuracy']) <= 1 for row in rows)
        ranked = sorted((float(row[figure]), i) for i, row in enumerate(rows) if row[figure])[:worst]
        assert sorted(os.listdir(folder)) == [f'{rank}_{os.path.splitext(rows[i]["name"])[0]}.png'
                                              for rank, (_, i) in enumerate(ranked, 1)]
        _, image, _ = examples[ranked[0][1]]
        first = iio.imread(os.path.join(folder, sorted(os.listdir(folder))[0]))
        assert first.shape == (image.shape[0], 3 * image.shape[1], 3) and (first[:, :image.shape[1]] == image).all()
    assert len(os.listdir(os.path.join(camvid_run, 'eval_worst'))) == len(rows)  # fewer images than --worst
    assert main.main(['evaluate', '--checkpoint', thin_run, '--worst', '0']) == 0
    assert not os.path.exists(os.path.join(thin_run, 'eval_worst'))


def test_a_validation_set_too_large_to_keep_is_streamed_read_once_first_and_scored_the_same(small_camvid, tmp_path,
                                                                                          monkeypatch, capsys):
    camvid_dir = tmp_path / 'camvid'
    shutil.copytree(small_camvid, camvid_dir)
    layout = camvid.open_layout(str(camvid_dir))
    pairs = [(image, label) for _, image, label in layout.val]
    kept = evaluation.load_examples(pairs, layout.load_pair)
    monkeypatch.setattr(batches, 'available_memory', lambda: 1)  # nothing fits
    streamed = evaluation.load_examples(pairs, layout.load_pair)
    assert isinstance(kept, list) and isinstance(streamed, evaluation.StreamedExamples)
    assert 'validation images: streamed from disk' in capsys.readouterr().out
    for passes in range(2):  # read again at every pass, the same each time
        for (name, image, classes), (name2, image2, classes2) in zip(kept, streamed):
            assert name == name2 and (image == image2).all() and (classes == classes2).all()
    iio.imwrite(pairs[2][1], np.full(iio.imread(pairs[2][1]).shape, 200, np.uint8))  # ids CamVid lacks
    with pytest.raises(UserError, match='has label ids \\[200\\]'):
        evaluation.load_examples(pairs, layout.load_pair)
