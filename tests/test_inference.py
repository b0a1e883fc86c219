"""fcn8s/inference.py: each reduced-precision variant of a finished run loads as a predictor and gives the fp32
model's probabilities."""
import os

import numpy as np
import pytest

from fcn8s import inference, outputs, paths, precision
from tests.support import sample_batch


# Full int8 quantizes the activations too: on the thin 2-epoch model, whose probabilities span a narrow range, its
# correlation with fp32 has been 0.985 to 0.99+ depending on the initial weights.
@pytest.mark.parametrize('variant, tolerance, correlation', [('bf16', 0.01, 0.99), ('tflite-fp16', 1e-3, 0.99),
                                                             ('tflite-int8-dynamic', 0.01, 0.99),
                                                             ('tflite-int8', 0.02, 0.98), ('onnx-fp32', 1e-4, 0.9999),
                                                             ('onnx-int8', 0.03, 0.98), ('openvino-fp32', 1e-4, 0.9999),
                                                             ('openvino-int8', 0.03, 0.98)])
def test_each_reduced_precision_variant_loads_and_gives_probabilities(optimized_run, small_dataset, variant,
                                                                      tolerance, correlation):
    path = os.path.join(optimized_run, paths.OPTIMIZED_DIR, paths.VARIANT_FILES[variant])
    if not os.path.exists(path):
        pytest.skip(precision.mixed_precision()[1])
    image, batch = sample_batch(small_dataset)
    predict, image_shape = inference.variant_predictor(variant, path, (64, 224))  # ONNX's size is dynamic
    fp32, _ = inference.variant_predictor('fp32', os.path.join(optimized_run, paths.OPTIMIZED_DIR, 'fp32.pb'))
    prob, reference = predict(batch), fp32(batch)
    assert image_shape == (64, 224) and prob.shape == (1, 64, 224) and prob.dtype == np.float32
    assert reference.std() > 0.01  # the thin model's probabilities vary: agreeing with them means something
    assert np.corrcoef(prob.ravel(), reference.ravel())[0, 1] > correlation
    assert np.abs(prob - reference).max() < tolerance
    full = outputs.predict_probability(predict, image, image_shape)
    assert full.shape == image.shape[:2] and 0 <= full.min() and full.max() <= 1
