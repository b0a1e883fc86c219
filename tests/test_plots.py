"""fcn8s/plots.py: the confusion matrix normalised by rows, on a hand-made histogram, and its picture."""
import imageio.v3 as iio
import numpy as np

from fcn8s import plots


def test_row_fractions_of_a_hand_made_confusion_matrix():
    """Rows are the truth: of class 0's 4 pixels 3 are predicted 0 and 1 predicted 1 (3/4, 1/4, 0); of class 1's 8
    pixels, 2, 2 and 4 (1/4, 1/4, 1/2); class 2 has no pixels: no share (nan)."""
    fractions = plots.row_fractions([[3, 1, 0], [2, 2, 4], [0, 0, 0]])
    np.testing.assert_allclose(fractions[:2], [[0.75, 0.25, 0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(fractions[:2].sum(axis=1), 1)
    assert np.isnan(fractions[2]).all()


def test_plot_confusion_draws_few_and_many_classes(tmp_path):
    """With its values in the cells (3 classes, one without pixels) and without (25 classes): a picture that grows
    with the classes."""
    small, large = str(tmp_path / 'small.png'), str(tmp_path / 'large.png')
    plots.plot_confusion([[3, 1, 0], [2, 2, 4], [0, 0, 0]], ['road', 'car', 'sky'], small, 'hand-made')
    rng = np.random.default_rng(0)
    plots.plot_confusion(rng.integers(0, 100, (25, 25)), [f'class {i}' for i in range(25)], large, 'many')
    small_shape, large_shape = iio.imread(small).shape, iio.imread(large).shape
    assert small_shape[0] >= 300 and small_shape[2] in (3, 4)
    assert large_shape[0] > 2 * small_shape[0] and large_shape[1] > 2 * small_shape[1]
