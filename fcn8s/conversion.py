"""The inference variants of a trained FCN-8s, made from its exported SavedModel: frozen, Grappler-optimized,
bf16, TFLite and ONNX (fp32 and int8). Each maps what inference.py's predictors feed it, float32 [N, H, W, 3] raw
RGB 0-255, to the SavedModel's own output (inference.OUTPUTS). Variants (files of RUN_DIR/optimized/,
paths.VARIANT_FILES):
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
import logging
import os
import time
import types
import warnings

import numpy as np
import tensorflow.compat.v1 as tf
# Offline Grappler has no public entry point; TensorFlow's own converters call this one.
from tensorflow.python.grappler import tf_optimizer

from fcn8s import files, vgg
from fcn8s.errors import require
from fcn8s.inference import INPUT, output_name
from fcn8s.paths import VARIANT_FILES
from fcn8s.precision import session_config

# Ops left in float in the full-integer model. TFLite's int8 REVERSE_V2, the RGB -> BGR flip at the input of the
# random and ImageNet encoders, gave wrong values (TFLite's quantization debugger showed a large error against
# float) and cost the int8 model much of its MaxF; in float it costs nothing measurable in speed.
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
                                          import_scope='fcn', input_map={vgg.KEEP_PROB: tf.constant(1.0),
                                                                         vgg.IMAGE_INPUT: image})
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
    end: with the weights in it, tf2onnx.convert.from_graph_def grew to many times the model's size. Each of its
    ONNX optimizers ends by rewriting every node's protobuf, which copies each constant into the node's protobuf
    arena without freeing the previous copy (upb frees an arena only with its message): another copy of the
    weights per optimizer and pass. It also deep-copies the graph before each optimizer, and re-freezes and re-runs
    Grappler on a graph that is frozen already."""
    tf2onnx = require('tf2onnx', 'the ONNX export')
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
    (AVX2 only) multiply uint8 by int8 in pairs summed into int16, which saturates on full 8-bit weights; ONNX
    Runtime's documentation recommends it there, and it costs little elsewhere."""
    quantization = require('onnxruntime.quantization', 'the int8 ONNX model')
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
    onnx = require('onnx', 'the ONNX export')
    start = time.time()
    path = os.path.join(folder, VARIANT_FILES['onnx-fp32'])
    model = convert_onnx(freeze(saved_model_dir, (None, None), batch=None))
    files.atomic_write(path, model.SerializeToString())
    del model  # as large as the weights: not kept while the checker and the quantization run
    onnx.checker.check_model(path)  # from the file: the C++ checker, no copy of the model in Python
    seconds = {'onnx-fp32': time.time() - start}
    start = time.time()
    quantize_onnx(path, calibration, os.path.join(folder, VARIANT_FILES['onnx-int8']))
    seconds['onnx-int8'] = time.time() - start
    return seconds


def make_variant(frozen, variant, precision=None, calibration=()):
    """The serialized model of variant (a key of VARIANT_FILES) from the frozen GraphDef: Grappler's for fp32 and
    bf16 (precision: precision.mixed_precision()'s 'bf16' or 'fp16'), the TFLite converter's for the others."""
    if variant in ('fp32', 'bf16'):
        return grappler(frozen, None if variant == 'fp32' else precision).SerializeToString()
    return convert_tflite(frozen, variant, calibration)
