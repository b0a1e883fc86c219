"""PNG plots of a run, from what metrics.json holds: loss and the validation score per epoch, and of the last
validation the precision-recall curves per category (road models) or the IoU of every class (scene parsing); and
evaluate's confusion matrix, each row normalised."""
import os

import matplotlib

matplotlib.use('Agg')  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from fcn8s import metrics  # noqa: E402

# The validation figures drawn per epoch, where the records have them: (key, legend).
HISTORY_SCORES = (('val_max_f', 'MaxF'), ('val_iou_at_0.5', 'road IoU at 0.5'), ('val_mean_iou', 'mean IoU'),
                  ('val_pixel_accuracy', 'pixel accuracy'))
CELL_VALUES_UP_TO = 20  # classes: beyond, a confusion matrix's cells are too small for their values to be read


def plot_history(history, path):
    """Training and validation loss, and the validation scores (MaxF and road IoU at 0.5, or mean IoU and pixel
    accuracy), per epoch."""
    epochs = [h['epoch'] for h in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h['loss'] for h in history], 'o-', label='training')
    loss_ax.plot(epochs, [h.get('val_loss') for h in history], 's-', label='validation')
    loss_ax.set(xlabel='epoch', ylabel='cross-entropy', title='loss')
    for key, label in HISTORY_SCORES:
        if any(key in h for h in history):
            score_ax.plot(epochs, [h.get(key) for h in history], 'o-', label=label)
    score_ax.set(xlabel='epoch', title='validation')
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scores(record, road, folder, prefix, title):
    """The figure of a validation record into folder: a road model's precision-recall curves
    (PREFIXprecision_recall.png), or scene parsing's per-class IoU (PREFIXclass_iou.png). Returns its path."""
    if road:
        path = os.path.join(folder, prefix + 'precision_recall.png')
        plot_precision_recall(record['val_counts'], path, title)
    else:
        path = os.path.join(folder, prefix + 'class_iou.png')
        plot_class_iou(record['val_classes'], path, title)
    return path


def plot_precision_recall(counts, path, title='validation'):
    """Precision-recall curves from {category: [2, LEVELS] counts}, each with its MaxF point marked."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for category, hist in counts.items():
        precision, recall = metrics.precision_recall(np.asarray(hist))
        scores = metrics.kitti_road_scores(np.asarray(hist))
        line, = ax.plot(recall, precision, label=f'{category}: MaxF {100 * scores["max_f"]:.2f}')
        ax.plot(scores['recall'], scores['precision'], 'o', color=line.get_color())
    ax.set(xlabel='recall', ylabel='precision', xlim=(0, 1.01), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_class_iou(classes, path, title='validation'):
    """A bar per class of its IoU, from {class name: {'iou': ...}} (nan: the class neither occurs nor is predicted)."""
    names = list(classes)
    ious = [classes[name]['iou'] if classes[name]['iou'] is not None else np.nan for name in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 1), 4))
    ax.bar(range(len(names)), np.nan_to_num(ious), color='tab:blue')
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha='right')
    ax.set(ylabel='IoU', ylim=(0, 1), title=f'{title}: mean IoU {100 * np.nanmean(ious):.1f} %')
    ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def row_fractions(confusion):
    """float [K, K]: each row of a confusion matrix [K, K] (rows: truth) divided by its sum, the share of a true
    class's pixels predicted as each class; a row of a class without pixels is nan (no share to give)."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(totals > 0, confusion / totals, np.nan)


def plot_confusion(confusion, names, path, title):
    """A confusion matrix [K, K] (rows: truth, columns: prediction, K = len(names)) as row_fractions, the class
    names on both axes, each cell's percentage written in it for up to CELL_VALUES_UP_TO classes, the rows of
    classes without pixels grey."""
    fractions, count = row_fractions(confusion), len(names)
    side = max(4.0, 0.45 * count + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    shown = ax.imshow(np.ma.masked_invalid(fractions), cmap=plt.get_cmap('Blues').with_extremes(bad='0.85'), vmin=0,
                      vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ax.set_xticks(range(count))
    ax.set_xticklabels(names, rotation=60, ha='right')
    ax.set_yticks(range(count))
    ax.set_yticklabels(names)
    ax.set(xlabel='prediction', ylabel='truth', title=title)
    if count <= CELL_VALUES_UP_TO:
        for (row, column), value in np.ndenumerate(fractions):
            if np.isfinite(value):
                ax.text(column, row, f'{100 * value:.1f}', ha='center', va='center', fontsize=9 if count <= 10 else 7,
                        color='white' if value > 0.5 else 'black')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
