"""Road segmentation metrics in pure numpy, in the style of FCN's `fast_hist`.

Labels use 0 = non-road, 1 = road and IGNORE (-1) for KITTI's black "invalid" area, which no metric counts.
The KITTI road benchmark (devkit, perspective view) scores a uint8 confidence map: for each of the 256 thresholds
t_i = i / 255, road where confidence >= t_i, with counts pooled over all images of a category. All of that
follows from one histogram per image, `fast_hist(classes, confidence, NUM_CLASSES, LEVELS)`: [2, 256] counts of
(true class, confidence level), which add up across images.
"""
import numpy as np

NUM_CLASSES = 2
IGNORE, NON_ROAD, ROAD = -1, 0, 1
LEVELS = 256  # uint8 confidence levels, the KITTI benchmark's input
# "road probability > 0.5" as the benchmark sees it: round(255 p) >= 128 (p = 0.5 itself rounds to 128).
LEVEL_AT_HALF = 128
AP_RECALLS = np.linspace(0, 1, 11)  # Pascal VOC's 11-point interpolated average precision, as in the devkit
ROAD_CLASSES = ('non-road', 'road')  # a road model's classes, ids NON_ROAD and ROAD


def is_road(classes):
    """Whether a model of these class names is a road model (road against the rest, scored as KITTI scores road,
    with a road probability as its output), rather than scene parsing (every class, scored by IoU)."""
    return tuple(classes) == ROAD_CLASSES


def fast_hist(label, pred, num_classes=NUM_CLASSES, num_preds=None):
    """Counts [num_classes, num_preds] of (truth, prediction) pairs, ignored pixels left out. With the default
    num_preds = num_classes it is the confusion matrix (rows: truth, columns: prediction)."""
    num_preds = num_preds or num_classes
    label, pred = np.asarray(label).ravel(), np.asarray(pred).ravel()
    keep = (label >= 0) & (label < num_classes)
    return np.bincount(num_preds * label[keep].astype(int) + pred[keep].astype(int),
                       minlength=num_classes * num_preds).reshape(num_classes, num_preds)


def confidence(prob):
    """Road probability float [H, W] -> the uint8 confidence map KITTI's benchmark reads (x 255, rounded)."""
    return np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def binarize(level_hist, level=LEVEL_AT_HALF):
    """[2, LEVELS] counts -> [2, 2] confusion matrix for "road where confidence >= level"."""
    return np.stack([level_hist[:, :level].sum(axis=1), level_hist[:, level:].sum(axis=1)], axis=1)


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


def _positives_per_level(level_hist):
    """(TP [LEVELS], FP [LEVELS], road pixels, non-road pixels) for "road where confidence >= level i"."""
    non_road, road = np.asarray(level_hist, np.int64)
    # At level i: everything minus what lies below i.
    tp = road.sum() - np.concatenate([[0], np.cumsum(road)[:-1]])
    fp = non_road.sum() - np.concatenate([[0], np.cumsum(non_road)[:-1]])
    return tp, fp, road.sum(), non_road.sum()


def precision_recall(level_hist):
    """(precision [LEVELS], recall [LEVELS]) over the 256 thresholds; precision 0 where nothing is road."""
    tp, fp, positives, _ = _positives_per_level(level_hist)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(tp + fp > 0, tp / (tp + fp), 0.0), tp / positives


def kitti_road_scores(level_hist):
    """KITTI's road scores from pooled counts [2, LEVELS] of (true class, confidence level).

    MaxF is the best F1 over the 256 thresholds; its threshold is the working point of PRE (precision), REC
    (recall), FPR = FP / non-road and FNR = FN / road, and of road IoU (= F / (2 - F) there). AP is the 11-point
    interpolated average precision. The *_at_0.5 figures and Udacity's pass bar (recall >= 0.8, non-road
    labelled road <= 0.2) use the threshold 0.5 instead. Figures without road or non-road pixels are nan.
    """
    tp, fp, positives, negatives = _positives_per_level(level_hist)
    fn = positives - tp
    precision, recall = precision_recall(level_hist)
    with np.errstate(divide='ignore', invalid='ignore'):
        f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if not positives or not negatives:
        nan = float('nan')
        return {k: nan for k in ('max_f', 'threshold', 'precision', 'recall', 'fpr', 'fnr', 'ap', 'iou',
                                 'iou_at_0.5', 'recall_at_0.5', 'fpr_at_0.5')} | {'udacity_pass': False}
    best = int(np.argmax(f))
    at_half = binarize(np.asarray(level_hist), LEVEL_AT_HALF)
    recall_half, fpr_half = road_recall_and_false_positive_rate(at_half)
    return {
        'max_f': float(f[best]), 'threshold': best / (LEVELS - 1),
        'precision': float(precision[best]), 'recall': float(recall[best]),
        'fpr': float(fp[best] / negatives), 'fnr': float(fn[best] / positives),
        'ap': float(np.mean([precision[recall >= r].max(initial=0.0) for r in AP_RECALLS])),
        'iou': float(tp[best] / (tp[best] + fp[best] + fn[best])),
        'iou_at_0.5': road_iou(at_half), 'recall_at_0.5': recall_half, 'fpr_at_0.5': fpr_half,
        'udacity_pass': bool(recall_half >= 0.8 and fpr_half <= 0.2),
    }


def kitti_table(hists):
    """{category: KITTI scores, ..., 'all': scores of the counts pooled over every category} from
    {category: [2, LEVELS] counts}."""
    table = {cat: kitti_road_scores(hist) for cat, hist in sorted(hists.items())}
    table['all'] = kitti_road_scores(sum(hists.values()))
    return table


def score_key(record):
    """A record's validation score for comparisons (val_score: MaxF for a road model, mean IoU for scene parsing;
    val_max_f in records older than val_score), -inf when missing or not finite (nan never wins a max)."""
    value = record.get('val_score', record.get('val_max_f'))
    return value if value is not None and np.isfinite(value) else -np.inf


# ------------------------------------------------------------------------------------------------ many classes

def segmentation_scores(hist):
    """Scene-parsing figures of a confusion matrix [K, K] (rows: true class, columns: predicted; ignored pixels
    left out, as fast_hist leaves them), computed as the Cityscapes benchmark's scripts compute them.

    Per class: IoU = TP / (TP + FP + FN) and accuracy (recall) = TP / (TP + FN), nan for a class that neither
    occurs nor is predicted (IoU) or does not occur (accuracy). mean_iou and mean_accuracy average the classes
    that are not nan; pixel_accuracy = all correct pixels / all pixels.
    """
    hist = np.asarray(hist, np.float64)
    tp = np.diag(hist)
    truth, predicted = hist.sum(axis=1), hist.sum(axis=0)
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(truth + predicted - tp > 0, tp / (truth + predicted - tp), np.nan)
        accuracy = np.where(truth > 0, tp / truth, np.nan)
    total = hist.sum()
    return {'iou': iou.tolist(), 'accuracy': accuracy.tolist(),
            'mean_iou': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'),
            'mean_accuracy': float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float('nan'),
            'pixel_accuracy': float(tp.sum() / total) if total else float('nan')}
