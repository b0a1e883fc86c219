"""Training batches: examples read and resized once and kept, or streamed from disk where they would not fit in
memory; image and label augmented together, one-hot labels, the seeded batch generator (helper.gen_batch_function
is Udacity's face of it)."""
import concurrent.futures
import contextlib
import os

import numpy as np
from tqdm import tqdm

from fcn8s.images import resize_image, resize_nearest

# The resized training set is kept in memory only where it takes at most this share of the memory available: a
# small set is decoded once instead of every epoch, and a larger one, whose steps take longer than decoding its
# batch in the background, loses nothing when streamed; the network, its gradients and Adam's moments need the
# rest of the memory.
IN_MEMORY_SHARE = 1 / 64
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


def resized_example(pair, image_shape, load_pair):
    """(uint8 image [H, W, 3], int8 class ids [H, W]) at image_shape of an (image path, label path) pair read by
    load_pair (a layout.Layout's)."""
    image, label = load_pair(*pair)
    return resize_image(image, image_shape), resize_nearest(label, image_shape)


def load_resized(pairs, image_shape, load_pair, desc='loading', pool=None):
    """Images uint8 [N, H, W, 3] and class ids int8 [N, H, W] at image_shape (compact: kept for all epochs) of
    (image path, label path) pairs read by load_pair, in pool's threads if given (without a progress bar)."""
    images = np.empty((len(pairs), *image_shape, 3), np.uint8)
    classes = np.empty((len(pairs), *image_shape), np.int8)
    examples = (pool.map(resized_example, pairs, [image_shape] * len(pairs), [load_pair] * len(pairs)) if pool else
                (resized_example(pair, image_shape, load_pair) for pair in pairs))
    with tqdm(total=len(pairs), desc=desc, leave=False, disable=pool is not None) as bar:  # cleared on an error too
        for i, (image, label) in enumerate(examples):
            images[i], classes[i] = image, label
            bar.update()
    return images, classes


def available_memory():
    """Bytes of memory available to new work (the kernel's MemAvailable), None where it is not known."""
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return None


def keep_in_memory(size, available, what):
    """(whether size bytes of what are kept in memory, a line saying so): where they take at most IN_MEMORY_SHARE
    of the available bytes (unknown: kept)."""
    if available is None or size <= IN_MEMORY_SHARE * available:
        return True, f'{what}: kept in memory once read ({size / 2 ** 20:.0f} MB)'
    return False, (f'{what}: streamed from disk, read again as they are needed ({size / 2 ** 30:.1f} GB would take '
                   f'more than 1/{round(1 / IN_MEMORY_SHARE)} of the {available / 2 ** 30:.1f} GB available)')


def streamed_labels(pairs, image_shape, load_pair):
    """Each pair's class ids int8 [H, W] at image_shape, read one at a time (a streamed set's class weights)."""
    with tqdm(pairs, desc='class weights', leave=False) as bar:  # cleared on an error too
        for pair in bar:
            yield resized_example(pair, image_shape, load_pair)[1]


def check_headers(pairs, check_pair):
    """Every (image path, label path) pair checked from its headers (check_pair: a layout.Layout's), so that a
    streamed dataset's bad file still stops the job before training, naming it."""
    with tqdm(pairs, desc='checking', leave=False) as bar:
        for pair in bar:
            check_pair(*pair)


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


def batch_function(pairs, image_shape, load_pair, num_classes=2, seed=0, first_epoch=0, augment=False, balance=False,
                   check_pair=None, in_memory=None):
    """get_batches_fn(batch_size) over (image path, label path) pairs read by load_pair, at image_shape (H, W).

    in_memory: every example read, checked and resized here, once, and kept; or streamed (False): every pair's
    headers checked here by check_pair (both a layout.Layout's), each batch's examples read and resized as it is
    made, in threads, while a step runs (the caller's prefetch; with balance the pass over the labels checks them
    instead). None: kept where keep_in_memory says, and said;
    always kept without check_pair (nothing would check a streamed dataset's files before training).
    Either way a bad file stops the job before any training. get_batches_fn yields (images [B, H, W, 3] raw RGB
    0-255, labels [B, H, W, num_classes]) in a new order on every call, seeded by (seed, epoch), epochs counted
    from first_epoch (a resumed run's); kept or streamed, the batches are the same. With augment, each example is
    flipped, zoomed and jittered at random, seeded by (seed, epoch, batch) so that a resumed run sees the same
    batches. With balance, each pixel's one-hot label is scaled by its class's median-frequency weight (of these
    labels, read once more where streamed): the loss becomes the weighted mean over the valid pixels.
    """
    if in_memory is None and check_pair is None:
        in_memory = True
    if in_memory is None:
        size = len(pairs) * image_shape[0] * image_shape[1] * 4  # uint8 RGB and an int8 class id per pixel
        in_memory, said = keep_in_memory(size, available_memory(), 'training images, resized')
        print(said, flush=True)
    if in_memory:
        images, classes = load_resized(pairs, image_shape, load_pair)
    elif not balance:  # with balance, the weights' pass over the labels reads, and so checks, every pair
        check_headers(pairs, check_pair)
    weights = None
    if balance:
        weights = median_frequency_weights(classes if in_memory else streamed_labels(pairs, image_shape, load_pair),
                                           num_classes)
        print('median-frequency class weights: ' + ' '.join(f'{w:.3g}' for w in weights), flush=True)
    epoch = first_epoch

    def get_batches_fn(batch_size):
        nonlocal epoch
        order = np.random.RandomState([seed, epoch]).permutation(len(pairs))
        this_epoch, epoch = epoch, epoch + 1
        threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        with contextlib.nullcontext() if in_memory else concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for number, start in enumerate(range(0, len(order), batch_size)):
                batch = order[start:start + batch_size]
                batch_images, batch_classes = (images[batch], classes[batch]) if in_memory else \
                    load_resized([pairs[i] for i in batch], image_shape, load_pair, pool=pool)
                if augment:
                    rng = np.random.RandomState([seed, this_epoch, number])
                    examples = [flip_scale_crop(image, labels, rng)
                                for image, labels in zip(batch_images, batch_classes)]
                    batch_images = np.stack([jitter_photometric(image, rng) for image, _ in examples])
                    batch_classes = np.stack([labels for _, labels in examples])
                labels = one_hot(batch_classes, num_classes)
                yield batch_images.astype(np.float32), labels if weights is None else labels * weights

    return get_batches_fn
