"""Road segmentation metrics in pure numpy, in the style of FCN's `fast_hist`.

Labels use 0 = non-road, 1 = road and IGNORE (-1) for KITTI's black "invalid" area, which no metric counts.
"""
import numpy as np

NUM_CLASSES = 2
IGNORE, NON_ROAD, ROAD = -1, 0, 1


def fast_hist(label, pred, num_classes=NUM_CLASSES):
    """Confusion counts [num_classes, num_classes] (rows: truth, columns: prediction), ignored pixels left out."""
    label, pred = np.asarray(label).ravel(), np.asarray(pred).ravel()
    keep = (label >= 0) & (label < num_classes)
    return np.bincount(num_classes * label[keep].astype(int) + pred[keep].astype(int),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def road_iou(hist):
    """Intersection over union of the road class from a confusion matrix; nan when there is no road at all."""
    tp = hist[ROAD, ROAD]
    union = hist[ROAD, :].sum() + hist[:, ROAD].sum() - tp
    return float(tp / union) if union else float('nan')


def road_recall_and_false_positive_rate(hist):
    """(fraction of road pixels labelled road, fraction of non-road pixels labelled road): Udacity's pass bar."""
    road, non_road = hist[ROAD, :].sum(), hist[NON_ROAD, :].sum()
    recall = hist[ROAD, ROAD] / road if road else float('nan')
    fpr = hist[NON_ROAD, ROAD] / non_road if non_road else float('nan')
    return float(recall), float(fpr)
