"""KITTI Road: its layout and file names, ground-truth colours, image/label pairing by name, the checks and
summary of a dataset folder, the validation split, and the download of data_road.zip."""
import collections
import os
import re

import numpy as np

from fcn8s import downloads
from fcn8s.errors import UserError
from fcn8s.images import check_convertible, read_header, read_pair
from fcn8s.metrics import IGNORE, NON_ROAD, ROAD
from fcn8s.paths import KITTI_URL

KITTI_FOLDERS = ('training/image_2', 'training/gt_image_2', 'testing/image_2')
CATEGORIES = ('um', 'umm', 'uu')
ROAD_COLOR, NON_ROAD_COLOR, INVALID_COLOR = (255, 0, 255), (255, 0, 0), (0, 0, 0)
VAL_STRETCH = 10  # frames: the longest stretch of consecutive frames held out together for validation
IMAGE_NAME = re.compile(r'^(um|umm|uu)_(\d{6})\.png$')
ROAD_LABEL_NAME = re.compile(r'^(um|umm|uu)_road_(\d{6})\.png$')


def kitti_is_present(road_dir):
    return all(os.path.isdir(os.path.join(road_dir, f)) for f in KITTI_FOLDERS)


def kitti_instructions(data_dir, url=KITTI_URL):
    return ('To train on KITTI Road, register at https://www.cvlibs.net/datasets/kitti/eval_road.php, download '
            f'data_road.zip (base kit, ~450 MB; also served at {url}) and unzip it in {data_dir}/ so that '
            f'{os.path.join(data_dir, "data_road", "training", "image_2")} exists.')


def maybe_download_kitti(data_dir, url=KITTI_URL):
    """Make sure data_dir/data_road holds KITTI Road, downloading and extracting data_road.zip if not."""
    return downloads.download_folder(url, data_dir, 'data_road', 'KITTI Road', [f + '/' for f in KITTI_FOLDERS],
                            kitti_is_present, kitti_instructions(data_dir, url))


def _packed(rgb):
    """uint8 [..., 3] colours -> int32 [...] 0xRRGGBB: one comparison per pixel instead of three."""
    rgb = np.asarray(rgb, np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_label(gt):
    """KITTI ground truth uint8 [H, W, 3] -> class ids int8 [H, W]: ROAD, NON_ROAD or IGNORE (black).

    Any other colour raises ValueError naming the colours and their pixel counts.
    """
    gt = np.asarray(gt)[..., :3]
    packed = _packed(gt)
    classes = np.full(gt.shape[:2], IGNORE, np.int8)
    classes[packed == _packed(ROAD_COLOR)] = ROAD
    classes[packed == _packed(NON_ROAD_COLOR)] = NON_ROAD
    unknown = (classes == IGNORE) & (packed != _packed(INVALID_COLOR))
    if unknown.any():
        colors, counts = np.unique(gt[unknown], axis=0, return_counts=True)
        found = ', '.join(f'{tuple(int(v) for v in c)}: {n} px' for c, n in zip(colors, counts))
        raise ValueError(f'colours other than road {ROAD_COLOR}, non-road {NON_ROAD_COLOR} and invalid '
                         f'{INVALID_COLOR}: {found}')
    return classes


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
    image, gt = read_pair(image_path, label_path, ('RGB',), 'RGB images in the three KITTI colours')
    try:
        return image, decode_label(gt)
    except ValueError as e:
        raise UserError(f'{label_path} has {e}') from None


def scan_dataset(dataset):
    """Check dataset's KITTI layout and pairing and read every image header: a dict for dataset_summary, with the
    training pairs [(image path, label path)] and the test image names it listed.

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
            'converted': collections.Counter(), 'unreadable_tests': [], 'ignored': [], 'pairs': pairs,
            'test_images': test_images}
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


def split_train_val(names, val_fraction, seed, category_of=category):
    """Seeded split of image names into (train, val), stratified by category (category_of a name), both sorted.

    The validation images of a category are whole stretches of up to VAL_STRETCH consecutive frames (names
    sorted): neighbouring frames of a drive look alike, so a split of single random frames would score the
    model on near-copies of its training images and overstate its quality.
    """
    rng = np.random.RandomState(seed)
    train, val = [], []
    for cat in sorted({category_of(n) for n in names}):
        members = sorted(n for n in names if category_of(n) == cat)
        n_val = int(round(len(members) * val_fraction))
        stretch = max(1, min(VAL_STRETCH, n_val))
        blocks = [members[i:i + stretch] for i in range(0, len(members), stretch)]
        held = []
        for block in rng.permutation(len(blocks)):
            if len(held) >= n_val:
                break
            held += blocks[block][:n_val - len(held)]
        val += held
        held_names = set(held)
        train += [n for n in members if n not in held_names]
    return sorted(train), sorted(val)
