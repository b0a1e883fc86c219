"""The recommended settings: the training recipe of each data source, the learning-rate schedule, and the
defaults of the commands' operational flags. A flag the user sets wins; docs/training.md explains the choices."""

RECIPES = {
    'kitti': dict(image_shape=(160, 576), epochs=30, batch_size=4, learning_rate=1e-4, keep_prob=0.5,
                  balance_classes=False),
    'synthetic': dict(image_shape=(96, 320), epochs=4, batch_size=2, learning_rate=3e-4, keep_prob=1.0,
                      balance_classes=False, num_train=270, num_test=30),
    # KITTI's recipe at each set's own aspect ratio: Cityscapes' 1024x2048 at a quarter of each side, CamVid's
    # 360x480 whole (to a multiple of 32). Size is what raised mean IoU most on CamVid val (pretrained, 10 epochs:
    # each larger size scored higher, 352x480 highest; docs/measurements.md).
    # Scene parsing balances its classes (SegNet's median-frequency weights): on CamVid val, poles, signs,
    # pedestrians and cyclists stayed near 0 IoU without (docs/measurements.md has the runs). Road alone (--classes
    # road) is two classes and is not balanced.
    'cityscapes': dict(image_shape=(256, 512), epochs=30, batch_size=4, learning_rate=1e-4, keep_prob=0.5,
                       balance_classes=True),
    'camvid': dict(image_shape=(352, 480), epochs=30, batch_size=4, learning_rate=1e-4, keep_prob=0.5,
                   balance_classes=True),
    # A user's own labelled street images (a VOC-style export): CamVid's recipe, the nearest measured kind of data.
    'voc': dict(image_shape=(352, 480), epochs=30, batch_size=4, learning_rate=1e-4, keep_prob=0.5,
                balance_classes=True),
}

# A randomly initialised encoder learning scene parsing trains at this peak learning rate unless --learning-rate
# says otherwise (the pretrained recipes' 1e-4 fine-tunes). On CamVid val (96x128, 10 epochs, classes balanced)
# 3e-4 rather than 1e-4 clearly raised mean IoU. Road alone keeps its recipe's rate: on CamVid's road, 3e-4 did a
# little better on val but worse on a drive held out of training, and what generalises decides; the generated
# scenes' recipe has 3e-4 of its own, the best of 1e-4 to 6e-4 there (docs/measurements.md).
RANDOM_ENCODER_LEARNING_RATE = 3e-4

# Adam's first steps are sign steps of size learning_rate on every weight: on fc6 (fan-in 25088) that moves
# pre-activations by several times their own scale, and the loss jumps on the second step.
# A linear warm-up of the learning rate over the first steps avoids it. After it, DeepLab's "poly" decay.
WARMUP_STEPS = 50
POLY_POWER = 0.9

# Where the encoder's weights come from (main.py --vgg-init).
INITS = ('auto', 'udacity', 'imagenet', 'random')

# Without an answer from every worker within this time, a step fails with an error naming the tasks that are
# gone, instead of waiting forever (main.py --worker-timeout). The chief's checkpoints at an epoch's end make the
# others wait too.
STEP_TIMEOUT_S = 120

# main.py optimize: timed runs per variant after a few untimed ones, and "a few hundred" representative images
# to calibrate full-integer quantization on.
LATENCY_RUNS = 20
WARMUP_RUNS = 3
CALIBRATION_IMAGES = 300
