"""Fast inference for a trained FCN-8s: a frozen graph, reduced precision, TFLite INT8, one predict function.

Every model here maps a float32 batch [1, H, W, 3] of raw RGB 0-255, at the size the model was trained at, to the
road probability [1, H, W] (a road model) or the class probabilities [1, H, W, C] (a scene-parsing model, C
classes): the SavedModel's own output, OUTPUTS. Variants (files of RUN_DIR/optimized/):
- fp32: the exported model frozen (variables folded to constants, keep_prob to 1.0, dropout gone) and rewritten
  offline by Grappler (constant folding of shapes and masks); the Session applies its device's fusions
  (Conv2D + bias + ReLU) when it loads it.
- bf16: the same graph after Grappler's auto mixed precision, oneDNN bfloat16 on a CPU with AVX512_BF16 or AMX,
  float16 on a GPU.
- tflite-fp16, tflite-int8-dynamic, tflite-int8: TFLite conversions of the frozen graph; fp16 weights, int8
  weights with float activations, and full integer (weights and activations int8, calibrated on training images,
  all but the input's channel flip; the model's input and output stay float32 so that every variant is fed the
  same way).
- onnx-fp32, onnx-int8 (model.onnx, model_int8.onnx): the SavedModel frozen at a dynamic batch and size and
  converted by tf2onnx, for ONNX Runtime (TensorRT, CUDA or the CPU), TensorRT's trtexec or OpenVINO; and that
  model quantized by ONNX Runtime (QDQ: int8 weights, uint8 activations calibrated on training images). The ONNX
  models take [N, H, W, 3] of any size (H, W multiples of 32); this project runs them at the run's size.
- openvino-fp32, openvino-int8: the same two files run by OpenVINO on the CPU (faster than ONNX Runtime on some
  CPUs, slower on others: main.py optimize times both).
"""
import importlib
import logging
import os
import time
import types
import warnings

import numpy as np
import tensorflow.compat.v1 as tf
# Offline Grappler has no public entry point; TensorFlow's own converters call this one.
from tensorflow.python.grappler import tf_optimizer

from fcn8s import files
from fcn8s.errors import UserError
from fcn8s.paths import VARIANT_FILES
from fcn8s.precision import cores, session_config
from fcn8s.recipes import WARMUP_RUNS

INPUT = 'image'  # tensor names of the frozen graphs: INPUT, and one of OUTPUTS (a road or a scene-parsing model)
OUTPUTS = ('road_probability', 'class_probabilities')
# Ops left in float in the full-integer model. TFLite's int8 REVERSE_V2, the RGB -> BGR flip at the input of the
# random and ImageNet encoders, gave wrong values (RMSE of 49 quantization steps against float in TFLite's
# quantization debugger) and cost 5.9 points of MaxF; in float it costs nothing measurable in speed.
INT8_FLOAT_OPS = ['REVERSE_V2']
# ONNX: opset 17 is read by ONNX Runtime, OpenVINO and TensorRT 8.6 and later alike, and has per-channel
# QuantizeLinear (13+); the names of the dynamic dimensions of the input [N, H, W, 3] and output ([N, H, W] or
# [N, H, W, K]).
ONNX_OPSET = 17
ONNX_INPUT_DIMS = ('batch', 'height', 'width')
ONNX_OUTPUT_DIMS = ('batch', 'height', 'width', 'classes')
# Float constants of this many values or more (every kernel but conv1_1's 1728) are the weights that the ONNX
# conversion keeps out of tf2onnx (convert_onnx).
LARGE_CONSTANT = 2 ** 12
# ONNX Runtime's accelerated execution providers, preferred in this order where the installed onnxruntime has
# them (onnxruntime-gpu); the CPU's is always there. And the errors of a model file it cannot load.
ONNX_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
ONNX_LOAD_ERRORS = ('Fail', 'InvalidArgument', 'InvalidGraph', 'InvalidProtobuf', 'NoSuchFile')


def _zero_dropout_noise(graph_def):
    """Replace each RandomUniform of graph_def by a scalar zero.

    Only dropout draws random numbers in this network, and with keep_prob folded to 1.0 its mask keeps every unit.
    A uniform draw of 0 keeps every unit under both TF1's floor(keep_prob + u) and TF2's u >= rate masks; as a
    scalar it broadcasts over whatever shape the input has (a graph of dynamic size too), and makes the masks
    constant, so that constant folding removes dropout (TFLite's integer kernels have no random op).
    """
    for node in graph_def.node:
        if node.op != 'RandomUniform':
            continue
        dtype = node.attr['dtype']
        node.op = 'Const'
        node.ClearField('attr')
        node.ClearField('input')
        node.attr['dtype'].CopyFrom(dtype)
        node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(0, tf.as_dtype(dtype.type)))
    return graph_def


def freeze(saved_model_dir, image_shape, batch=1):
    """GraphDef of the exported SavedModel (run_folder.export_serving_model) at batch and image_shape (H, W), any
    of them None for a dynamic size: INPUT [N, H, W, 3] -> road_probability [N, H, W] (or class_probabilities
    [N, H, W, K], as the SavedModel's signature has), variables folded to constants, keep_prob to 1.0, no dropout
    noise."""
    with tf.Graph().as_default() as graph, tf.Session() as sess:
        image = tf.placeholder(tf.float32, [batch, *image_shape, 3], name=INPUT)
        meta = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING], saved_model_dir,
                                          import_scope='fcn', input_map={'keep_prob:0': tf.constant(1.0),
                                                                         'image_input:0': image})
        (output, tensor), = meta.signature_def['serving_default'].outputs.items()
        tf.identity(graph.get_tensor_by_name('fcn/' + tensor.name), name=output)
        frozen = tf.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [output])
    return _zero_dropout_noise(frozen)


def grappler(graph_def, precision=None):
    """graph_def rewritten offline by Grappler (session_config(precision)), keeping its output."""
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
        meta = tf.train.export_meta_graph(graph_def=graph.as_graph_def(add_shapes=True))
    meta.collection_def['train_op'].node_list.value.append(output_name(graph_def))  # what Grappler must keep
    return tf_optimizer.OptimizeGraph(session_config(precision), meta)


def convert_tflite(graph_def, variant, calibration=()):
    """The TFLite flatbuffer (bytes) of a frozen graph for variant 'tflite-fp16', 'tflite-int8-dynamic' or
    'tflite-int8'; full integer quantization takes its activation ranges from calibration (uint8 [H, W, 3] images
    at the model's input size)."""
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
        with tf.Session() as sess:
            converter = tf.lite.TFLiteConverter.from_session(
                sess, [graph.get_tensor_by_name(INPUT + ':0')],
                [graph.get_tensor_by_name(output_name(graph_def) + ':0')])
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if variant == 'tflite-fp16':
                converter.target_spec.supported_types = [tf.float16]
            elif variant == 'tflite-int8':
                dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
                converter.representative_dataset = dataset
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                # The quantization debugger calibrates once and quantizes all but INT8_FLOAT_OPS.
                with warnings.catch_warnings():  # its interpreters' notice that LiteRT replaces tf.lite
                    warnings.simplefilter('ignore')
                    debugger = tf.lite.experimental.QuantizationDebugger(
                        converter=converter, debug_dataset=dataset,
                        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=INT8_FLOAT_OPS))
                    return debugger.get_nondebug_quantized_model()
            return converter.convert()


def _require(module, purpose):
    """Import module (a package of requirements.txt) for purpose; a UserError that says how to install it if it
    is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f'{purpose} needs the Python package {module.split(".")[0]}, which cannot be imported '
                        f'({e}): pip install -r requirements.txt') from None


def _weights_as_inputs(graph_def):
    """(a copy of graph_def whose float constants of LARGE_CONSTANT values or more are Placeholders of their shape,
    {their names: their values as float32 arrays}), the weights taken out of a frozen graph."""
    light, weights = tf.GraphDef(), {}
    for node in graph_def.node:
        tensor = node.attr['value'].tensor if node.op == 'Const' else None  # (reading attr['value'] adds it)
        if tensor is not None and tensor.dtype == tf.float32.as_datatype_enum and \
                np.prod([d.size for d in tensor.tensor_shape.dim]) >= LARGE_CONSTANT:
            weights[node.name] = tf.make_ndarray(tensor)
            placeholder = light.node.add(name=node.name, op='Placeholder')
            placeholder.attr['dtype'].type = tensor.dtype
            placeholder.attr['shape'].shape.CopyFrom(tensor.tensor_shape)
        else:
            light.node.add().CopyFrom(node)
    light.versions.CopyFrom(graph_def.versions)
    return light, weights


def _weights_as_initializers(model, weights):
    """model (onnx.ModelProto) with the graph inputs named in weights {name: array} made initializers of those
    values, and each Transpose or Identity of an initializer alone folded into it (tf2onnx transposes TensorFlow's
    HWIO kernels to ONNX's OIHW)."""
    from onnx import numpy_helper
    graph = model.graph
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = set()  # the outputs of the nodes folded into initializers
    for name, value in weights.items():
        while len(consumers.get(name, ())) == 1 and consumers[name][0].op_type in ('Transpose', 'Identity'):
            node = consumers[name][0]
            perm = next((list(a.ints) for a in node.attribute if a.name == 'perm'), None)
            value = np.transpose(value, perm) if node.op_type == 'Transpose' else value
            name = node.output[0]
            folded.add(name)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    kept = [node for node in graph.node if node.output[0] not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def convert_onnx(graph_def):
    """The ONNX model (onnx.ModelProto, opset ONNX_OPSET) of a frozen graph, with its input INPUT and output (one
    of OUTPUTS) named as in the graph and the SavedModel; dimensions the graph leaves open (batch, height, width)
    stay dynamic and are named.

    tf2onnx converts the graph without its weights, which are graph inputs meanwhile and become initializers at the
    end: with the 537 MB of weights in it, tf2onnx.convert.from_graph_def grew past 22 GB. Each of its ONNX
    optimizers ends by rewriting every node's protobuf, which copies each constant into the node's protobuf arena
    without freeing the previous copy (upb frees an arena only with its message): 0.5 GB more per optimizer and
    pass. It also deep-copies the graph before each optimizer, and re-freezes and re-runs Grappler on a graph that
    is frozen already."""
    tf2onnx = _require('tf2onnx', 'the ONNX export')
    output = output_name(graph_def)
    light, weights = _weights_as_inputs(graph_def)
    light = grappler(light)  # folds dropout away, as in fp32.pb; the weights-less graph takes it in a second
    for node in light.node:  # Grappler's own annotations, which tf2onnx cannot convert: on CPUs with AVX-512 its
        for key in [key for key in node.attr if key.startswith('_')]:  # remapper adds _input_shapes
            del node.attr[key]
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(light, name='')
    tensors = [INPUT, output, *weights]
    onnx_graph = tf2onnx.tfonnx.process_tf_graph(
        graph, opset=ONNX_OPSET, input_names=[INPUT + ':0', *(name + ':0' for name in weights)],
        output_names=[output + ':0'], tensors_to_rename={name + ':0': name for name in tensors})
    onnx_graph = tf2onnx.optimizer.optimize_graph(onnx_graph)
    model = onnx_graph.make_model(f'FCN-8s {output}, converted from a frozen TensorFlow graph')
    for value, names in ((model.graph.input[0], ONNX_INPUT_DIMS), (model.graph.output[0], ONNX_OUTPUT_DIMS)):
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            if not dim.HasField('dim_value'):
                dim.dim_param = name
    return _weights_as_initializers(model, weights)


def quantize_onnx(model_path, calibration, output_path):
    """Write to output_path the int8 model of the ONNX model at model_path (ONNX Runtime's static quantization,
    QDQ format: int8 weights per output channel, uint8 activations whose ranges come from calibration, uint8
    images [H, W, 3] at the model's input size). Weights use 7 bits (reduce_range): x86 CPUs without VNNI
    (AVX2 only, as the AMD Zen 3 here) multiply uint8 by int8 in pairs summed into int16, which saturates on full
    8-bit weights; ONNX Runtime's documentation recommends it there, and it costs little elsewhere."""
    quantization = _require('onnxruntime.quantization', 'the int8 ONNX model')
    images = iter(calibration)
    reader = types.SimpleNamespace(  # what quantize_static reads: get_next() -> a feed, None at the end
        get_next=lambda: next(({INPUT: image[None].astype(np.float32)} for image in images), None))
    # (Not CalibMaxIntermediateOutputs: in ONNX Runtime 1.31 it drops the ranges of every full chunk of images,
    # microsoft/onnxruntime#18893; MinMax calibration keeps only each image's minima and maxima anyway.)
    # Its warning that the model was not pre-processed (quant_pre_process) is kept off the terminal: that
    # pre-processing's symbolic shape inference fails on this model's dynamic sizes.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantization.quantize_static(
            model_path, output_path, reader, quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8)
    finally:
        root.setLevel(level)


def write_onnx_variants(saved_model_dir, calibration, folder):
    """Write the ONNX variants into folder: model.onnx, the SavedModel frozen at a dynamic batch and size and
    converted (convert_onnx), checked by onnx.checker, and model_int8.onnx, it quantized on calibration (uint8
    images [H, W, 3] at the run's input size). Returns {variant: seconds it took to build}."""
    onnx = _require('onnx', 'the ONNX export')
    start = time.time()
    path = os.path.join(folder, VARIANT_FILES['onnx-fp32'])
    model = convert_onnx(freeze(saved_model_dir, (None, None), batch=None))
    files.atomic_write(path, model.SerializeToString())
    del model  # 0.5 GB for the full-size model
    onnx.checker.check_model(path)  # from the file: the C++ checker, no copy of the model in Python
    seconds = {'onnx-fp32': time.time() - start}
    start = time.time()
    quantize_onnx(path, calibration, os.path.join(folder, VARIANT_FILES['onnx-int8']))
    seconds['onnx-int8'] = time.time() - start
    return seconds


def make_variant(frozen, variant, precision=None, calibration=()):
    """The serialized model of variant (a key of FILES) from the frozen GraphDef: Grappler's for fp32 and bf16
    (precision: precision.mixed_precision()'s 'bf16' or 'fp16'), the TFLite converter's for the others."""
    if variant in ('fp32', 'bf16'):
        return grappler(frozen, None if variant == 'fp32' else precision).SerializeToString()
    return convert_tflite(frozen, variant, calibration)


def output_name(graph_def):
    """The output of a frozen graph: one of OUTPUTS; KeyError for a graph that has none (not of this project)."""
    names = {node.name for node in graph_def.node}
    found = [name for name in OUTPUTS if name in names]
    if not found:
        raise KeyError(f'the graph has no output named {" or ".join(OUTPUTS)}')
    return found[0]


def read_graph_def(path):
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
        # Grappler already ran offline; its full default pass over ~500 MB of constants would take half a minute
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


def tflite_predictor(model_path):
    """Predictor of a .tflite model, on every core this process may use."""
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT (ai_edge_litert) replaces it
        warnings.simplefilter('ignore')
        interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=cores())
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
    return onnx_providers(_require('onnxruntime', 'running an ONNX model').get_available_providers())


def onnx_session(model_path):
    """onnxruntime.InferenceSession of the ONNX model at model_path on onnx_providers, on every core this process
    may use; UserError for a file ONNX Runtime cannot load."""
    ort = _require('onnxruntime', f'{model_path}: running an ONNX model')
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
    ov = _require('openvino', f'{model_path}: running a model with OpenVINO')
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
