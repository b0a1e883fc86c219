"""Running the models of a trained FCN-8s (conversion.py makes them): frozen graphs, exported SavedModels, TFLite
models and ONNX models (through ONNX Runtime or OpenVINO), each loaded as a predictor, and their latency.

Every model here maps a float32 batch [N, H, W, 3] of raw RGB 0-255, at the size the model was trained at, to the
road probability [N, H, W] (a road model) or the class probabilities [N, H, W, C] (a scene-parsing model, C
classes): the SavedModel's own output, one of OUTPUTS.
"""
import time
import warnings

import numpy as np
import tensorflow.compat.v1 as tf

from fcn8s.errors import UserError, require
from fcn8s.precision import cores, session_config
from fcn8s.recipes import WARMUP_RUNS

INPUT = 'image'  # tensor names of the frozen graphs: INPUT, and one of OUTPUTS (a road or a scene-parsing model)
OUTPUTS = ('road_probability', 'class_probabilities')
# ONNX Runtime's accelerated execution providers, preferred in this order where the installed onnxruntime has
# them (onnxruntime-gpu); the CPU's is always there. And the errors of a model file it cannot load.
ONNX_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
ONNX_LOAD_ERRORS = ('Fail', 'InvalidArgument', 'InvalidGraph', 'InvalidProtobuf', 'NoSuchFile')


def output_name(graph_def):
    """The output of a frozen graph: one of OUTPUTS; KeyError for a graph that has none (not of this project)."""
    names = {node.name for node in graph_def.node}
    found = [name for name in OUTPUTS if name in names]
    if not found:
        raise KeyError(f'the graph has no output named {" or ".join(OUTPUTS)}')
    return found[0]


def read_graph_def(path):
    """The GraphDef of the frozen graph (.pb) at path."""
    graph_def = tf.GraphDef()
    with open(path, 'rb') as f:
        graph_def.ParseFromString(f.read())
    return graph_def


# ------------------------------------------------------------------------------------------------ predictors
# Each predictor is a pair (predict, (H, W)): predict(float32 [N, H, W, 3]) -> the road probability ([N, H, W]) or
# the class probabilities ([N, H, W, K]); frozen graphs and TFLite models take N = 1 only, the ONNX models any N.

def _session_predictor(sess, image, road, image_shape):
    sess.graph.finalize()
    return (lambda batch: sess.run(road, {image: batch})), tuple(image_shape)


def graph_predictor(graph_def, precision=None):
    """Predictor of a frozen GraphDef (INPUT -> its output), with Grappler's auto mixed precision at load time for
    precision 'bf16' or 'fp16'."""
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
    image, road = (graph.get_tensor_by_name(name + ':0') for name in (INPUT, output_name(graph_def)))
    if precision:
        config = session_config(precision, fold_constants=False)
    else:
        # Grappler already ran offline; its full default pass over the weights, now constants, would take long
        # at the first run and change nothing. Only the device's fusions (Conv2D + bias + ReLU) remain to do.
        config = tf.ConfigProto()
        config.graph_options.rewrite_options.optimizers.append('remap')
    sess = tf.Session(graph=graph, config=config)
    return _session_predictor(sess, image, road, image.shape.as_list()[1:3])


def saved_model_predictor(saved_model_dir, image_shape, precision=None):
    """Predictor of an exported SavedModel (signature image -> its output) run at image_shape."""
    graph = tf.Graph()
    sess = tf.Session(graph=graph, config=session_config(precision, fold_constants=False))
    with graph.as_default():
        signature = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING],
                                               saved_model_dir).signature_def['serving_default']
    image = graph.get_tensor_by_name(signature.inputs['image'].name)
    (_, output), = signature.outputs.items()
    road = graph.get_tensor_by_name(output.name)
    return _session_predictor(sess, image, road, image_shape)


def tflite_interpreter(model_path):
    """tf.lite.Interpreter of the .tflite model at model_path, on every core this process may use, its tensors not
    yet allocated."""
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT (ai_edge_litert) replaces it
        warnings.simplefilter('ignore')
        return tf.lite.Interpreter(model_path=model_path, num_threads=cores())


def tflite_predictor(model_path):
    """Predictor of a .tflite model, on every core this process may use."""
    interpreter = tflite_interpreter(model_path)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def predict(batch):
        interpreter.set_tensor(source['index'], batch)
        interpreter.invoke()
        return interpreter.get_tensor(target['index'])
    return predict, tuple(int(n) for n in source['shape'][1:3])


def onnx_providers(available):
    """The execution providers to run an ONNX model with, best first, of ONNX Runtime's available ones: TensorRT,
    CUDA, then the CPU (always there, and the fallback for any op the others lack)."""
    return [name for name in ONNX_PROVIDERS if name in available] + ['CPUExecutionProvider']


def onnx_runtime_providers():
    """onnx_providers of the installed onnxruntime; UserError if it is missing."""
    return onnx_providers(require('onnxruntime', 'running an ONNX model').get_available_providers())


def onnx_session(model_path):
    """onnxruntime.InferenceSession of the ONNX model at model_path on onnx_providers, on every core this process
    may use; UserError for a file ONNX Runtime cannot load."""
    ort = require('onnxruntime', f'{model_path}: running an ONNX model')
    options = ort.SessionOptions()
    options.intra_op_num_threads = cores()
    options.log_severity_level = 3  # its warnings (e.g. nodes left on the CPU) are not the user's business
    errors = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in ONNX_LOAD_ERRORS)
    try:
        session = ort.InferenceSession(model_path, options, providers=onnx_runtime_providers())
    except errors as e:
        raise UserError(f'{model_path}: ONNX Runtime cannot load it as a model, the file may be damaged '
                        f'({str(e).splitlines()[0]})') from None
    return session


def onnx_predictor(model_path, image_shape=None):
    """Predictor of an ONNX model (INPUT [N, H, W, 3] -> one of OUTPUTS) through ONNX Runtime, at its input's
    size, or at image_shape (H, W) where that size is dynamic ((None, None) if neither says it); KeyError for a
    model whose input or output is not named as this project's."""
    session = onnx_session(model_path)
    source, target = session.get_inputs()[0], session.get_outputs()[0]
    fixed = tuple(d if isinstance(d, int) else None for d in source.shape[1:3])
    shape = _onnx_input_size(source.name, target.name, fixed, image_shape)
    return (lambda batch: session.run([target.name], {INPUT: batch})[0]), shape


def _onnx_input_size(source, target, fixed, image_shape):
    """The size (H, W) an ONNX model with input source and output target runs at: its fixed size (None where a
    dimension is dynamic), else image_shape, else (None, None); KeyError for names that are not this project's."""
    if source != INPUT or target not in OUTPUTS:
        raise KeyError(f'its input is {source} and output {target}, not {INPUT} and one of {" or ".join(OUTPUTS)}')
    return fixed if None not in fixed else tuple(image_shape) if image_shape else (None, None)


def openvino_predictor(model_path, image_shape=None):
    """Predictor of an ONNX model through OpenVINO on the CPU, at its input's size or at image_shape where that is
    dynamic (as onnx_predictor). OpenVINO compiles a model for one input shape at a time: here for batch 1 at once,
    for another batch size at its first call. fp32 stays fp32 (OpenVINO would otherwise run it in bf16 on CPUs
    with AMX or AVX512_BF16: faster, and unmeasured here); UserError for a file it cannot read, KeyError for other
    tensor names."""
    ov = require('openvino', f'{model_path}: running a model with OpenVINO')
    core = ov.Core()
    try:
        model = core.read_model(model_path)
    except RuntimeError as e:
        said = [line for line in str(e).splitlines() if line.strip() and not line.startswith('Exception from')]
        raise UserError(f'{model_path}: OpenVINO cannot read it as a model, the file may be damaged '
                        f'({said[0] if said else e})') from None
    dims = model.inputs[0].get_partial_shape()
    fixed = tuple(dims[i].get_length() if dims[i].is_static else None for i in (1, 2))
    shape = _onnx_input_size(model.inputs[0].get_any_name(), model.outputs[0].get_any_name(), fixed, image_shape)
    config = {'INFERENCE_NUM_THREADS': cores(), 'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32'}
    compiled = {}  # batch size -> the model compiled for it

    def predict(batch):
        if len(batch) not in compiled:
            model.reshape({INPUT: [len(batch), *shape, 3]})
            compiled[len(batch)] = core.compile_model(model, 'CPU', config)
        return compiled[len(batch)](batch)[0]
    if None not in shape:  # compiled now: a model OpenVINO cannot compile (a RuntimeError) fails where it is loaded
        predict(np.zeros((1, *shape, 3), np.float32))
    return predict, shape


def variant_predictor(variant, path, image_shape=None):
    """Predictor of an optimized variant's file; an ONNX model's input size is dynamic: it runs at
    image_shape."""
    if variant in ('fp32', 'bf16'):
        return graph_predictor(read_graph_def(path))  # bf16.pb is rewritten already
    if variant.startswith('openvino'):
        return openvino_predictor(path, image_shape)
    if path.endswith('.onnx'):
        return onnx_predictor(path, image_shape)
    return tflite_predictor(path)


# ------------------------------------------------------------------------------------------------ measuring

def latency(predictor, runs, warmup=WARMUP_RUNS, seed=0, batch=1):
    """Latency of a predictor on a random batch of batch images: {median_ms, p90_ms, images_per_s} of `runs` timed
    calls after `warmup` untimed ones (the milliseconds are a call's, for the whole batch)."""
    predict, image_shape = predictor
    images = np.random.RandomState(seed).uniform(0, 255, (batch, *image_shape, 3)).astype(np.float32)
    for _ in range(warmup):
        predict(images)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(images)
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {'median_ms': 1000 * median, 'p90_ms': 1000 * float(np.percentile(seconds, 90)),
            'images_per_s': batch / median, 'runs': runs}
