"""fcn8s/conversion.py: the frozen graph and the ONNX models made from a finished run's SavedModel give its
probabilities; Grappler's annotations are dropped before tf2onnx."""
import json
import os
import re

import numpy as np
import tensorflow.compat.v1 as tf

from fcn8s import conversion, files, inference, paths, variants
from tests.support import sample_batch


def test_frozen_graph_gives_the_session_probabilities(optimized_run, small_dataset):
    _, batch = sample_batch(small_dataset)
    session, _ = inference.saved_model_predictor(os.path.join(optimized_run, paths.SERVING_DIR), (64, 224))
    graph_def = inference.read_graph_def(os.path.join(optimized_run, paths.OPTIMIZED_DIR, 'fp32.pb'))
    frozen, frozen_shape = inference.graph_predictor(graph_def)
    assert frozen_shape == (64, 224)
    np.testing.assert_allclose(frozen(batch), session(batch), atol=1e-4)
    # Variables are constants, keep_prob is folded (the image is the only input) and dropout is gone.
    assert not {node.op for node in graph_def.node} & {'VariableV2', 'VarHandleOp', 'RandomUniform', 'Fill'}
    assert [node.name for node in graph_def.node if node.op.startswith('Placeholder')] == [inference.INPUT]


def test_optimize_exports_a_checked_onnx_model_of_any_batch_and_size(optimized_run, small_dataset):
    import onnx
    out = os.path.join(optimized_run, paths.OPTIMIZED_DIR)
    report = json.load(open(os.path.join(out, 'optimization.json')))
    rows = {row['variant']: row for row in report['variants']}
    assert rows['onnx-fp32']['max_abs_diff'] <= variants.ONNX_TOLERANCE
    assert rows['onnx-int8']['size_mb'] < rows['onnx-fp32']['size_mb'] / 2
    table = open(os.path.join(out, 'optimization.md')).read()
    assert re.search(r'onnx-fp32: largest \|Δ probability\| against fp32 on the validation images: \S+e-0[5-9]', table)
    onnx.checker.check_model(os.path.join(out, 'model.onnx'))
    model = onnx.load(os.path.join(out, 'model.onnx'))
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    assert [(v.name, dims(v)) for v in model.graph.input] == [('image', ['batch', 'height', 'width', 3])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [('road_probability', ['batch', 'height', 'width'])]
    quantized = onnx.load(os.path.join(out, 'model_int8.onnx'))
    assert {'QuantizeLinear', 'DequantizeLinear'} <= {node.op_type for node in quantized.graph.node}
    # Another batch and size than the run's: the SavedModel's own answer.
    _, batch = sample_batch(small_dataset, (96, 320))
    batch = np.concatenate([batch, batch[:, ::-1]])
    saved_model, _ = inference.saved_model_predictor(os.path.join(optimized_run, paths.SERVING_DIR), (96, 320))
    onnx_model, shape = inference.onnx_predictor(os.path.join(out, 'model.onnx'), (96, 320))
    reference = saved_model(batch)
    assert shape == (96, 320) and reference.shape == (2, 96, 320) and reference.std() > 0.01
    np.testing.assert_allclose(onnx_model(batch), reference, atol=1e-4)


def test_onnx_conversion_drops_grapplers_annotations(tmp_path):
    """On CPUs with AVX-512, Grappler's remapper marks convolutions with _input_shapes, which tf2onnx cannot
    convert; here the mark is set by hand so that every CPU checks it."""
    rng = np.random.RandomState(0)
    kernel, image = rng.randn(3, 3, 3, 2).astype(np.float32), rng.rand(1, 8, 12, 3).astype(np.float32)
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [None, None, None, 3], name=inference.INPUT)
        logits = tf.nn.conv2d(images - 0.5, tf.constant(kernel), 1, 'SAME')
        tf.nn.softmax(logits, name='road_probability')
        graph_def = graph.as_graph_def()
    conv = next(node for node in graph_def.node if node.op == 'Conv2D')
    conv.attr['_input_shapes'].list.shape.add().dim.add().size = -1
    with tf.Session(graph=graph) as sess:
        expected = sess.run('road_probability:0', {images: image})
    path = str(tmp_path / 'model.onnx')
    files.atomic_write(path, conversion.convert_onnx(graph_def).SerializeToString())
    session = inference.onnx_session(path)
    np.testing.assert_allclose(session.run(None, {inference.INPUT: image})[0], expected, atol=1e-6)
