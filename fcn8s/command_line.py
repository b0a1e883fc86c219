"""The command line of main.py: every command's flags with their help and checks, and a terminal kept for the
project's own lines. Nothing here imports TensorFlow, so that `--help` and a mistyped flag answer at once, before
the library (and TensorFlow, which takes seconds to load) is imported."""
import argparse
import contextlib
import logging
import os
import sys

from fcn8s.paths import KERAS_H5, KITTI_URL, PRECISION_VARIANT, VGG_URL
from fcn8s.recipes import (CALIBRATION_IMAGES, INITS, LATENCY_RUNS, RANDOM_ENCODER_LEARNING_RATE, RECIPES,
                           STEP_TIMEOUT_S, WARMUP_RUNS, WARMUP_STEPS)

# --tta: test-time augmentation, none or the mean with the mirror image's prediction.
TTA_CHOICES = ('none', 'flip')
# infer --runtime: what runs an optimized model (auto: tensorflow, unless --precision auto measured otherwise).
RUNTIMES = ('auto', 'tensorflow', 'onnxruntime', 'openvino')
# --classes: every class of a Cityscapes, CamVid or VOC-style dataset, or road against the rest.
CLASS_CHOICES = ('all', 'road')
# --background: a VOC-style export's background class, a class or "not labelled".
BACKGROUND_CHOICES = ('class', 'ignore')
# Flags about how a run runs, not what it trains: a resumed run takes them anew (a switch turned on stays on).
OPERATIONAL = ('worker_timeout', 'keep_last_checkpoint', 'no_download')


def train_parser():
    """The flags of `python main.py` (training)."""
    parser = argparse.ArgumentParser(
        description='Train FCN-8s (VGG16) road segmentation on KITTI Road and write road overlays of the test '
                    'images. Offline, without KITTI or the VGG16 weights, it trains on generated road scenes '
                    'with a randomly initialised VGG16 instead (and says so). Every run writes a new folder '
                    'RUNS_DIR/<YYYYmmdd-HHMMSS>/ with the overlays, KITTI confidence maps, checkpoints, '
                    'config.json and metrics.json. Other commands, each with --help: `python main.py evaluate` '
                    'scores a trained run, `python main.py optimize` makes fast inference models of it, '
                    '`python main.py infer` segments images or a video, `python main.py synthetic DIR` writes the '
                    'generated scenes with their classes in CamVid\'s layout.')
    k, s = RECIPES['kitti'], RECIPES['synthetic']
    parser.add_argument('--data-dir', default='data',
                        help='holds vgg/ (pretrained VGG16) and data_road/ (KITTI Road) [default: data]')
    parser.add_argument('--dataset', help='a dataset folder in KITTI Road\'s, Cityscapes\' or CamVid\'s layout, or '
                                          'your own labelled images as CVAT or labelme2voc export them (Pascal VOC '
                                          'style: docs/your-own-data.md) [default: DATA_DIR/data_road]')
    parser.add_argument('--vgg-dir', help='folder of the VGG16 SavedModel: Udacity\'s, or the one converted '
                                          'from ImageNet weights [default: DATA_DIR/vgg]')
    parser.add_argument('--vgg-init', choices=INITS, default='auto',
                        help='encoder weights: "udacity" = Udacity\'s SavedModel in VGG_DIR (vgg.zip downloaded '
                             'if missing); "imagenet" = Keras\' ImageNet VGG16 weights converted into VGG_DIR; '
                             '"random" = He initialisation (no pretraining: much weaker); "auto" = whatever '
                             'VGG_DIR holds, else udacity, then imagenet, then random, saying which [default: auto]')
    parser.add_argument('--imagenet-weights', metavar='PATH',
                        help=f'Keras\' {KERAS_H5} (with the fully connected layers) for --vgg-init imagenet; '
                             'implies it under auto [default: DATA_DIR, Keras\' cache ~/.keras/models, download]')
    parser.add_argument('--vgg-url', default=VGG_URL,
                        help='where to download Udacity\'s vgg.zip from [default: %(default)s]')
    parser.add_argument('--kitti-url', default=KITTI_URL,
                        help='where to download KITTI Road\'s data_road.zip from [default: %(default)s]')
    parser.add_argument('--runs-dir', default='runs',
                        help='each run writes a new RUNS_DIR/<timestamp>/ folder [default: runs]')
    parser.add_argument('--epochs', type=int,
                        help=f'passes over the training split [default: {k["epochs"]}; {s["epochs"]} synthetic]')
    parser.add_argument('--batch-size', type=int,
                        help=f'images per step [default: {k["batch_size"]}; {s["batch_size"]} synthetic]')
    parser.add_argument('--learning-rate', type=float,
                        help=f'peak Adam learning rate: a {WARMUP_STEPS}-step linear warm-up, then poly decay '
                             f'[default: {k["learning_rate"]:g} for pretrained weights, '
                             f'{RANDOM_ENCODER_LEARNING_RATE:g} for a random encoder learning all classes; '
                             f'{s["learning_rate"]:g} synthetic]')
    parser.add_argument('--accumulate-steps', type=int, default=1, metavar='N',
                        help='add the gradients of N batches up and update the weights once, as one batch N times '
                             'larger would (at the learning rate of the Nth step): a larger batch where memory '
                             'holds only a small one; one device only [default: %(default)s]')
    parser.add_argument('--keep-prob', type=float,
                        help=f'dropout keep probability of fc6/fc7 during training [default: {k["keep_prob"]}; '
                             f'{s["keep_prob"]} synthetic]')
    parser.add_argument('--image-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='network input size, multiples of 32; images are resized to it and predictions '
                             'back to each image\'s own size [default: 160 576 KITTI; 256 512 Cityscapes; 352 480 '
                             'CamVid; 96 320 synthetic]')
    parser.add_argument('--classes', choices=CLASS_CHOICES, default='all',
                        help='what to segment in a Cityscapes, CamVid or VOC-style --dataset: "all" its classes '
                             '(19 for Cityscapes, 11 for CamVid, an export\'s own), or "road" against everything '
                             'labelled, scored as KITTI scores road; KITTI Road is always road [default: all]')
    parser.add_argument('--background', choices=BACKGROUND_CHOICES, default='class',
                        help='what the background class of a VOC-style export (CVAT\'s "background", labelme\'s '
                             '"_background_") is: "class", learned and scored like the others (right when only the '
                             'things of interest were drawn, e.g. road on everything else); "ignore", pixels nobody '
                             'labelled, left out of the loss and the scores (right when every pixel that matters '
                             'was drawn) [default: class]')
    parser.add_argument('--val-fraction', type=float, default=0.1,
                        help='fraction of each category (KITTI: um/umm/uu) held out for validation in stretches '
                             'of consecutive frames, never trained on; a dataset with a validation split of its own '
                             'uses that instead [default: 0.1]')
    parser.add_argument('--val-sequence', metavar='NAME',
                        help='validate on every image of one sequence (a drive or a city: the image names\' '
                             'prefix, e.g. CamVid\'s 0001TP, KITTI\'s um) and train on all the others, the '
                             'dataset\'s own validation images included: how well the model does on a street it '
                             'never saw (docs/datasets.md) [default: off]')
    parser.add_argument('--seed', type=int, default=0,
                        help='seeds the split, shuffling and initialisation [default: 0]')
    parser.add_argument('--patience', type=int, help='stop early when the validation score (MaxF; mean IoU for '
                        'scene parsing) has not improved for this many epochs [default: off, train all epochs]')
    parser.add_argument('--balance-classes', action=argparse.BooleanOptionalAction,
                        help='weight each class in the training loss by SegNet\'s median-frequency balancing, '
                             'from the training labels (docs/datasets.md says what it did); --no-balance-classes: '
                             'every labelled pixel counts the same [default: on for Cityscapes\' and CamVid\'s '
                             'classes, off for road: KITTI, or --classes road]')
    parser.add_argument('--no-augment', action='store_true',
                        help='train on the images as they are: no random flip, zoom, brightness, contrast or '
                             'gamma (validation is never augmented)')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'), default='auto',
                        help='training and validation arithmetic: bf16 = oneDNN bfloat16 auto mixed precision '
                             '(weights, Adam\'s state and the loss stay fp32), on CPUs with AVX512_BF16 or AMX only; '
                             'auto = bf16 where the CPU has it, else fp32 (GPUs too); the choice and its reason go '
                             'into config.json [default: auto]')
    parser.add_argument('--no-download', action='store_true',
                        help='never use the network: missing weights or KITTI fall back at once to what is on '
                             'disk')
    parser.add_argument('--worker-timeout', type=float, default=STEP_TIMEOUT_S, metavar='SECONDS',
                        help='training on several machines (TF_CONFIG): how long a step waits for the other '
                             'workers before this one stops with an error naming the tasks that are gone, and how '
                             'long a worker without KITTI or the generated scenes in its DATA_DIR waits for the '
                             'chief\'s; raise it when a step, or the chief\'s checkpoints at an epoch\'s end, take '
                             'longer [default: %(default)g]')
    parser.add_argument('--keep-last-checkpoint', action='store_true',
                        help='keep checkpoints/last (weights and Adam\'s moments, about 3x the model\'s size) when '
                             'the run finishes; a finished run cannot be resumed, so by default it is deleted')
    parser.add_argument('--resume', metavar='RUN_DIR',
                        help='continue the stopped run in RUN_DIR from its last checkpoint, with its data, split '
                             'and settings (no other flag may be given, but --worker-timeout, '
                             '--keep-last-checkpoint and --no-download)')
    return parser


def parse_args(argv=None):
    """The training flags of argv, checked; argparse's error (exit 2) for a value out of range."""
    parser = train_parser()
    args = parser.parse_args(argv)
    if args.resume:
        given = [f'--{k.replace("_", "-")}' for k, v in vars(args).items()
                 if k not in ('resume', *OPERATIONAL) and v != parser.get_default(k)]
        if given:
            parser.error(f'--resume continues a run with its own settings: drop {" ".join(given)}')
    if args.image_shape and any(d <= 0 or d % 32 for d in args.image_shape):
        parser.error(f'--image-shape {args.image_shape[0]} {args.image_shape[1]}: both must be positive '
                     'multiples of 32 (the encoder halves the size five times)')
    for name in ('epochs', 'batch_size', 'patience', 'accumulate_steps'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.worker_timeout <= 0:
        parser.error('--worker-timeout must be positive')
    if args.keep_prob is not None and not 0 < args.keep_prob <= 1:
        parser.error('--keep-prob must be in (0, 1]')
    if not 0 < args.val_fraction < 1:
        parser.error('--val-fraction must be in (0, 1)')
    if not 0 <= args.seed < 2 ** 32:
        parser.error('--seed must be in [0, 2**32)')
    if args.imagenet_weights and args.vgg_init in ('udacity', 'random'):
        parser.error(f'--imagenet-weights is for --vgg-init imagenet (or auto), not {args.vgg_init}')
    return args


def evaluate_parser():
    parser = argparse.ArgumentParser(
        prog='main.py evaluate',
        description='Score a trained run (its best checkpoint) at each image\'s original resolution: KITTI\'s road '
                    'figures per category and pooled for a road model, per-class and mean IoU and accuracies for '
                    'scene parsing; print a table and write RUN_DIR/eval.json, a plot, the confusion matrix '
                    '(eval_confusion.png), every image\'s figures (eval_images.csv) and the worst images '
                    '(eval_worst/).')

    def count(text):
        """--worst's value: a whole number, 0 or more."""
        if int(text) < 0:
            raise argparse.ArgumentTypeError(f'{text} is negative')
        return int(text)

    parser.add_argument('--checkpoint', metavar='RUN_DIR', required=True, help='a run folder of main.py')
    parser.add_argument('--dataset', metavar='DIR',
                        help='score the labelled images of DIR instead of the run\'s validation split: a dataset '
                             'with a validation split of its own (Cityscapes, CamVid, an export with val.txt) its '
                             'val and whatever test images have labels, another (KITTI, an export without) all its '
                             'training images')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'),
                        help='arithmetic of the network: auto = bf16 on CPUs with AVX512_BF16 or AMX, else fp32 '
                             '[default: the precision the run validated with, so that its figures are repeated; '
                             'auto where this machine lacks it]')
    parser.add_argument('--worst', type=count, default=8, metavar='N',
                        help='draw the N images of the lowest figure (mean IoU; road IoU at 0.5 for a road model) '
                             'into RUN_DIR/eval_worst/, worst first, each as image | truth | prediction; 0: none '
                             '[default: %(default)s]')
    add_tta(parser, 'scores')
    return parser


def add_tta(parser, verb):
    """--tta, the same for evaluate, optimize and infer: verb is what the command does with the predictions."""
    parser.add_argument('--tta', choices=TTA_CHOICES, default='none',
                        help=f'test-time augmentation: "flip" {verb} the mean of each image\'s prediction and its '
                             'mirror image\'s (twice the time; whether it helps depends on the model and the data: '
                             'docs/measurements.md) [default: %(default)s]')


def optimize_parser():
    parser = argparse.ArgumentParser(
        prog='main.py optimize',
        description='Make fast inference models of a finished run in RUN_DIR/optimized/: fp32.pb (frozen graph, '
                    'Grappler-optimized), bf16.pb (auto mixed precision: oneDNN bfloat16 on CPUs with '
                    'AVX512_BF16 or AMX, float16 on a GPU), fp16.tflite, int8_dynamic.tflite and int8.tflite '
                    f'(full integer, calibrated on up to {CALIBRATION_IMAGES} training images), model.onnx (ONNX, '
                    'any batch and size, for ONNX Runtime, TensorRT or OpenVINO) and model_int8.onnx (ONNX Runtime '
                    'static int8 quantization, QDQ, calibrated on the same images), the ONNX models each timed '
                    'twice: run by ONNX Runtime and by OpenVINO. Each is timed at batch 1 and scored on the '
                    'validation split; the table goes to '
                    'optimization.md and optimization.json. A previous optimized/ is replaced once the new '
                    'one is complete.')
    parser.add_argument('--checkpoint', metavar='RUN_DIR', required=True,
                        help='a finished run folder of main.py (its saved_model/ is what gets optimized)')
    parser.add_argument('--runs', type=int, default=LATENCY_RUNS,
                        help=f'timed runs per variant, after {WARMUP_RUNS} warm-up runs '
                             '[default: %(default)s]')
    add_tta(parser, 'scores (latency stays that of one call)')
    return parser


def infer_parser():
    parser = argparse.ArgumentParser(
        prog='main.py infer',
        description='Segment images or a video with a trained model (the road, or every class of a scene-parsing '
                    'model). Overlays are written at the '
                    'input\'s own resolution: a PNG per image into the OUTPUT folder, or, for a video, an mp4 '
                    'with the same frame rate. Nothing existing is overwritten; an unreadable image is skipped '
                    'with a warning (and the command then ends with an error listing what it skipped).')
    parser.add_argument('--model', metavar='PATH', required=True,
                        help='a run folder (its optimized/ model of --precision and --runtime if main.py optimize '
                             'made one, else its saved_model/), an optimized/ or saved_model/ folder, a frozen '
                             '.pb, a .tflite or an .onnx file (run by ONNX Runtime, or OpenVINO with --runtime '
                             'openvino, at the size its run was trained at, from the config.json of its run folder)')
    parser.add_argument('--input', metavar='PATH', required=True,
                        help='a PNG/JPEG image, a folder of them, or a video (mp4, mov, avi, mkv)')
    parser.add_argument('--output', metavar='PATH', required=True,
                        help='a folder for the overlays of images; an .mp4 file for a video')
    parser.add_argument('--precision', choices=('auto', *PRECISION_VARIANT), default='auto',
                        help='fp32; bf16 (bfloat16 mixed precision on CPUs with AVX512_BF16 or AMX, float16 on a '
                             'GPU); int8 (needs main.py optimize\'s int8.tflite, or model_int8.onnx with '
                             '--runtime onnxruntime or openvino); auto = of the variants main.py optimize measured '
                             'on this same machine, the fastest whose score is within 0.5 points of fp32\'s (saying '
                             'which and why), else bf16 where the CPU has it, else fp32; a .tflite or .onnx '
                             'model\'s own [default: auto]')
    parser.add_argument('--runtime', choices=RUNTIMES, default='auto',
                        help='what runs a run folder\'s or optimized/ folder\'s model: tensorflow (its frozen '
                             'graphs and TFLite models), onnxruntime (model.onnx, or model_int8.onnx for int8: on '
                             'TensorRT or CUDA where the installed onnxruntime has them, else the CPU), openvino '
                             '(the same ONNX files, by OpenVINO on the CPU; also for an .onnx --model); auto = '
                             'tensorflow (ONNX Runtime for an .onnx file), but --precision auto may pick any of '
                             'them from main.py optimize\'s measurements [default: auto]')
    parser.add_argument('--probabilities', action='store_true',
                        help='also write, for a road model, KITTI-style confidence maps (uint8 road probability '
                             'x 255), for scene parsing the label images (class ids as the dataset\'s benchmark '
                             'reads them), into OUTPUT/probabilities/ (OUTPUT_probabilities/ for a video, a PNG per '
                             'frame)')
    parser.add_argument('--bev', metavar='CALIB',
                        help='also write each image\'s bird\'s-eye view into OUTPUT/bev/ (KITTI\'s 20 x 40 m grid, '
                             'the road in green, a line every 5 m): CALIB is a KITTI calibration file (one camera for '
                             'every image) or a folder of them named like the images (um_000000.txt for '
                             'um_000000.png); road models and images only')
    add_tta(parser, 'paints')
    return parser


def synthetic_parser():
    parser = argparse.ArgumentParser(description='Write the generated road scenes, with their classes, to a new '
                                     'folder in CamVid\'s SegNet layout (train/, trainannot/, val/, valannot/, '
                                     'test/, testannot/): the offline demonstration of scene parsing, '
                                     '`python main.py --dataset DIR`. (main.py makes the KITTI-layout set itself.)')
    parser.add_argument('root', metavar='DIR', help='the folder to create; it must not exist')
    parser.add_argument('--counts', type=int, nargs=3, default=(240, 30, 30), metavar=('TRAIN', 'VAL', 'TEST'),
                        help='images per split [default: 240 30 30]')
    parser.add_argument('--seed', type=int, default=0, help='the scenes\' seed [default: 0]')
    return parser


def serve_parser():
    parser = argparse.ArgumentParser(
        prog='main.py serve',
        description='Serve a trained model over HTTP until SIGTERM or Ctrl-C (which let the requests in flight '
                    'finish): POST /v1/segment answers a PNG or JPEG with a PNG of its size (the overlay, the mask '
                    'in the run\'s class colours, or a road model\'s probability), GET /v1/model describes the model, '
                    'GET /healthz says it answers, / is a page to try it, /openapi.json describes the API. Requests '
                    'that arrive together run as one batch. docs/serving.md: clients, limits, a reverse proxy, '
                    'systemd, a container.')

    def number(kind, low, high=None, above=False):
        """A flag's type: a value of kind from low (above it, if above) to high."""
        def check(text):
            value = kind(text)
            if value < low or above and value == low or high is not None and value > high:
                raise argparse.ArgumentTypeError(f'{text} is not {"above" if above else "at least"} {low}'
                                                 + (f' and at most {high}' if high is not None else ''))
            return value
        return check

    parser.add_argument('--model', metavar='PATH', required=True,
                        help='what main.py infer --model takes: a run folder, its optimized/ or saved_model/ '
                             'folder, a frozen .pb, a .tflite or an .onnx file')
    parser.add_argument('--precision', choices=('auto', *PRECISION_VARIANT), default='auto',
                        help='as main.py infer --precision: auto = the fastest variant main.py optimize measured '
                             'on this machine within 0.5 points of fp32\'s score, else bf16 where the CPU has it, '
                             'else fp32 [default: auto]')
    parser.add_argument('--runtime', choices=RUNTIMES, default='auto',
                        help='as main.py infer --runtime: what runs an optimized model [default: auto]')
    add_tta(parser, 'answers')
    parser.add_argument('--host', default='127.0.0.1',
                        help='the address to listen on: 127.0.0.1 serves this machine only; 0.0.0.0 every '
                             'network interface (give --api-key-file, or a reverse proxy) [default: %(default)s]')
    parser.add_argument('--port', type=number(int, 0, 65535), default=8000,
                        help='the TCP port; 0: any free one (the server says which) [default: %(default)s]')
    parser.add_argument('--api-key-file', metavar='PATH',
                        help='a file whose first line is the API key: /v1/ then answers only requests with the '
                             'header "Authorization: Bearer KEY" (401 otherwise); / and /healthz stay open '
                             '[default: no key]')
    parser.add_argument('--max-upload-mb', type=number(float, 0, above=True), default=32,
                        help='the largest body accepted, in MiB: a larger one is answered 413 [default: %(default)g]')
    parser.add_argument('--max-megapixels', type=number(float, 0, above=True), default=25,
                        help='the most pixels of an image, in millions, read from its header before it is '
                             'decoded: a larger one is answered 413 [default: %(default)g]')
    parser.add_argument('--max-batch', type=number(int, 1),
                        help='the most requests run as one batch [default: the largest batch the model takes: 4 for '
                             'the ONNX models, 1 for frozen graphs and TFLite models]')
    parser.add_argument('--batch-wait-ms', type=number(float, 0), default=5,
                        help='how long a batch waits after its first request for more, in milliseconds (none when '
                             'the batch is 1) [default: %(default)g]')
    return parser


# The commands of main.py besides training, by their first word.
COMMANDS = {'evaluate': evaluate_parser, 'optimize': optimize_parser, 'infer': infer_parser,
            'synthetic': synthetic_parser, 'serve': serve_parser}


def parse(argv):
    """(command: 'train' or one of COMMANDS, its flags) of main.py's arguments, checked: --help prints and exits
    0, a bad value is argparse's error (exit 2)."""
    if argv[:1] and argv[0] in COMMANDS:
        parser = COMMANDS[argv[0]]()
        args = parser.parse_args(argv[1:])
        if argv[0] == 'optimize' and args.runs < 2:
            parser.error('--runs must be at least 2')
        if argv[0] == 'synthetic' and min(args.counts) < 1:
            parser.error('--counts: every split needs at least one image')
        return argv[0], args
    return 'train', parse_args(argv)


@contextlib.contextmanager
def quiet_tensorflow():
    """Import TensorFlow inside this block to keep its start-up lines (CUDA stubs, CPU-feature notices, absl's
    notice) off the terminal, unless the user chose a TF_CPP_MIN_LOG_LEVEL: then nothing changes. Some of those
    lines are written by absl before any log level applies, so the process's stderr is closed for the import;
    later, TF_CPP_MIN_LOG_LEVEL=3 keeps TensorFlow's C++ notices quiet (its errors still reach the user as
    Python exceptions) and its Python logger says only errors (no deprecation notices)."""
    if 'TF_CPP_MIN_LOG_LEVEL' in os.environ:
        yield
        return
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    logging.getLogger('tensorflow').setLevel(logging.ERROR)
