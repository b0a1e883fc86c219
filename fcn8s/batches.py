"""Training batches: examples read and resized once, image and label augmented together, one-hot labels, the
seeded batch generator (helper.gen_batch_function is Udacity's face of it)."""
import numpy as np
from tqdm import tqdm

from fcn8s.images import resize_image, resize_nearest

# Training augmentation: zoom up to 1.25x, brightness +-0.1 (of 1), contrast x(1 +- 0.2), gamma exp(+-0.2).
AUGMENT_MAX_SCALE = 1.25
AUGMENT_BRIGHTNESS = 0.1
AUGMENT_CONTRAST = 0.2
AUGMENT_LOG_GAMMA = 0.2


def one_hot(classes, num_classes=2):
    """Class ids [..., H, W] -> float32 [..., H, W, num_classes]; IGNORE pixels (negative ids) become all zeros.
    With two classes, channel 0 is non-road and channel 1 road, as Udacity's labels."""
    return (np.asarray(classes)[..., None] == np.arange(num_classes)).astype(np.float32)


def median_frequency_weights(classes, num_classes):
    """SegNet's median-frequency class balancing (Eigen and Fergus, 2015): weight(c) = median(freq) / freq(c), with
    freq(c) the pixels of class c over the labelled pixels of the images c occurs in. Ignored pixels (negative
    ids) count nowhere; a class that never occurs has no pixel to weigh, gets 0 and stays out of the median.

    classes [N, H, W] ids -> float32 [num_classes]. Two 1x4 images [0, 0, 0, 1] and [0, 0, 2, -1] (4 and 3
    labelled pixels), 4 classes: freq(0) = 5 / 7 (both images), freq(1) = 1 / 4, freq(2) = 1 / 3; the median is
    1 / 3, so the weights are 7 / 15, 4 / 3, 1 and 0 for class 3."""
    pixels, image_pixels = np.zeros(num_classes), np.zeros(num_classes)
    for labels in classes:
        ids = labels[labels >= 0].astype(np.int64)
        counts = np.bincount(ids, minlength=num_classes)
        pixels += counts
        image_pixels += (counts > 0) * ids.size
    occurs = image_pixels > 0
    freq = pixels[occurs] / image_pixels[occurs]
    weights = np.zeros(num_classes, np.float32)
    weights[occurs] = np.median(freq) / freq
    return weights


def load_resized(pairs, image_shape, load_pair, desc='loading'):
    """Images uint8 [N, H, W, 3] and class ids int8 [N, H, W] at image_shape (compact: kept for all epochs) of
    (image path, label path) pairs read by load_pair (a layout.Layout's)."""
    images = np.empty((len(pairs), *image_shape, 3), np.uint8)
    classes = np.empty((len(pairs), *image_shape), np.int8)
    for i, (image_path, label_path) in enumerate(tqdm(pairs, desc=desc, leave=False)):
        image, label = load_pair(image_path, label_path)
        images[i] = resize_image(image, image_shape)
        classes[i] = resize_nearest(label, image_shape)
    return images, classes


def flip_scale_crop(image, classes, rng, max_scale=AUGMENT_MAX_SCALE):
    """The same random horizontal flip and zoom (scale up to max_scale, then a random crop back to the size)
    of uint8 image [H, W, 3] and class ids [H, W]: bilinear for the image, nearest neighbour for the labels."""
    if rng.rand() < 0.5:
        image, classes = image[:, ::-1], classes[:, ::-1]
    height, width = classes.shape
    scale = rng.uniform(1.0, max_scale)
    big = (int(round(height * scale)), int(round(width * scale)))
    top, left = rng.randint(0, big[0] - height + 1), rng.randint(0, big[1] - width + 1)
    crop = (slice(top, top + height), slice(left, left + width))
    image = resize_image(np.ascontiguousarray(image), big)[crop]
    return image, resize_nearest(classes, big)[crop]


def jitter_photometric(image, rng):
    """Random brightness, contrast and gamma of a uint8 image [H, W, 3] (never of its labels)."""
    x = image.astype(np.float32) / 255
    x = x + rng.uniform(-AUGMENT_BRIGHTNESS, AUGMENT_BRIGHTNESS)
    x = (x - x.mean()) * rng.uniform(1 - AUGMENT_CONTRAST, 1 + AUGMENT_CONTRAST) + x.mean()
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-AUGMENT_LOG_GAMMA, AUGMENT_LOG_GAMMA))
    return np.round(x * 255).astype(np.uint8)


def batch_function(pairs, image_shape, load_pair, num_classes=2, seed=0, first_epoch=0, augment=False, balance=False):
    """get_batches_fn(batch_size) over (image path, label path) pairs read by load_pair, at image_shape (H, W).

    Every image and label is read, checked and resized here, once, so that a bad file stops the job before any
    training. get_batches_fn yields (images [B, H, W, 3] raw RGB 0-255, labels [B, H, W, num_classes]) in a new
    order on every call, seeded by (seed, epoch), epochs counted from first_epoch (a resumed run's). With augment,
    each example is flipped, zoomed and jittered at random, seeded by (seed, epoch, batch) so that a resumed run
    sees the same batches. With balance, each pixel's one-hot label is scaled by its class's median-frequency
    weight (of these labels): the loss becomes the weighted mean over the valid pixels.
    """
    images, classes = load_resized(pairs, image_shape, load_pair)
    weights = None
    if balance:
        weights = median_frequency_weights(classes, num_classes)
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
                examples = [flip_scale_crop(image, labels, rng)
                            for image, labels in zip(batch_images, batch_classes)]
                batch_images = np.stack([jitter_photometric(image, rng) for image, _ in examples])
                batch_classes = np.stack([labels for _, labels in examples])
            labels = one_hot(batch_classes, num_classes)
            yield batch_images.astype(np.float32), labels if weights is None else labels * weights

    return get_batches_fn
