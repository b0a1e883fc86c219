"""Udacity's data functions, with their names and signatures: the pretrained VGG16, the training batches and the
road overlays of KITTI's test images, each a thin face over the library (fcn8s/weights.py, batches.py, outputs.py)."""
import os

from fcn8s import batches, kitti, outputs, run_folder, weights
from fcn8s.images import overlay
from fcn8s.metrics import ROAD_CLASSES


def maybe_download_pretrained_vgg(data_dir, url=weights.VGG_URL):
    """Make sure data_dir/vgg holds Udacity's VGG16 SavedModel, downloading and extracting vgg.zip if not."""
    return weights.maybe_download_pretrained_vgg(data_dir, url)


def gen_batch_function(data_folder, image_shape, names=None, seed=0, first_epoch=0, augment=False, pairs=None,
                       load_pair=kitti.load_pair, num_classes=2, balance=False):
    """Generator factory over data_folder (KITTI `training` layout) at image_shape (H, W).

    Every image and label is read, checked and resized here, once, so that a bad file stops the job before any
    training. get_batches_fn(batch_size) yields (images [B, H, W, 3] raw RGB 0-255, labels [B, H, W, K]) in a
    new order on every call, seeded by (seed, epoch), epochs counted from first_epoch (a resumed run's).
    `names` restricts it to those image names (the training split). With augment, each example is flipped,
    zoomed and jittered at random, seeded by (seed, epoch, batch) so that a resumed run sees the same batches.
    Another layout's (image path, label path) pairs come as pairs, read by its load_pair, with K = num_classes.
    With balance, each pixel's one-hot label is scaled by its class's median-frequency weight (of these labels):
    the loss becomes the weighted mean over the valid pixels.
    """
    pairs = kitti.training_pairs(data_folder, names) if pairs is None else pairs
    return batches.batch_function(pairs, image_shape, load_pair, num_classes, seed, first_epoch, augment, balance)


def test_images(data_folder):
    """[(name, path)] of KITTI's test images, data_folder/image_2."""
    image_dir = os.path.join(data_folder, 'image_2')
    return [(name, os.path.join(image_dir, name)) for name in kitti.list_images(image_dir)]


def gen_test_output(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (name, overlay uint8 [h, w, 3]) for every image of data_folder/image_2 at its own resolution."""
    for name, image, prob in outputs.test_predictions(sess, logits, keep_prob, image_pl, test_images(data_folder),
                                                      image_shape, ROAD_CLASSES):
        yield name, overlay(image, prob)


def save_inference_samples(runs_dir, data_dir, sess, image_shape, logits, keep_prob, input_image):
    """Write a green overlay PNG of every KITTI test image (data_dir/data_road/testing/image_2) into a new folder
    under runs_dir, and return that folder."""
    images = test_images(os.path.join(data_dir, 'data_road', 'testing'))
    output_dir = run_folder.new_run_dir(runs_dir)
    predictions = outputs.test_predictions(sess, logits, keep_prob, input_image, images, image_shape, ROAD_CLASSES)
    outputs.save_road_outputs(predictions, len(images), output_dir)
    return output_dir
