"""Data for the FCN-8s road segmenter: downloads, KITTI-layout batches, outputs (the scenes: synthetic.py)."""
import collections
import hashlib
import http.client
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

import imageio
import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from PIL import Image
from tqdm import tqdm

from metrics import IGNORE, NON_ROAD, ROAD, confidence
from vgg import KERAS_H5

VGG_URL = 'https://s3-us-west-1.amazonaws.com/udacity-selfdrivingcar/vgg.zip'
KITTI_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip'
VGG_FILES = ('saved_model.pb', 'variables/variables.index', 'variables/variables.data-00000-of-00001')
IMAGENET_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/' + KERAS_H5
# The checksum Keras publishes for that file (keras.applications.vgg16, `file_hash`); Keras gives an MD5, and no
# checksum is published for vgg.zip or data_road.zip, which are checked as zips (integrity, expected files).
IMAGENET_MD5 = '64373286793e3c8b2b4e3219cbf3544b'
DOWNLOAD_TIMEOUT_S = 15
DOWNLOAD_ATTEMPTS = 5
EXTRACT_PREFIX = '.extract-'

CATEGORIES = ('um', 'umm', 'uu')
ROAD_COLOR, NON_ROAD_COLOR, INVALID_COLOR = (255, 0, 255), (255, 0, 0), (0, 0, 0)
# Training augmentation: zoom up to 1.25x, brightness +-0.1 (of 1), contrast x(1 +- 0.2), gamma exp(+-0.2).
AUGMENT_MAX_SCALE = 1.25
AUGMENT_BRIGHTNESS = 0.1
AUGMENT_CONTRAST = 0.2
AUGMENT_LOG_GAMMA = 0.2
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_ALPHA = 127 / 255
KITTI_FOLDERS = ('training/image_2', 'training/gt_image_2', 'testing/image_2')
CONVERTIBLE_MODES = ('RGB', 'RGBA', 'L', 'LA', 'P', 'PA', 'CMYK')  # 8-bit modes that convert to RGB exactly
IMAGE_NAME = re.compile(r'^(um|umm|uu)_(\d{6})\.png$')
ROAD_LABEL_NAME = re.compile(r'^(um|umm|uu)_road_(\d{6})\.png$')


class UserError(Exception):
    """A problem with the user's data, weights or flags: reported as a message, never as a traceback."""


# ---------------------------------------------------------------------------------------------- downloads

class DownloadCutOff(OSError):
    """The server closed the connection before the whole body arrived."""


def _http_reason(error):
    if isinstance(error, urllib.error.HTTPError):
        return f'HTTP {error.code} {error.reason}'
    return str(getattr(error, 'reason', None) or error)


def _fetch_once(url, part):
    """One HTTP request appending to `part` from where it ends (HTTP Range), or rewriting it when the server
    ignores the range. Returns the file's size; raises DownloadCutOff when the body ends early."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={offset}-'} if offset else {})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        resumed = offset and response.status == 206 and \
            (response.headers.get('Content-Range') or '').startswith(f'bytes {offset}-')
        if response.status == 206 and not resumed:  # some other range: only a fresh start is safe
            os.remove(part)
            return _fetch_once(url, part)
        offset = offset if resumed else 0
        length = response.headers.get('Content-Length')
        total = offset + int(length) if length else None
        with open(part, 'ab' if resumed else 'wb') as out, \
                tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part)[:-len('.part')]) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b''):
                out.write(chunk)
                bar.update(len(chunk))
            size = out.tell()
    if total is not None and size < total:  # http.client does not raise on a body cut short
        raise DownloadCutOff(f'the connection closed after {size} of {total} bytes')
    return size


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, checksum=None):
    """Fetch url into path with a progress bar (size, speed), resuming a `.part` file left by an earlier
    attempt, and rename it to path only when complete (and matching checksum=(algorithm, hex) if given).

    A connection that drops is resumed up to DOWNLOAD_ATTEMPTS times while each attempt makes progress. Any
    failure is a UserError naming the URL and the error; the `.part` file of a cut-off download is kept for the
    next run to resume, a corrupt one is removed.
    """
    part = path + '.part'
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        before = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            _fetch_once(url, part)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and os.path.exists(part):  # nothing after our .part's end
                if (e.headers.get('Content-Range') or '') == f'bytes */{os.path.getsize(part)}':
                    break  # complete: an earlier run stopped between the last byte and the rename
                os.remove(part)  # longer than the file: start again
                continue
            raise UserError(f'could not download {url}: {_http_reason(e)}') from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            after = os.path.getsize(part) if os.path.exists(part) else 0
            if after <= before or attempt == DOWNLOAD_ATTEMPTS:
                kept = f'; {after} bytes kept in {part}, the next run resumes from there' if after else ''
                raise UserError(f'could not download {url}: {_http_reason(e)}{kept}') from None
            tqdm.write(f'download interrupted ({_http_reason(e)}); resuming at byte {after} '
                       f'(attempt {attempt + 1} of {DOWNLOAD_ATTEMPTS})')
    else:
        raise UserError(f'could not download {url}: the server refused to resume ({DOWNLOAD_ATTEMPTS} attempts)')
    if checksum is not None:
        algorithm, expected = checksum
        actual = file_digest(part, algorithm)
        if actual != expected:
            os.remove(part)
            raise UserError(f'{url} arrived with {algorithm} {actual}, expected {expected}: the download was '
                            'corrupt and has been removed; run again to retry')
    os.replace(part, path)
    return path


def _unsafe_member(info):
    """Why the zip member would land outside the extraction folder (or be a link), or None."""
    name = info.filename
    if name.startswith(('/', '\\')) or re.match(r'^[A-Za-z]:', name):
        return 'an absolute path'
    if '..' in re.split(r'[/\\]', name):
        return 'a path with ".."'
    if stat.S_ISLNK(info.external_attr >> 16):
        return 'a symbolic link'
    return None


def check_zip(zip_path, required=()):
    """Check that zip_path is an intact zip holding every name in `required` (a trailing / means a folder with
    files in it) and no member that would land outside the target folder; UserError naming the problem."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for info in members:
                reason = _unsafe_member(info)
                if reason is not None:
                    raise UserError(f'{zip_path} holds {info.filename!r}, {reason}: refusing to extract it')
            names = {info.filename for info in members}
            holds = lambda r: any(n.startswith(r) and n != r for n in names) if r.endswith('/') else r in names
            missing = [r for r in required if not holds(r)]
            if missing:
                raise UserError(f'{zip_path} does not hold {", ".join(missing)}: it is not the expected archive')
            try:
                bad = archive.testzip()
            except (zlib.error, RuntimeError, NotImplementedError) as e:  # broken, encrypted, exotic member
                raise UserError(f'{zip_path} is corrupt or unreadable ({e.__class__.__name__}: {e})') from None
            if bad is not None:
                raise UserError(f'{zip_path} is corrupt (CRC error in {bad})')
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise UserError(f'{zip_path} is not a valid zip file ({e})') from None


def extract_zip(zip_path, target_dir, required):
    """Check zip_path (check_zip), extract the top-level folders of `required` into a temporary folder inside
    target_dir and move them into target_dir only when all are extracted; return the folders moved. A folder
    that already exists in target_dir is never overwritten (an empty one is replaced); nothing else of the
    archive is extracted."""
    check_zip(zip_path, required)
    wanted = sorted({name.split('/')[0] for name in required})
    os.makedirs(target_dir, exist_ok=True)
    for stale in os.listdir(target_dir):  # ours, left by a run that was killed while extracting
        if stale.startswith(EXTRACT_PREFIX):
            shutil.rmtree(os.path.join(target_dir, stale), ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive, \
            tempfile.TemporaryDirectory(dir=target_dir, prefix=EXTRACT_PREFIX) as tmp:
        members = [info for info in archive.infolist() if info.filename.split('/')[0] in wanted]
        for info in tqdm(members, desc=f'extracting {os.path.basename(zip_path)}', unit='file', leave=False):
            archive.extract(info, tmp)
        moved = []
        for entry in wanted:
            dest = os.path.join(target_dir, entry)
            if os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest):
                os.rmdir(dest)
            if not os.path.lexists(dest):
                os.rename(os.path.join(tmp, entry), dest)
                moved.append(entry)
        return moved


def kitti_is_present(road_dir):
    return all(os.path.isdir(os.path.join(road_dir, f)) for f in KITTI_FOLDERS)


def vgg_is_complete(vgg_dir):
    return all(os.path.isfile(os.path.join(vgg_dir, f)) for f in VGG_FILES)


def vgg_instructions(data_dir, url=VGG_URL):
    return (f'To use the pretrained VGG16, download {url} by hand and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "vgg", "saved_model.pb")} exists.')


def kitti_instructions(data_dir, url=KITTI_URL):
    return ('To train on KITTI Road, register at https://www.cvlibs.net/datasets/kitti/eval_road.php, download '
            f'data_road.zip (base kit, ~450 MB; also served at {url}) and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "data_road", "training", "image_2")} exists.')


def fetch_and_extract(url, data_dir, instructions, required):
    """Download url into data_dir (unless its zip is already there), check it and extract it into data_dir.

    A zip downloaded by this call that fails its checks is removed; one that was already there is left alone.
    """
    os.makedirs(data_dir, exist_ok=True)
    zip_path = os.path.join(data_dir, os.path.basename(urllib.parse.urlsplit(url).path) or 'download.zip')
    downloaded = not os.path.exists(zip_path)
    try:
        if downloaded:
            download(url, zip_path)
        extract_zip(zip_path, data_dir, required)
    except UserError as e:
        if downloaded and os.path.exists(zip_path):
            os.remove(zip_path)
            raise UserError(f'{e}; the downloaded file was removed\n  {instructions}') from None
        advice = '' if downloaded else f'; delete {zip_path} to download it again'
        raise UserError(f'{e}{advice}\n  {instructions}') from None
    return zip_path


def maybe_download_pretrained_vgg(data_dir, url=VGG_URL):
    """Make sure data_dir/vgg holds Udacity's VGG16 SavedModel, downloading and extracting vgg.zip if not."""
    return _download_folder(url, data_dir, 'vgg', 'a VGG16 SavedModel', VGG_FILES, vgg_is_complete,
                            vgg_instructions(data_dir, url))


def maybe_download_kitti(data_dir, url=KITTI_URL):
    """Make sure data_dir/data_road holds KITTI Road, downloading and extracting data_road.zip if not."""
    return _download_folder(url, data_dir, 'data_road', 'KITTI Road', [f + '/' for f in KITTI_FOLDERS],
                            kitti_is_present, kitti_instructions(data_dir, url))


def _download_folder(url, data_dir, name, what, contents, is_complete, instructions):
    """data_dir/name, made complete (is_complete) from the zip at url, whose members name/<contents> it checks."""
    folder = os.path.join(data_dir, name)
    if not is_complete(folder):
        refuse_incomplete(folder, what, contents)
        zip_path = fetch_and_extract(url, data_dir, instructions, [f'{name}/{c}' for c in contents])
        if not is_complete(folder):
            raise UserError(f'extracting {zip_path} did not give {folder} all of {", ".join(contents)}')
    return folder


def refuse_incomplete(folder, what, contents):
    """A folder that exists but lacks what a download would put there is the user's: never write into it."""
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UserError(f'{folder} exists but does not hold {what} (expected {", ".join(contents)}); it was left '
                        'untouched: complete it, or move it away so that it can be downloaded again')


def keras_models_dir():
    """Keras' download cache (`$KERAS_HOME/models`, by default ~/.keras/models)."""
    return os.path.join(os.environ.get('KERAS_HOME') or os.path.join(os.path.expanduser('~'), '.keras'), 'models')


def imagenet_instructions(data_dir):
    return (f'To use the ImageNet VGG16 weights, download {IMAGENET_URL} by hand into {data_dir}/ or '
            f'{keras_models_dir()}/, or pass --imagenet-weights PATH.')


def maybe_download_imagenet_weights(data_dir, path=None, download_allowed=True):
    """The path of Keras' ImageNet VGG16 weights: `path` if given, else the copy in data_dir or in Keras' cache,
    else downloaded into data_dir from Keras' URL (checked against Keras' MD5)."""
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f'--imagenet-weights {path}: ' + ('not a file' if os.path.exists(path) else 'no such file'))
        return path
    for folder in (data_dir, keras_models_dir()):
        if os.path.isfile(os.path.join(folder, KERAS_H5)):
            return os.path.join(folder, KERAS_H5)
    if not download_allowed:
        raise UserError(f'{KERAS_H5} is in neither {data_dir} nor {keras_models_dir()} (--no-download)\n  '
                        + imagenet_instructions(data_dir))
    os.makedirs(data_dir, exist_ok=True)
    try:
        return download(IMAGENET_URL, os.path.join(data_dir, KERAS_H5), ('md5', IMAGENET_MD5))
    except UserError as e:
        raise UserError(f'{e}\n  {imagenet_instructions(data_dir)}') from None


# ------------------------------------------------------------------------------------------ images, labels

def read_image(path, mode=None):
    """The pixels of an image file, converted to PIL `mode` if given (from an 8-bit mode only); an unreadable
    or truncated file is a UserError naming it."""
    try:
        with Image.open(path) as image:
            if mode is None or image.mode == mode:
                return np.asarray(image)
            check_convertible(path, image.mode)
            return np.asarray(image.convert(mode))
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for a bad file (OSError, SyntaxError, ...): same to the user
        raise UserError(f'{path} cannot be read as an image ({e.__class__.__name__}: {e}); replace or remove '
                        'it') from None


def read_rgb(path):
    """An image file as uint8 [H, W, 3] RGB: grayscale and palette images expanded, an alpha channel dropped
    (the dataset summary reports each conversion)."""
    return read_image(path, 'RGB')


def check_convertible(path, mode):
    """PIL converts 16-bit and float images to RGB by clipping (a white picture): refuse them by name."""
    if mode not in CONVERTIBLE_MODES:
        raise UserError(f'{path} is a PIL mode {mode} image (not 8-bit): save it as an 8-bit RGB PNG')


def read_header(path):
    """(mode, (W, H)) of an image file from its header alone; UserError for a file that is not an image."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as e:  # as in read_image
        raise UserError(f'{path} cannot be read as an image ({e.__class__.__name__}: {e}); replace or remove '
                        'it') from None


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
    missing = [(image, label) for image, label in pairs if not os.path.isfile(label)]
    if missing:
        image, label = missing[0]
        lane = label.replace('_road_', '_lane_')
        hint = (f' ({os.path.basename(lane)} is there, but lane labels mark the ego-lane, not the road)'
                if os.path.isfile(lane) else '')
        raise UserError(f'{len(missing)} training image(s) without a road label, e.g. {image} needs {label}{hint}; '
                        'add the labels or remove those images')
    return pairs


def load_pair(image_path, label_path):
    """(uint8 [H, W, 3] image, int8 [H, W] classes) of one training example, checked."""
    image, (label_mode, _) = read_rgb(image_path), read_header(label_path)
    if label_mode != 'RGB':
        raise UserError(f'{label_path} is a PIL mode {label_mode} image: labels must be RGB images in the three '
                        'KITTI colours (labels are never converted: a guessed colour would be a wrong label)')
    gt = read_image(label_path)
    if gt.shape[:2] != image.shape[:2]:
        raise UserError(f'{label_path} is {gt.shape[1]}x{gt.shape[0]} but its image is '
                        f'{image.shape[1]}x{image.shape[0]}: a label must match its image pixel for pixel')
    try:
        return image, decode_label(gt)
    except ValueError as e:
        raise UserError(f'{label_path} has {e}') from None


def scan_dataset(dataset):
    """Check dataset's KITTI layout and pairing and read every image header: a dict for dataset_summary.

    UserError for a missing folder, an empty training set or an image without its road label.
    """
    for folder in KITTI_FOLDERS:
        path = os.path.join(dataset, folder)
        if not os.path.isdir(path):
            nested = os.path.join(dataset, 'data_road')
            hint = f' (did you mean {nested}?)' if kitti_is_present(nested) else ''
            raise UserError(f'{path} does not exist: a KITTI-layout dataset has {", ".join(KITTI_FOLDERS)}{hint}')
    train_dir, test_dir = (os.path.join(dataset, f) for f in ('training', 'testing'))
    pairs = training_pairs(train_dir)
    test_images = list_images(os.path.join(test_dir, 'image_2'))
    scan = {'counts': collections.OrderedDict(), 'sizes': collections.Counter(),
            'converted': collections.Counter(), 'unreadable_tests': [], 'ignored': []}
    scan['counts']['training images'] = collections.Counter(category(os.path.basename(i)) for i, _ in pairs)
    road_labels = [f for f in os.listdir(os.path.join(train_dir, 'gt_image_2')) if ROAD_LABEL_NAME.match(f)]
    scan['counts']['road labels'] = collections.Counter(ROAD_LABEL_NAME.match(f).group(1) for f in road_labels)
    scan['counts']['test images'] = collections.Counter(category(n) for n in test_images)
    for image_path, label_path in pairs:
        mode, size = read_header(image_path)
        label_mode, label_size = read_header(label_path)
        if label_size != size:
            raise UserError(f'{label_path} is {label_size[0]}x{label_size[1]} but its image is {size[0]}x{size[1]}: '
                            'a label must match its image pixel for pixel')
        check_convertible(image_path, mode)
        scan['sizes'][size] += 1
        scan['converted'][mode] += mode != 'RGB'
    for name in test_images:
        try:
            mode, size = read_header(os.path.join(test_dir, 'image_2', name))
            check_convertible(os.path.join(test_dir, 'image_2', name), mode)
        except UserError as e:
            scan['unreadable_tests'].append(str(e))
            continue
        scan['sizes'][size] += 1
        scan['converted'][mode] += mode != 'RGB'
    listed = {os.path.join(train_dir, 'image_2'): {os.path.basename(i) for i, _ in pairs},
              os.path.join(train_dir, 'gt_image_2'): {os.path.basename(label) for _, label in pairs},
              os.path.join(test_dir, 'image_2'): set(test_images)}
    for folder, used in listed.items():
        scan['ignored'] += [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f not in used]
    return scan


def dataset_summary(dataset, source, scan):
    """One screen about the dataset: counts per category, image sizes, conversions, ignored files."""
    lines = [f'dataset {dataset} ({source})', f'{"":18}' + ''.join(f'{c:>7}' for c in CATEGORIES) + '  total']
    for what, counts in scan['counts'].items():
        lines.append(f'{what:18}' + ''.join(f'{counts[c]:7d}' for c in CATEGORIES) + f'{sum(counts.values()):7d}')
    sizes = ', '.join(f'{w}x{h} ({n})' for (w, h), n in scan['sizes'].most_common())
    lines.append(f'image sizes (WxH)  {sizes}')
    for mode, n in sorted(scan['converted'].items()):
        if n:
            lines.append(f'note: {n} image(s) in PIL mode {mode} are converted to RGB'
                         + (' (alpha dropped)' if 'A' in mode else ''))
    lanes = [f for f in scan['ignored'] if '_lane_' in os.path.basename(f)]
    orphans = [f for f in scan['ignored'] if ROAD_LABEL_NAME.match(os.path.basename(f))]
    others = [f for f in scan['ignored'] if f not in lanes and f not in orphans]
    if lanes:
        lines.append(f'ignored: {len(lanes)} lane label(s) (*_lane_*: the ego-lane, not the road)')
    if orphans:
        lines.append(f'ignored: {len(orphans)} road label(s) without their image, e.g. {orphans[0]}')
    if others:
        lines.append(f'ignored: {len(others)} file(s) not named like KITTI\'s, e.g. {others[0]}')
    lines += [f'warning: {e}; this test image will be skipped' for e in scan['unreadable_tests']]
    return '\n'.join(lines)


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


def gen_batch_function(data_folder, image_shape, names=None, seed=0, first_epoch=0, augment=False):
    """Generator factory over data_folder (KITTI `training` layout) at image_shape (H, W).

    Every image and label is read, checked and resized here, once, so that a bad file stops the job before any
    training. get_batches_fn(batch_size) yields (images [B, H, W, 3] raw RGB 0-255, labels [B, H, W, 2]) in a
    new order on every call, seeded by (seed, epoch), epochs counted from first_epoch (a resumed run's).
    `names` restricts it to those image names (the training split). With augment, each example is flipped,
    zoomed and jittered at random, seeded by (seed, epoch, batch) so that a resumed run sees the same batches.
    """
    pairs = training_pairs(data_folder, names)
    images, classes = load_resized(pairs, image_shape)
    epochs = [first_epoch]

    def get_batches_fn(batch_size):
        epoch = epochs[0]
        order = np.random.RandomState([seed, epoch]).permutation(len(pairs))
        epochs[0] += 1
        for number, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start:start + batch_size]
            batch_images, batch_classes = images[batch], classes[batch]
            if augment:
                rng = np.random.RandomState([seed, epoch, number])
                examples = [flip_scale_crop(image, labels, rng) for image, labels in zip(batch_images, batch_classes)]
                batch_images = np.stack([jitter_photometric(image, rng) for image, _ in examples])
                batch_classes = np.stack([labels for _, labels in examples])
            yield batch_images.astype(np.float32), one_hot(batch_classes)

    get_batches_fn.num_images = len(pairs)
    return get_batches_fn


def prefetch(iterable, depth=2):
    """Iterate over iterable in a background thread, up to depth items ahead, so that making the next batch
    (augmentation, one-hot labels) overlaps the training step: numpy, PIL and TensorFlow release the GIL in their
    heavy work. An exception of the producer is raised in the consumer; the thread stops when the consumer does."""
    items, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterable:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:  # handed to the consumer, which raises it (a thread must not swallow it)
            put((False, e))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            more, item = items.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------- inference

def road_probability(logits):
    """Softmax road probability [N*H*W] of 2-D logits, built once per logits tensor (never once per image)."""
    name = logits.op.name + '_road_probability'
    try:
        return logits.graph.get_tensor_by_name(name + ':0')
    except KeyError:
        return tf.identity(tf.nn.softmax(logits)[:, ROAD], name=name)


def predict_probability(predict, image, image_shape):
    """Road probability float32 [h, w] of one uint8 image [h, w, 3]: predict (float32 [1, H, W, 3] raw RGB 0-255
    -> road probability, H*W values in any shape) runs at image_shape (H, W); the result is resized back."""
    prob = predict(resize_image(image, image_shape)[None].astype(np.float32))
    return resize_probability(np.reshape(prob, image_shape), image.shape[:2])


def predict_road(sess, road_prob, keep_prob, image_pl, image, image_shape):
    """Road probability float32 [h, w] of one uint8 [h, w, 3] image, computed at image_shape."""
    return predict_probability(lambda batch: sess.run(road_prob, {image_pl: batch, keep_prob: 1.0}), image,
                               image_shape)


def overlay(image, prob):
    """Green overlay (alpha 127) on uint8 [H, W, 3] where the road probability [H, W] exceeds 0.5."""
    out = image.astype(np.float32)
    road = prob > 0.5
    out[road] = (1 - OVERLAY_ALPHA) * out[road] + OVERLAY_ALPHA * np.array(OVERLAY_COLOR, np.float32)
    return np.round(out).astype(np.uint8)


def test_predictions(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (name, uint8 image [h, w, 3], road probability [h, w]) for every image of data_folder/image_2."""
    road_prob = road_probability(logits)
    image_dir = os.path.join(data_folder, 'image_2')
    for name in list_images(image_dir):
        try:
            image = read_rgb(os.path.join(image_dir, name))
        except UserError as e:  # one bad test image must not cost the trained model's other outputs
            tqdm.write(f'warning: skipped: {e}')
            continue
        yield name, image, predict_road(sess, road_prob, keep_prob, image_pl, image, image_shape)


def gen_test_output(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (name, overlay uint8 [h, w, 3]) for every image of data_folder/image_2 at its own resolution."""
    for name, image, prob in test_predictions(sess, logits, keep_prob, image_pl, data_folder, image_shape):
        yield name, overlay(image, prob)


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
                           test_folder=None, output_dir=None, kitti_dir=None):
    """Write an overlay PNG per test image into output_dir (default: a new folder under runs_dir) and, with
    kitti_dir, its KITTI confidence map kitti_dir/<cat>_road_<id>.png (uint8 road probability x 255).

    The test images are test_folder/image_2 (default data_dir/data_road/testing/image_2). Returns output_dir.
    """
    test_folder = test_folder or os.path.join(data_dir, 'data_road', 'testing')
    output_dir = output_dir or new_run_dir(runs_dir)
    if kitti_dir:
        os.makedirs(kitti_dir, exist_ok=True)
    total = len(list_images(os.path.join(test_folder, 'image_2')))
    predictions = test_predictions(sess, logits, keep_prob, input_image, test_folder, image_shape)
    for name, image, prob in tqdm(predictions, total=total, desc='test overlays'):
        iio.imwrite(os.path.join(output_dir, name), overlay(image, prob))
        if kitti_dir:
            iio.imwrite(os.path.join(kitti_dir, label_name(name)), confidence(prob))
    return output_dir


# ------------------------------------------------------------------------------------------- any images, video

PICTURE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv')


def is_video(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def list_pictures(folder):
    """Sorted PNG/JPEG file names in folder (any names, unlike list_images)."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(PICTURE_EXTENSIONS))


def read_video(path):
    """(frames: iterator of uint8 [h, w, 3], frames per second, estimated frame count) of a video, via ffmpeg."""
    try:
        meta = iio.immeta(path, plugin='FFMPEG')
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f'{path} cannot be read as a video ({type(e).__name__}: {e})') from None
    fps = meta.get('fps') or 0
    if not fps > 0:
        raise UserError(f'{path}: its frame rate is unknown, so its overlay video could not keep it')
    estimate = meta.get('nframes')
    if not np.isfinite(estimate or np.inf):
        estimate = int(round(meta.get('duration', 0) * fps)) or None
    return iio.imiter(path, plugin='FFMPEG'), fps, estimate


def video_writer(path, fps, size):
    """An H.264 mp4 writer (append_data(uint8 [h, w, 3]), close()) at fps for frames of size (h, w), kept at it."""
    # macro_block_size=1: ffmpeg would otherwise scale frames up to a multiple of 16 pixels. yuv420p (what every
    # player reads) halves the colour resolution and so needs even sizes; KITTI's 375x1242 takes yuv444p.
    pixels = 'yuv420p' if size[0] % 2 == 0 and size[1] % 2 == 0 else 'yuv444p'
    return imageio.v2.get_writer(path, format='FFMPEG', mode='I', fps=fps, codec='libx264', macro_block_size=1,
                                 pixelformat=pixels)
