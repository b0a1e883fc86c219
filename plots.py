"""PNG plots of a run, from what metrics.json holds: loss and MaxF per epoch, and the precision-recall curves
of the last validation per category."""
import matplotlib

matplotlib.use('Agg')  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

import metrics  # noqa: E402


def plot_history(history, path):
    """Training and validation loss, and validation MaxF and road IoU at 0.5, per epoch."""
    epochs = [h['epoch'] for h in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h['loss'] for h in history], 'o-', label='training')
    loss_ax.plot(epochs, [h.get('val_loss') for h in history], 's-', label='validation')
    loss_ax.set(xlabel='epoch', ylabel='cross-entropy', title='loss')
    score_ax.plot(epochs, [h.get('val_max_f') for h in history], 'o-', label='MaxF')
    score_ax.plot(epochs, [h.get('val_iou_at_0.5') for h in history], 's-', label='road IoU at 0.5')
    score_ax.set(xlabel='epoch', title='validation (KITTI, perspective view)')
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
