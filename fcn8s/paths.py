"""The names of what the project reads and writes, and where it downloads from: folders inside a run folder and
the data folder, the files of the optimized models, and the weights' addresses. Names only (no TensorFlow), so
that any module, and the command line's help, can use them without importing the code that writes them."""

# Inside a run folder: checkpoints (last: everything to resume; best: the model), the exported SavedModel, and
# main.py optimize's models with their table.
LAST_CHECKPOINT, BEST_CHECKPOINT = 'checkpoints/last', 'checkpoints/best'
SERVING_DIR = 'saved_model'
OPTIMIZED_DIR = 'optimized'
# The optimized variants' files in OPTIMIZED_DIR: TensorFlow's (frozen graphs and TFLite), then the ONNX models,
# each run by ONNX Runtime and by OpenVINO.
VARIANT_FILES = {'fp32': 'fp32.pb', 'bf16': 'bf16.pb', 'tflite-fp16': 'fp16.tflite',
                 'tflite-int8-dynamic': 'int8_dynamic.tflite', 'tflite-int8': 'int8.tflite',
                 'onnx-fp32': 'model.onnx', 'onnx-int8': 'model_int8.onnx',
                 'openvino-fp32': 'model.onnx', 'openvino-int8': 'model_int8.onnx'}
ONNX_VARIANTS = ('onnx-fp32', 'onnx-int8', 'openvino-fp32', 'openvino-int8')  # those whose file is ONNX
# Which variant `infer --precision P --runtime R` runs: TensorFlow's (its default), ONNX Runtime's or OpenVINO's.
RUNTIME_VARIANTS = {'tensorflow': {'fp32': 'fp32', 'bf16': 'bf16', 'int8': 'tflite-int8'},
                    'onnxruntime': {'fp32': 'onnx-fp32', 'int8': 'onnx-int8'},
                    'openvino': {'fp32': 'openvino-fp32', 'int8': 'openvino-int8'}}
PRECISION_VARIANT = RUNTIME_VARIANTS['tensorflow']


# Inside the data folder: the generated road scenes (made when KITTI is missing).
SYNTHETIC_DIR = 'synthetic_road'

# KITTI Road's base kit as the KITTI team serves it (the official page needs a registration).
KITTI_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip'
# Udacity's pretrained VGG16 (a zip with a vgg/ SavedModel folder), and Keras' ImageNet VGG16 weights: the legacy
# HDF5 file with the fully connected layers.
VGG_URL = 'https://s3-us-west-1.amazonaws.com/udacity-selfdrivingcar/vgg.zip'
KERAS_H5 = 'vgg16_weights_tf_dim_ordering_tf_kernels.h5'
IMAGENET_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/' + KERAS_H5


def variant_runtime(variant):
    """The runtime that runs an optimized variant: 'onnxruntime', 'openvino' or 'tensorflow' (TFLite too)."""
    return {'onnx': 'onnxruntime', 'openvino': 'openvino'}.get(variant.split('-')[0], 'tensorflow')
