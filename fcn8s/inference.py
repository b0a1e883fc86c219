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
"""
import time
import warnings

import numpy as np
import tensorflow.compat.v1 as tf
# Offline Grappler has no public entry point; TensorFlow's own converters call this one.
from tensorflow.python.grappler import tf_optimizer

from fcn8s.precision import cores, session_config
from fcn8s.recipes import WARMUP_RUNS

INPUT = 'image'  # tensor names of the frozen graphs: INPUT, and one of OUTPUTS (a road or a scene-parsing model)
OUTPUTS = ('road_probability', 'class_probabilities')
# Ops left in float in the full-integer model. TFLite's int8 REVERSE_V2, the RGB -> BGR flip at the input of the
# random and ImageNet encoders, gave wrong values (RMSE of 49 quantization steps against float in TFLite's
# quantization debugger) and cost 5.9 points of MaxF; in float it costs nothing measurable in speed.
INT8_FLOAT_OPS = ['REVERSE_V2']


def _zero_dropout_noise(graph_def):
    """Replace each RandomUniform of graph_def by zeros of the same shape.

    Only dropout draws random numbers in this network, and with keep_prob folded to 1.0 its mask keeps every unit.
    A uniform draw of 0 keeps every unit under both TF1's floor(keep_prob + u) and TF2's u >= rate masks, and
    makes the masks constant, so that constant folding removes dropout (TFLite's integer kernels have no random op).
    """
    zeros = []
    for node in graph_def.node:
        if node.op != 'RandomUniform':
            continue
        dtype, shape_type, shape = node.attr['dtype'], node.attr['T'], node.input[0]
        zero = tf.NodeDef(name=node.name + '/zero', op='Const')
        zero.attr['dtype'].CopyFrom(dtype)
        zero.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(0, tf.as_dtype(dtype.type)))
        zeros.append(zero)
        node.op = 'Fill'
        node.ClearField('attr')
        node.attr['T'].CopyFrom(dtype)
        node.attr['index_type'].CopyFrom(shape_type)
        node.ClearField('input')
        node.input.extend([shape, zero.name])
    graph_def.node.extend(zeros)
    return graph_def


def freeze(saved_model_dir, image_shape):
    """GraphDef of the exported SavedModel (run_folder.export_serving_model) at batch 1 and image_shape (H, W):
    INPUT [1, H, W, 3] -> road_probability [1, H, W] (or class_probabilities [1, H, W, K], as the SavedModel's
    signature has), variables folded to constants, keep_prob to 1.0, no dropout noise."""
    with tf.Graph().as_default() as graph, tf.Session() as sess:
        image = tf.placeholder(tf.float32, [1, *image_shape, 3], name=INPUT)
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
# Each predictor is a pair (predict, (H, W)): predict(float32 [1, H, W, 3]) -> road probability, H*W values.

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


def variant_predictor(variant, path):
    """Predictor of an optimized variant's file."""
    if variant in ('fp32', 'bf16'):
        return graph_predictor(read_graph_def(path))  # bf16.pb is rewritten already
    return tflite_predictor(path)


# ------------------------------------------------------------------------------------------------ measuring

def latency(predictor, runs, warmup=WARMUP_RUNS, seed=0):
    """Latency of a predictor at batch 1 on a random image: {median_ms, p90_ms, images_per_s} of `runs` timed
    calls after `warmup` untimed ones."""
    predict, image_shape = predictor
    batch = np.random.RandomState(seed).uniform(0, 255, (1, *image_shape, 3)).astype(np.float32)
    for _ in range(warmup):
        predict(batch)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(batch)
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {'median_ms': 1000 * median, 'p90_ms': 1000 * float(np.percentile(seconds, 90)),
            'images_per_s': 1 / median, 'runs': runs}
