"""Udacity's data functions, with their names and signatures: the pretrained VGG16, the training batches, and the
test-set outputs (road overlays and KITTI confidence maps written into a new run folder; for scene parsing, class
overlays and label images)."""
import os
import time

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

import batches
import files
import kitti
import vgg
from errors import UserError
from images import class_overlay, legend, overlay, read_rgb, resize_image, resize_probabilities, resize_probability
from metrics import ROAD, confidence


def maybe_download_pretrained_vgg(data_dir, url=vgg.VGG_URL):
    """Make sure data_dir/vgg holds Udacity's VGG16 SavedModel, downloading and extracting vgg.zip if not."""
    return vgg.maybe_download_pretrained_vgg(data_dir, url)


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
    images, classes = batches.load_resized(pairs, image_shape, load_pair)
    weights = None
    if balance:
        weights = batches.median_frequency_weights(classes, num_classes)
        print('median-frequency class weights: ' + ' '.join(f'{w:.3g}' for w in weights), flush=True)
    epoch = first_epoch

    def get_batches_fn(batch_size):
        nonlocal epoch
        order = np.random.RandomState([seed, epoch]).permutation(len(pairs))
        this_epoch, epoch = epoch, epoch + 1
        for number, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start:start + batch_size]
            batch_images, batch_classes = images[batch], classes[batch]
            if augment:
                rng = np.random.RandomState([seed, this_epoch, number])
                examples = [batches.flip_scale_crop(image, labels, rng)
                            for image, labels in zip(batch_images, batch_classes)]
                batch_images = np.stack([batches.jitter_photometric(image, rng) for image, _ in examples])
                batch_classes = np.stack([labels for _, labels in examples])
            labels = batches.one_hot(batch_classes, num_classes)
            yield batch_images.astype(np.float32), labels if weights is None else labels * weights

    return get_batches_fn


def road_probability(logits):
    """Softmax road probability [N*H*W] of 2-D logits, built once per logits tensor (never once per image)."""
    name = logits.op.name + '_road_probability'
    try:
        return logits.graph.get_tensor_by_name(name + ':0')
    except KeyError:
        return tf.identity(tf.nn.softmax(logits)[:, ROAD], name=name)


def class_probabilities(logits):
    """Softmax class probabilities [N*H*W, K] of 2-D logits, built once per logits tensor."""
    name = logits.op.name + '_class_probabilities'
    try:
        return logits.graph.get_tensor_by_name(name + ':0')
    except KeyError:
        return tf.nn.softmax(logits, name=name)


def predict_probability(predict, image, image_shape):
    """Road probability float32 [h, w] of one uint8 image [h, w, 3]: predict (float32 [1, H, W, 3] raw RGB 0-255
    -> road probability, H*W values in any shape) runs at image_shape (H, W); the result is resized back."""
    prob = predict(resize_image(image, image_shape)[None].astype(np.float32))
    return resize_probability(np.reshape(prob, image_shape), image.shape[:2])


def predict_road(sess, road_prob, keep_prob, image_pl, image, image_shape):
    """Road probability float32 [h, w] of one uint8 [h, w, 3] image, computed at image_shape."""
    return predict_probability(lambda batch: sess.run(road_prob, {image_pl: batch, keep_prob: 1.0}), image,
                               image_shape)


def predict_classes(predict, image, image_shape, num_classes):
    """Class ids int [h, w] of one uint8 image [h, w, 3]: predict (float32 [1, H, W, 3] -> the class
    probabilities, H*W*K values) runs at image_shape (H, W); the probabilities are resized back, then argmax."""
    probs = np.reshape(predict(resize_image(image, image_shape)[None].astype(np.float32)), (*image_shape, num_classes))
    return np.argmax(resize_probabilities(probs, image.shape[:2]), axis=-1)


def test_images(data_folder):
    """[(name, path)] of KITTI's test images, data_folder/image_2."""
    image_dir = os.path.join(data_folder, 'image_2')
    return [(name, os.path.join(image_dir, name)) for name in kitti.list_images(image_dir)]


def test_predictions(sess, logits, keep_prob, image_pl, data_folder, image_shape, images=None, num_classes=2):
    """Yield (name, uint8 image [h, w, 3], prediction [h, w]) for every test image: data_folder/image_2, or images
    [(name, path)] when given. The prediction is the road probability of a road model, else class ids."""
    probabilities = road_probability(logits) if num_classes == 2 else class_probabilities(logits)
    for name, path in test_images(data_folder) if images is None else images:
        try:
            image = read_rgb(path)
        except UserError as e:  # one bad test image must not cost the trained model's other outputs
            tqdm.write(f'warning: skipped: {e}')
            continue
        if num_classes == 2:
            yield name, image, predict_road(sess, probabilities, keep_prob, image_pl, image, image_shape)
        else:
            predict = lambda batch: sess.run(probabilities, {image_pl: batch, keep_prob: 1.0})  # noqa: E731
            yield name, image, predict_classes(predict, image, image_shape, num_classes)


def gen_test_output(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (name, overlay uint8 [h, w, 3]) for every image of data_folder/image_2 at its own resolution."""
    for name, image, prob in test_predictions(sess, logits, keep_prob, image_pl, data_folder, image_shape):
        yield name, overlay(image, prob)


def new_run_dir(runs_dir):
    """Create and return runs_dir/<YYYYmmdd-HHMMSS>, with a suffix if that exists: never reuse a folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    with files.writing(runs_dir, 'a run folder'):
        os.makedirs(runs_dir, exist_ok=True)
        for suffix in [''] + [f'-{i}' for i in range(1, 100)]:
            path = os.path.join(runs_dir, stamp + suffix)
            try:
                os.makedirs(path)
                return path
            except FileExistsError:
                continue
    raise UserError(f'could not create a new run folder in {runs_dir}')


def save_inference_samples(runs_dir, data_dir, sess, image_shape, logits, keep_prob, input_image,
                           test_folder=None, output_dir=None, kitti_dir=None, images=None,
                           kitti_name=kitti.label_name):
    """Write an overlay PNG per test image into output_dir (default: a new folder under runs_dir) and, with
    kitti_dir, its KITTI confidence map kitti_dir/<kitti_name(name)> (uint8 road probability x 255; KITTI names
    it <cat>_road_<id>.png).

    The test images are test_folder/image_2 (default data_dir/data_road/testing/image_2), or images [(name,
    path)]. Returns output_dir.
    """
    if images is None:
        test_folder = test_folder or os.path.join(data_dir, 'data_road', 'testing')
        images = test_images(test_folder)
    output_dir = output_dir or new_run_dir(runs_dir)
    if kitti_dir:
        os.makedirs(kitti_dir, exist_ok=True)
    predictions = test_predictions(sess, logits, keep_prob, input_image, test_folder, image_shape, images)
    for name, image, prob in tqdm(predictions, total=len(images), desc='test overlays'):
        iio.imwrite(os.path.join(output_dir, png_name(name)), overlay(image, prob))
        if kitti_dir:
            iio.imwrite(os.path.join(kitti_dir, kitti_name(name)), confidence(prob))
    return output_dir


def save_class_samples(sess, image_shape, logits, keep_prob, input_image, images, classes, palette, encode,
                       output_dir):
    """Scene parsing's test outputs: per test image of images [(name, path)] an overlay in its classes'
    palette colours (output_dir/<name>.png), its label image output_dir/labels/<name>.png (class ids encoded
    by encode, as the dataset's benchmark reads them), and legend.png, the palette's key."""
    os.makedirs(os.path.join(output_dir, 'labels'), exist_ok=True)
    iio.imwrite(os.path.join(output_dir, 'legend.png'), legend(classes, palette))
    predictions = test_predictions(sess, logits, keep_prob, input_image, None, image_shape, images, len(classes))
    for name, image, predicted in tqdm(predictions, total=len(images), desc='test outputs'):
        iio.imwrite(os.path.join(output_dir, png_name(name)), class_overlay(image, predicted, palette))
        iio.imwrite(os.path.join(output_dir, 'labels', png_name(name)), encode(predicted))


def png_name(name):
    """An output's name: the test image's, with .png."""
    return os.path.splitext(name)[0] + '.png'


def save_test_outputs(sess, logits, keep_prob, input_image, layout, image_shape, output_dir):
    """The test-set outputs of a run into output_dir, for every test image of a datasets.Layout: for a road model
    save_inference_samples' overlays and KITTI confidence maps in kitti/ (named as KITTI names them, or like the
    test image for the other layouts); for scene parsing save_class_samples' overlays, labels/ and legend."""
    images = [(name, path) for name, path, _ in layout.test]
    if layout.encode is None:
        save_inference_samples(None, None, sess, image_shape, logits, keep_prob, input_image, output_dir=output_dir,
                               kitti_dir=os.path.join(output_dir, 'kitti'), images=images,
                               kitti_name=kitti.label_name if layout.kind == 'kitti' else png_name)
    else:
        save_class_samples(sess, image_shape, logits, keep_prob, input_image, images, layout.classes,
                           layout.palette, layout.encode, output_dir)
