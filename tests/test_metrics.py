"""fcn8s/metrics.py on hand-made arrays, every figure derived in the docstring, and against Cityscapes' own
evaluation."""
import imageio.v3 as iio
import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cityscapes_eval

from fcn8s import cityscapes, metrics


def test_fast_hist_and_road_iou_on_a_hand_made_case():
    label = np.array([[1, 1, 0], [0, -1, 1]])
    pred = np.array([[1, 0, 1], [0, 1, 1]])
    hist = metrics.fast_hist(label, pred)
    np.testing.assert_array_equal(hist, [[1, 1], [1, 2]])  # the ignored pixel counts nowhere
    assert metrics.road_iou(hist) == pytest.approx(2 / 4)
    assert metrics.road_recall_and_false_positive_rate(hist) == pytest.approx((2 / 3, 1 / 2))


def level_hist(road_levels, non_road_levels):
    hist = np.zeros((2, metrics.LEVELS), np.int64)
    np.add.at(hist[metrics.ROAD], road_levels, 1)
    np.add.at(hist[metrics.NON_ROAD], non_road_levels, 1)
    return hist


def test_kitti_road_scores_of_a_hand_made_case():
    """Road pixels at confidence levels 200, 200, 100, 50; non-road at 150, 20, 20, 20 (of 255).

    Levels 21..50 predict all 4 road pixels and 1 non-road: PRE 0.8, REC 1, F 8/9, the best (levels 51..100:
    F 0.75; 151..200: F 2/3; <= 20: F 2/3). IoU there = 4 / (4 + 1) = 0.8. AP: the best precision at recall
    >= 0, 0.1, ..., 0.5 is 1 (levels 151..200), at 0.6 ... 1 it is 0.8: (6 + 5 x 0.8) / 11 = 10/11. At 0.5
    (level 128): TP 2, FP 1, FN 2: IoU 0.4, recall 0.5, FPR 0.25: Udacity's bar fails.
    """
    scores = metrics.kitti_road_scores(level_hist([200, 200, 100, 50], [150, 20, 20, 20]))
    assert scores == pytest.approx({'max_f': 8 / 9, 'threshold': 21 / 255, 'precision': 0.8, 'recall': 1.0,
                                    'fpr': 0.25, 'fnr': 0.0, 'ap': 10 / 11, 'iou': 0.8, 'iou_at_0.5': 0.4,
                                    'recall_at_0.5': 0.5, 'fpr_at_0.5': 0.25, 'udacity_pass': False})
    assert scores['iou'] == pytest.approx(scores['max_f'] / (2 - scores['max_f']))


def test_kitti_scores_ignore_the_invalid_area_and_pool_counts_across_images():
    classes_a = np.array([[1, 1, 0], [0, -1, -1]])
    levels_a = np.array([[250, 90, 10], [200, 255, 0]], np.uint8)
    classes_b = np.array([[1, 0], [-1, 1]])
    levels_b = np.array([[30, 40], [0, 220]], np.uint8)
    hist_a = metrics.fast_hist(classes_a, levels_a, 2, metrics.LEVELS)
    hist_b = metrics.fast_hist(classes_b, levels_b, 2, metrics.LEVELS)
    np.testing.assert_array_equal(hist_a + hist_b, level_hist([250, 90, 30, 220], [10, 200, 40]))
    changed = levels_a.copy()
    changed[1, 1:] = (3, 77)  # the invalid pixels' confidence counts nowhere
    np.testing.assert_array_equal(metrics.fast_hist(classes_a, changed, 2, metrics.LEVELS), hist_a)
    pooled = metrics.kitti_road_scores(hist_a + hist_b)
    # Pooled: road 250, 220, 90, 30 vs non-road 200, 40, 10. Levels 11..30 predict all road and 2 non-road
    # (PRE 2/3, REC 1, F 0.8); 41..90: PRE 3/4, REC 3/4, F 0.75; 201..220: PRE 1, REC 1/2, F 2/3.
    assert pooled['max_f'] == pytest.approx(0.8) and pooled['threshold'] == pytest.approx(11 / 255)
    assert pooled['fpr'] == pytest.approx(2 / 3) and pooled['fnr'] == 0


def test_confidence_maps_are_rounded_uint8_and_half_is_road():
    levels = metrics.confidence(np.array([0.0, 0.5, 0.499, 1.0, 1.2]))
    np.testing.assert_array_equal(levels, [0, 128, 127, 255, 255])
    assert levels.dtype == np.uint8 and metrics.LEVEL_AT_HALF == 128


def test_segmentation_scores_of_a_hand_made_confusion_matrix():
    """Three classes; rows are the truth, columns the prediction:

        [[3, 1, 0],    class 0: TP 3, FN 1, FP 0 + 2 = 2: IoU 3 / 6 = 0.5, accuracy 3 / 4
         [0, 4, 0],    class 1: TP 4, FN 0, FP 1:         IoU 4 / 5 = 0.8, accuracy 1
         [2, 0, 0]]    class 2: TP 0, FN 2, FP 0:         IoU 0,           accuracy 0

    mean IoU (0.5 + 0.8 + 0) / 3 = 0.4333, pixel accuracy 7 / 10, mean accuracy (0.75 + 1 + 0) / 3 = 0.5833.
    A fourth class that neither occurs nor is predicted is nan and left out of the means.
    """
    hist = np.array([[3, 1, 0, 0], [0, 4, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    scores = metrics.segmentation_scores(hist)
    np.testing.assert_allclose(scores['iou'], [0.5, 0.8, 0.0, np.nan])
    np.testing.assert_allclose(scores['accuracy'], [0.75, 1.0, 0.0, np.nan])
    assert scores['mean_iou'] == pytest.approx(1.3 / 3) and scores['pixel_accuracy'] == pytest.approx(0.7)
    assert scores['mean_accuracy'] == pytest.approx(1.75 / 3)
    labels = np.array([[0, 0, 0, 0, 1], [1, 1, 1, 2, 2], [-1, -1, 3, 3, 3]])  # -1: void, never counted
    pred = np.array([[0, 0, 0, 1, 1], [1, 1, 1, 0, 0], [2, 2, 3, 3, 3]])
    np.testing.assert_array_equal(metrics.fast_hist(labels, pred, 4)[:3, :3], hist[:3, :3])


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
