"""Data for the FCN-8s road segmenter: downloads, KITTI-layout batches, outputs (the scenes: synthetic.py)."""
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from PIL import Image
from tqdm import tqdm

from metrics import IGNORE, NON_ROAD, ROAD

VGG_URL = 'https://s3-us-west-1.amazonaws.com/udacity-selfdrivingcar/vgg.zip'
KITTI_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip'
VGG_FILES = ('saved_model.pb', 'variables/variables.index', 'variables/variables.data-00000-of-00001')
DOWNLOAD_TIMEOUT_S = 15

CATEGORIES = ('um', 'umm', 'uu')
ROAD_COLOR, NON_ROAD_COLOR, INVALID_COLOR = (255, 0, 255), (255, 0, 0), (0, 0, 0)
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_ALPHA = 127 / 255
IMAGE_NAME = re.compile(r'^(um|umm|uu)_(\d{6})\.png$')


class UserError(Exception):
    """A problem with the user's data, weights or flags: reported as a message, never as a traceback."""


# ---------------------------------------------------------------------------------------------- downloads

def download(url, path):
    """Fetch url into path with a progress bar, through a `.part` file renamed only when complete."""
    part = path + '.part'
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, 'wb') as out:
            total = int(response.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                      desc=os.path.basename(path)) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:  # urllib does not raise on a cut-off body
                raise OSError(f'the connection closed after {out.tell()} of {total} bytes')
    except (urllib.error.URLError, OSError, ValueError) as e:
        if os.path.exists(part):
            os.remove(part)
        reason = f'HTTP {e.code} {e.reason}' if isinstance(e, urllib.error.HTTPError) else getattr(e, 'reason', e)
        raise UserError(f'could not download {url}: {reason}') from None
    os.replace(part, path)
    return path


def extract_zip(zip_path, target_dir):
    """Extract zip_path into target_dir through a temporary folder inside it; return the temporary folder's
    top-level entries moved into target_dir. Existing entries are never overwritten."""
    os.makedirs(target_dir, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise UserError(f'{zip_path} is corrupt (member {bad}); delete it and try again')
            with tempfile.TemporaryDirectory(dir=target_dir, prefix='.extract-') as tmp:
                archive.extractall(tmp)
                moved = []
                for entry in sorted(os.listdir(tmp)):
                    dest = os.path.join(target_dir, entry)
                    if not os.path.exists(dest):
                        shutil.move(os.path.join(tmp, entry), dest)
                        moved.append(entry)
                return moved
    except zipfile.BadZipFile as e:
        raise UserError(f'{zip_path} is not a valid zip file ({e}); delete it and try again') from None


def kitti_is_present(road_dir):
    return os.path.isdir(os.path.join(road_dir, 'training', 'image_2'))


def vgg_is_complete(vgg_dir):
    return all(os.path.isfile(os.path.join(vgg_dir, f)) for f in VGG_FILES)


def vgg_instructions(data_dir, url=VGG_URL):
    return (f'To use the pretrained VGG16, download {url} by hand and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "vgg", "saved_model.pb")} exists.')


def kitti_instructions(data_dir):
    return ('To train on KITTI Road, register at https://www.cvlibs.net/datasets/kitti/eval_road.php, download '
            f'data_road.zip (base kit, ~450 MB) and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "data_road", "training", "image_2")} exists.')


def fetch_and_extract(url, data_dir, instructions):
    """Download url into data_dir (unless its zip is already there) and extract it into data_dir."""
    os.makedirs(data_dir, exist_ok=True)
    zip_path = os.path.join(data_dir, os.path.basename(url))
    if not os.path.exists(zip_path):
        try:
            download(url, zip_path)
        except UserError as e:
            raise UserError(f'{e}\n  {instructions}') from None
    extract_zip(zip_path, data_dir)
    return zip_path


def maybe_download_pretrained_vgg(data_dir, url=VGG_URL):
    """Make sure data_dir/vgg holds Udacity's VGG16 SavedModel, downloading and extracting vgg.zip if not."""
    vgg_dir = os.path.join(data_dir, 'vgg')
    if not vgg_is_complete(vgg_dir):
        zip_path = fetch_and_extract(url, data_dir, vgg_instructions(data_dir, url))
        if not vgg_is_complete(vgg_dir):
            raise UserError(f'{zip_path} does not hold vgg/{" vgg/".join(VGG_FILES)}')
    return vgg_dir


def maybe_download_kitti(data_dir, url=KITTI_URL):
    """Make sure data_dir/data_road holds KITTI Road, downloading and extracting data_road.zip if not."""
    road_dir = os.path.join(data_dir, 'data_road')
    if not kitti_is_present(road_dir):
        fetch_and_extract(url, data_dir, kitti_instructions(data_dir))
    return road_dir


# ------------------------------------------------------------------------------------------ images, labels

def read_image(path):
    """The pixels of an image file; an unreadable or truncated file is a UserError naming it."""
    try:
        return iio.imread(path)
    except Exception as e:  # imageio raises many types for a bad file; each means the same to the user
        raise UserError(f'{path} cannot be read as an image ({e.__class__.__name__}: {e}); replace or remove '
                        'it') from None


def read_rgb(path):
    """An image file as uint8 [H, W, 3] RGB (grayscale repeated, an alpha channel dropped)."""
    image = read_image(path)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def decode_label(gt):
    """KITTI ground truth uint8 [H, W, 3] -> class ids int8 [H, W]: ROAD, NON_ROAD or IGNORE (black).

    Any other colour raises ValueError naming the colours and their pixel counts.
    """
    gt = np.asarray(gt)[..., :3]
    classes = np.full(gt.shape[:2], IGNORE, np.int8)
    classes[np.all(gt == ROAD_COLOR, axis=-1)] = ROAD
    classes[np.all(gt == NON_ROAD_COLOR, axis=-1)] = NON_ROAD
    unknown = (classes == IGNORE) & ~np.all(gt == INVALID_COLOR, axis=-1)
    if unknown.any():
        colors, counts = np.unique(gt[unknown], axis=0, return_counts=True)
        found = ', '.join(f'{tuple(int(v) for v in c)}: {n} px' for c, n in zip(colors, counts))
        raise ValueError(f'colours other than road {ROAD_COLOR}, non-road {NON_ROAD_COLOR} and invalid '
                         f'{INVALID_COLOR}: {found}')
    return classes


def one_hot(classes):
    """Class ids [..., H, W] -> float32 [..., H, W, 2] = [non-road, road]; IGNORE pixels become [0, 0]."""
    return np.stack([classes == NON_ROAD, classes == ROAD], axis=-1).astype(np.float32)


def resize_image(image, shape):
    """Bilinear resize of uint8 [h, w, 3] to [H, W, 3]; shape is (H, W) (Pillow wants (W, H))."""
    if image.shape[:2] == tuple(shape):
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def resize_nearest(array, shape):
    """Nearest-neighbour resize of [h, w, ...] to [H, W, ...]: labels keep exactly their values."""
    h, w = array.shape[:2]
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return array[rows[:, None], cols]


def resize_probability(prob, shape):
    """Bilinear resize of a float [h, w] map to [H, W]."""
    if prob.shape == tuple(shape):
        return prob
    return np.asarray(Image.fromarray(prob.astype(np.float32)).resize((shape[1], shape[0]), Image.BILINEAR))


# ------------------------------------------------------------------------------------------------ datasets

def list_images(folder):
    """Sorted KITTI image names ({um,umm,uu}_NNNNNN.png) in folder."""
    return sorted(f for f in os.listdir(folder) if IMAGE_NAME.match(f))


def label_name(image_name):
    """um_000012.png -> um_road_000012.png (KITTI's road label; um_lane_* are ego-lane labels)."""
    category, number = IMAGE_NAME.match(image_name).groups()
    return f'{category}_road_{number}.png'


def category(image_name):
    return IMAGE_NAME.match(image_name).group(1)


def training_pairs(data_folder, names=None):
    """[(image_path, label_path)] of data_folder/image_2 paired by name with data_folder/gt_image_2."""
    image_dir, label_dir = os.path.join(data_folder, 'image_2'), os.path.join(data_folder, 'gt_image_2')
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise UserError(f'{folder} does not exist: a KITTI-layout dataset has training/image_2 and '
                            'training/gt_image_2')
    names = list_images(image_dir) if names is None else names
    if not names:
        raise UserError(f'{image_dir} holds no images named like um_000000.png: nothing to train on')
    pairs = [(os.path.join(image_dir, n), os.path.join(label_dir, label_name(n))) for n in names]
    missing = [image for image, label in pairs if not os.path.isfile(label)]
    if missing:
        raise UserError(f'{len(missing)} image(s) without a road label, e.g. {missing[0]} needs '
                        f'{os.path.join(label_dir, label_name(os.path.basename(missing[0])))}')
    return pairs


def load_pair(image_path, label_path):
    """(uint8 [H, W, 3] image, int8 [H, W] classes) of one training example, checked."""
    image, gt = read_rgb(image_path), read_image(label_path)
    if gt.shape[:2] != image.shape[:2]:
        raise UserError(f'{label_path} is {gt.shape[1]}x{gt.shape[0]} but its image is '
                        f'{image.shape[1]}x{image.shape[0]}')
    if gt.ndim != 3:
        raise UserError(f'{label_path} is not an RGB image: KITTI labels are RGB')
    try:
        return image, decode_label(gt)
    except ValueError as e:
        raise UserError(f'{label_path} has {e}') from None


def split_train_val(names, val_fraction, seed):
    """Seeded split of image names into (train, val), stratified by category; both sorted."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for cat in CATEGORIES:
        members = [n for n in names if category(n) == cat]
        rng.shuffle(members)
        n_val = int(round(len(members) * val_fraction))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def load_resized(pairs, image_shape, desc='loading'):
    """Images uint8 [N, H, W, 3] and class ids int8 [N, H, W] at image_shape (compact: kept for all epochs)."""
    images = np.empty((len(pairs), *image_shape, 3), np.uint8)
    classes = np.empty((len(pairs), *image_shape), np.int8)
    for i, (image_path, label_path) in enumerate(tqdm(pairs, desc=desc, leave=False)):
        image, label = load_pair(image_path, label_path)
        images[i] = resize_image(image, image_shape)
        classes[i] = resize_nearest(label, image_shape)
    return images, classes


def gen_batch_function(data_folder, image_shape, names=None, seed=0):
    """Generator factory over data_folder (KITTI `training` layout) at image_shape (H, W).

    get_batches_fn(batch_size) yields (images [B, H, W, 3] raw RGB 0-255, labels [B, H, W, 2]) in a new seeded
    order on every call. `names` restricts it to those image names (the training split).
    """
    pairs = training_pairs(data_folder, names)
    cache = {}
    epochs = [0]

    def get_batches_fn(batch_size):
        if not cache:
            cache['images'], cache['classes'] = load_resized(pairs, image_shape)
        order = np.random.RandomState([seed, epochs[0]]).permutation(len(pairs))
        epochs[0] += 1
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            yield cache['images'][batch].astype(np.float32), one_hot(cache['classes'][batch])

    get_batches_fn.num_images = len(pairs)
    return get_batches_fn


# ---------------------------------------------------------------------------------------------- inference

def road_probability(logits):
    """Softmax road probability [N*H*W] of 2-D logits, built once per logits tensor (never once per image)."""
    name = logits.op.name + '_road_probability'
    try:
        return logits.graph.get_tensor_by_name(name + ':0')
    except KeyError:
        return tf.identity(tf.nn.softmax(logits)[:, ROAD], name=name)


def predict_road(sess, road_prob, keep_prob, image_pl, image, image_shape):
    """Road probability float32 [h, w] of one uint8 [h, w, 3] image, computed at image_shape."""
    feed = {image_pl: resize_image(image, image_shape)[None].astype(np.float32), keep_prob: 1.0}
    prob = sess.run(road_prob, feed).reshape(image_shape)
    return resize_probability(prob, image.shape[:2])


def overlay(image, prob):
    """Green overlay (alpha 127) on uint8 [H, W, 3] where the road probability [H, W] exceeds 0.5."""
    out = image.astype(np.float32)
    road = prob > 0.5
    out[road] = (1 - OVERLAY_ALPHA) * out[road] + OVERLAY_ALPHA * np.array(OVERLAY_COLOR, np.float32)
    return np.round(out).astype(np.uint8)


def gen_test_output(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (name, overlay uint8 [h, w, 3]) for every image of data_folder/image_2 at its own resolution."""
    road_prob = road_probability(logits)
    image_dir = os.path.join(data_folder, 'image_2')
    for name in list_images(image_dir):
        try:
            image = read_rgb(os.path.join(image_dir, name))
        except UserError as e:  # one bad test image must not cost the trained model's other outputs
            tqdm.write(f'warning: skipped: {e}')
            continue
        yield name, overlay(image, predict_road(sess, road_prob, keep_prob, image_pl, image, image_shape))


def new_run_dir(runs_dir):
    """Create and return runs_dir/<YYYYmmdd-HHMMSS>, with a suffix if that exists: never reuse a folder."""
    os.makedirs(runs_dir, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for suffix in [''] + [f'-{i}' for i in range(1, 100)]:
        path = os.path.join(runs_dir, stamp + suffix)
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'could not create a new run folder in {runs_dir}')


def save_inference_samples(runs_dir, data_dir, sess, image_shape, logits, keep_prob, input_image,
                           test_folder=None, output_dir=None):
    """Write an overlay PNG per test image into output_dir (default: a new folder under runs_dir).

    The test images are test_folder/image_2 (default data_dir/data_road/testing/image_2). Returns the folder.
    """
    test_folder = test_folder or os.path.join(data_dir, 'data_road', 'testing')
    output_dir = output_dir or new_run_dir(runs_dir)
    total = len(list_images(os.path.join(test_folder, 'image_2')))
    outputs = gen_test_output(sess, logits, keep_prob, input_image, test_folder, image_shape)
    for name, image in tqdm(outputs, total=total, desc='test overlays'):
        iio.imwrite(os.path.join(output_dir, name), image)
    return output_dir
