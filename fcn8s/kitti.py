"""KITTI Road, a dataset provider (datasets.py): its layout and file names, ground-truth colours, image/label
pairing by name, the checks and summary of a dataset folder, and the download of data_road.zip."""
import collections
import functools
import os
import re

import numpy as np

from fcn8s import downloads
from fcn8s.errors import UserError
from fcn8s.images import check_convertible, check_pair, read_header, read_pair
from fcn8s.layout import ROAD_PALETTE, Layout
from fcn8s.metrics import IGNORE, NON_ROAD, ROAD, ROAD_CLASSES
from fcn8s.paths import KITTI_URL

KIND = 'kitti'
DESCRIPTION = 'KITTI Road (training/image_2, training/gt_image_2, testing/image_2)'
CLASSES, PALETTE = ROAD_CLASSES, ROAD_PALETTE
label_ids = None  # a road model writes KITTI's confidence maps, not label images
KITTI_FOLDERS = ('training/image_2', 'training/gt_image_2', 'testing/image_2')
CATEGORIES = ('um', 'umm', 'uu')
LABEL_MODES = (('RGB',), 'RGB images in the three KITTI colours')  # (PIL modes, what they are) of its labels
ROAD_COLOR, NON_ROAD_COLOR, INVALID_COLOR = (255, 0, 255), (255, 0, 0), (0, 0, 0)
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
    image, gt = read_pair(image_path, label_path, *LABEL_MODES)
    try:
        return image, decode_label(gt)
    except ValueError as e:
        raise UserError(f'{label_path} has {e}') from None


def detected(folder):
    """Whether folder is meant as KITTI Road: it has training/ (or data_road/, which check_folders names)."""
    return any(os.path.isdir(os.path.join(folder, f)) for f in ('training', 'data_road'))


def missing_parts(folder):
    """What a KITTI Road folder lacks, for the error that lists the layouts."""
    return [f for f in KITTI_FOLDERS if not os.path.isdir(os.path.join(folder, f))]


def check_folders(dataset, folders=KITTI_FOLDERS):
    """UserError naming the first of folders that dataset lacks (and data_road/ inside it, if that is KITTI)."""
    for folder in folders:
        path = os.path.join(dataset, folder)
        if not os.path.isdir(path):
            nested = os.path.join(dataset, 'data_road')
            hint = f' (did you mean {nested}?)' if kitti_is_present(nested) else ''
            raise UserError(f'{path} does not exist: a KITTI-layout dataset has {", ".join(KITTI_FOLDERS)}{hint}')


def open_layout(folder, classes='road', background='class'):
    """The Layout of a KITTI Road folder: its training pairs and whatever test images it has (evaluation needs
    none; summary checks them for training). KITTI is road alone, whatever classes and background ask."""
    check_folders(folder, KITTI_FOLDERS[:2])
    test_dir = os.path.join(folder, 'testing', 'image_2')
    test_names = list_images(test_dir) if os.path.isdir(test_dir) else []
    return Layout(KIND, folder, ROAD_CLASSES, ROAD_PALETTE,
                  [(os.path.basename(image), image, label) for image, label in
                   training_pairs(os.path.join(folder, 'training'))], None,
                  [(name, os.path.join(test_dir, name), None) for name in test_names], category, load_pair, None,
                  functools.partial(check_pair, *LABEL_MODES))


def summary(layout, source):
    """One screen about a KITTI Road folder to train on, after checking its three folders and every image header
    (scan_dataset)."""
    check_folders(layout.root)
    return dataset_summary(layout.root, source, scan_dataset(layout))


def scan_dataset(layout):
    """Read every image header of a KITTI Road layout: a dict for dataset_summary. UserError for a label whose
    size differs from its image's, or an image that cannot become RGB."""
    dataset = layout.root
    train_dir, test_dir = (os.path.join(dataset, f) for f in ('training', 'testing'))
    pairs = [(image, label) for _, image, label in layout.train]
    test_images = [name for name, _, _ in layout.test]
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
