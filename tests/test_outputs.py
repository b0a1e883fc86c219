"""fcn8s/outputs.py: test-time flip, a prediction averaged with its mirror image's."""
import numpy as np

from fcn8s import outputs


def test_flip_mean_averages_a_prediction_with_its_mirror_images_flipped_back():
    """One 1x3 image: road probabilities [0.1, 0.5, 0.9]; of its mirror [0.3, 0.6, 0.7], which flipped back are
    [0.7, 0.6, 0.3]: the mean is [0.4, 0.55, 0.6]. Two classes per pixel flip the same way, pixel by pixel."""
    np.testing.assert_allclose(outputs.flip_mean([0.1, 0.5, 0.9], [0.3, 0.6, 0.7], (1, 1, 3)), [0.4, 0.55, 0.6])
    classes = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    mirrored = np.array([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])  # back: [0.7, 0.3], [0.5, 0.5], [0.6, 0.4]
    np.testing.assert_allclose(outputs.flip_mean(classes, mirrored, (1, 1, 3)), [[0.8, 0.2], [0.5, 0.5], [0.4, 0.6]])
    # A model that sees every column on its own (here the red channel / 255) predicts the mirror of the mirror:
    # flipping back gives its own prediction again, whatever the batch.
    batch = np.random.RandomState(0).randint(0, 256, (2, 4, 5, 3)).astype(np.float32)
    predict = lambda images: images[..., 0].ravel() / 255  # noqa: E731
    np.testing.assert_allclose(outputs.with_flip(predict)(batch), predict(batch))
