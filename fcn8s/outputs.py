"""What a trained model makes of test images: its probabilities (softmax ops built once per logits tensor), a
prediction per image at the image's own size, and the files of a run's test set: road overlays and KITTI
confidence maps, or, for scene parsing, class overlays, label images and their legend."""
import io
import os
import zipfile

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from fcn8s import bev, files, kitti
from fcn8s.errors import UserError
from fcn8s.images import class_ids_at, class_overlay, legend, overlay, read_rgb, resize_image, resize_probability
from fcn8s.metrics import ROAD, confidence, is_road

BEV_SUBMISSION = 'kitti_bev'  # inside the run folder: the test set's bird's-eye-view maps (and .zip) for KITTI


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


def probabilities(logits, classes):
    """What a model of these class names outputs: road_probability for a road model, else class_probabilities."""
    return (road_probability if is_road(classes) else class_probabilities)(logits)


def flip_mean(probabilities, mirrored, batch_shape):
    """Test-time flip: the mean of a batch's probabilities and those of its mirror image (the batch flipped left to
    right), flipped back; either is N*H*W (road) or N*H*W*K values in any shape, batch_shape (N, H, W). A road
    scene is as likely mirrored, but FCN's outputs are not mirror-symmetric: the two views are a cheap ensemble."""
    probabilities = np.asarray(probabilities)
    views = np.reshape(mirrored, (*batch_shape, -1))[:, :, ::-1]
    return (probabilities + views.reshape(probabilities.shape)) / 2


FLIP_SAID = 'each averaged with its mirror image (--tta flip)'


def flipped(predictor):
    """A predictor (predict, (H, W)) whose predict is with_flip's."""
    return with_flip(predictor[0]), predictor[1]


def with_flip(predict):
    """predict (float32 [N, H, W, 3] -> probabilities) averaged with its prediction of the mirrored batch
    (flip_mean): twice the work."""
    # (a contiguous mirror: ONNX Runtime and OpenVINO read an array's memory as it lies)
    return lambda batch: flip_mean(predict(batch), predict(np.ascontiguousarray(batch[:, :, ::-1])), batch.shape[:3])


def model_input(image, image_shape):
    """What a model is fed of one uint8 image [h, w, 3]: float32 [H, W, 3] raw RGB 0-255 at image_shape (H, W)."""
    return resize_image(image, image_shape).astype(np.float32)


def road_at(output, image_shape, size):
    """A road model's output for one image (H*W values in any shape, image_shape (H, W)) as the road probability
    float32 [h, w] of the image's own size (h, w)."""
    return resize_probability(np.reshape(output, image_shape), size)


def classes_at(output, image_shape, num_classes, size):
    """A scene-parsing model's output for one image (the class probabilities, H*W*K values) as class ids int
    [h, w] at the image's own size: the probabilities are resized, then argmax."""
    return class_ids_at(np.reshape(output, (*image_shape, num_classes)), size)


def predict_probability(predict, image, image_shape):
    """Road probability float32 [h, w] of one uint8 image [h, w, 3]: predict (float32 [1, H, W, 3] raw RGB 0-255
    -> road probability, H*W values in any shape) runs at image_shape (H, W); the result is resized back."""
    return road_at(predict(model_input(image, image_shape)[None]), image_shape, image.shape[:2])


def predict_classes(predict, image, image_shape, num_classes):
    """Class ids int [h, w] of one uint8 image [h, w, 3]: predict (float32 [1, H, W, 3] -> the class
    probabilities, H*W*K values) runs at image_shape (H, W); classes_at makes them ids at the image's size."""
    return classes_at(predict(model_input(image, image_shape)[None]), image_shape, num_classes, image.shape[:2])


def test_predictions(sess, logits, keep_prob, image_pl, images, image_shape, classes):
    """Yield (name, uint8 image [h, w, 3], prediction [h, w]) for every test image of images [(name, path)]: the
    road probability for a road model (classes: its class names), else class ids. An unreadable image is skipped
    with a warning: one bad test image must not cost the trained model's other outputs."""
    output = probabilities(logits, classes)

    def predict(batch):
        return sess.run(output, {image_pl: batch, keep_prob: 1.0})

    for name, path in images:
        try:
            image = read_rgb(path)
        except UserError as e:
            tqdm.write(f'warning: skipped: {e}')
            continue
        if is_road(classes):
            yield name, image, predict_probability(predict, image, image_shape)
        else:
            yield name, image, predict_classes(predict, image, image_shape, len(classes))


def png_name(name):
    """An output's name: the test image's, with .png."""
    return os.path.splitext(name)[0] + '.png'


def save_road_outputs(predictions, count, output_dir, kitti_dir=None, kitti_name=kitti.label_name, calib_dir=None,
                      bev_dir=None):
    """Per (name, image, road probability) of predictions (count of them), a green overlay PNG in output_dir and,
    with kitti_dir, its KITTI confidence map kitti_dir/<kitti_name(name)> (uint8 road probability x 255); with
    calib_dir and bev_dir, the same map in KITTI's bird's-eye view, bev_dir/<kitti_name(name)> (uint8 [800,
    400], 0 outside the camera's view), for the images with a calibration. Returns the names of those without."""
    for folder in (kitti_dir, bev_dir):
        if folder:
            os.makedirs(folder, exist_ok=True)
    uncalibrated = []
    for name, image, prob in tqdm(predictions, total=count, desc='test overlays'):
        iio.imwrite(os.path.join(output_dir, png_name(name)), overlay(image, prob))
        if kitti_dir:
            iio.imwrite(os.path.join(kitti_dir, kitti_name(name)), confidence(prob))
        calibration = bev_dir and bev.calibration_path(calib_dir, name)
        if calibration:
            bev_prob, _ = bev.bev_probability(prob, bev.plane_homography(bev.read_calibration(calibration)))
            iio.imwrite(os.path.join(bev_dir, kitti_name(name)), confidence(bev_prob))
        elif bev_dir:
            uncalibrated.append(name)
    return uncalibrated


def zip_submission(folder, zip_path):
    """Zip the files of folder into zip_path, in the archive's root as KITTI's server wants them (sorted; PNGs
    are compressed already, so stored as they are), written whole or not at all."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_STORED) as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(os.path.join(folder, name), arcname=name)
    files.atomic_write(zip_path, buffer.getvalue())
    return zip_path


def save_class_outputs(predictions, count, classes, palette, encode, output_dir):
    """Scene parsing's test outputs: per (name, image, class ids) of predictions an overlay in its classes' palette
    colours (output_dir/<name>.png), its label image output_dir/labels/<name>.png (class ids encoded by encode,
    as the dataset's benchmark reads them), and legend.png, the palette's key."""
    os.makedirs(os.path.join(output_dir, 'labels'), exist_ok=True)
    iio.imwrite(os.path.join(output_dir, 'legend.png'), legend(classes, palette))
    for name, image, predicted in tqdm(predictions, total=count, desc='test outputs'):
        iio.imwrite(os.path.join(output_dir, png_name(name)), class_overlay(image, predicted, palette))
        iio.imwrite(os.path.join(output_dir, 'labels', png_name(name)), encode(predicted))


def save_test_outputs(sess, logits, keep_prob, input_image, layout, image_shape, output_dir):
    """The test-set outputs of a run into output_dir, for every test image of a layout.Layout: for a road model
    overlays and KITTI confidence maps in kitti/ (named as KITTI names them, or like the test image for the other
    layouts), and, for KITTI's layout with testing/calib/, the bird's-eye-view maps in kitti_bev/ and
    kitti_bev.zip, ready to upload to KITTI's server; for scene parsing class overlays, labels/ and the legend."""
    images = [(name, path) for name, path, _ in layout.test]
    predictions = test_predictions(sess, logits, keep_prob, input_image, images, image_shape, layout.classes)
    calib_dir = os.path.join(layout.root, 'testing', bev.CALIB_FOLDER)
    bev_dir = os.path.join(output_dir, BEV_SUBMISSION) if layout.kind == 'kitti' and os.path.isdir(calib_dir) else None
    if is_road(layout.classes):
        uncalibrated = save_road_outputs(predictions, len(images), output_dir, os.path.join(output_dir, 'kitti'),
                                         kitti.label_name if layout.kind == 'kitti' else png_name, calib_dir, bev_dir)
        if bev_dir:
            archive = zip_submission(bev_dir, bev_dir + '.zip')
            print(f'KITTI bird\'s-eye-view submission: {archive} ({len(images) - len(uncalibrated)} maps'
                  + (f'; {len(uncalibrated)} test images without a calibration left out, e.g. {uncalibrated[0]}'
                     if uncalibrated else '') + ')', flush=True)
    else:
        save_class_outputs(predictions, len(images), layout.classes, layout.palette, layout.encode, output_dir)
