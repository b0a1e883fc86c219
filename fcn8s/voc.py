"""Pascal VOC segmentation as annotation tools export it, a dataset provider (datasets.py): JPEGImages/,
SegmentationClass/ (labelme2voc's SegmentationClassPNG/), ImageSets/Segmentation/*.txt, and the class list:
CVAT's labelmap.txt (masks in its RGB colours), labelme's class_names.txt or VOC's own 21 classes (masks of class
indices, 255 = void). Also what sends predictions back: masks in the run's colours and a labelmap.txt."""
import functools
import os
import re
import shutil

import numpy as np
from PIL import Image

from fcn8s.errors import UserError
from fcn8s.images import check_pair, read_image, read_pair
from fcn8s.layout import ROAD_PALETTE, Layout, split_summary
from fcn8s.metrics import IGNORE, ROAD_CLASSES

KIND = 'voc'
DESCRIPTION = ('Pascal VOC segmentation, as CVAT and labelme2voc export it (JPEGImages/, SegmentationClass/ or '
               'SegmentationClassPNG/, ImageSets/Segmentation/*.txt, labelmap.txt or class_names.txt)')
IMAGE_DIR, LIST_DIR = 'JPEGImages', os.path.join('ImageSets', 'Segmentation')
# VOC's and CVAT's; labelme2voc's palette PNGs (its SegmentationClass/ holds .npy arrays then).
MASK_DIRS = ('SegmentationClass', 'SegmentationClassPNG')
LABELMAP, CLASS_NAMES = 'labelmap.txt', 'class_names.txt'
LABELMAP_HEADER = '# label:color_rgb:parts:actions'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# (PIL modes, what they are) of the masks with a labelmap ('rgb') and without ('index').
MASK_MODES = {'rgb': (('RGB', 'P'), 'RGB or palette PNGs in labelmap.txt\'s colours'),
              'index': (('P', 'L'), 'palette or one-channel 8-bit PNGs of class indices (255 = void)')}
# The class lists of ImageSets/Segmentation, by split; CVAT's default.txt and VOC's trainval.txt hold every image.
LISTS = {'train': ('train.txt',), 'val': ('val.txt',), 'test': ('test.txt',),
         'all': ('default.txt', 'trainval.txt')}
VOID = 255  # VOC's border and "difficult" pixels; labelme2voc's __ignore__
BACKGROUND_NAMES = ('background', '_background_')  # CVAT's and VOC's; labelme2voc's
MAX_CLASSES = 127  # class ids are int8
# VOC's 21 classes (the devkit's VOCopts.classes, with background as index 0); no installed package carries them.
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')


def colormap(count):
    """VOC's colour map (the devkit's labelcolormap, also labelme's): class i's RGB from the bits of i, spread
    over the three channels' high bits. [(r, g, b)] of count classes."""
    colours = []
    for index in range(count):
        rgb, bits = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        colours.append(tuple(rgb))
    return colours


CLASSES, PALETTE = VOC_CLASSES, tuple(colormap(len(VOC_CLASSES)))


def label_ids(classes):
    """Class ids [H, W] -> a VOC mask of class indices, uint8 (written as a palette PNG by write_mask)."""
    return np.asarray(classes, np.uint8)


def detected(folder):
    return not missing_parts(folder)


def missing_parts(folder):
    """What a VOC-style folder lacks, for the error that lists the layouts."""
    missing = [IMAGE_DIR] if not os.path.isdir(os.path.join(folder, IMAGE_DIR)) else []
    if mask_dir(folder) is None:
        missing.append(MASK_DIRS[0])
    return missing


def mask_dir(folder):
    """The folder of an export's PNG masks (the first of MASK_DIRS that holds any), None if it has none."""
    for name in MASK_DIRS:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and any(f.lower().endswith('.png') for f in os.listdir(path)):
            return path
    return None


def read_labelmap(path):
    """[(name, (r, g, b))] of a CVAT labelmap.txt (`name:r,g,b:parts:actions` lines after a `#` header);
    UserError naming the line that does not parse, a name twice or a colour twice."""
    entries = []
    with open(path, encoding='utf-8-sig') as f:  # -sig: a byte-order mark, as Windows' editors write, is no text
        for number, line in enumerate(f, 1):
            if not line.strip() or line.startswith('#'):
                continue
            match = re.fullmatch(r'([^:]+):(\d{1,3}),(\d{1,3}),(\d{1,3})(:.*)?', line.strip())
            if not match or any(int(v) > 255 for v in match.groups()[1:4]):
                raise UserError(f'{path}, line {number}: "{line.strip()}" is not "name:r,g,b::" (CVAT\'s '
                                f'{LABELMAP_HEADER})')
            entries.append((match.group(1).strip(), tuple(int(v) for v in match.groups()[1:4])))
    return _unique(path, entries)


def _unique(path, entries):
    """entries, checked: at least one class, at most MAX_CLASSES, no name or colour twice (UserError)."""
    if not entries:
        raise UserError(f'{path} lists no class')
    if len(entries) > MAX_CLASSES:
        raise UserError(f'{path} lists {len(entries)} classes: at most {MAX_CLASSES} are supported')
    for what, values in (('name', [n for n, _ in entries]), ('colour', [c for _, c in entries])):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise UserError(f'{path} gives two classes the {what} {twice[0]}: each class needs its own {what}')
    return entries


def class_list(folder):
    """(names, colours, 'rgb' or 'index'): labelmap.txt's (masks coloured by it), else class_names.txt's with
    VOC's colour map, else VOC's 21 classes (masks of class indices)."""
    labelmap, names_file = os.path.join(folder, LABELMAP), os.path.join(folder, CLASS_NAMES)
    if os.path.isfile(labelmap):
        entries = read_labelmap(labelmap)
        return tuple(n for n, _ in entries), tuple(c for _, c in entries), 'rgb'
    if os.path.isfile(names_file):
        with open(names_file, encoding='utf-8-sig') as f:
            names = [line.strip() for line in f if line.strip() and line.strip() != '__ignore__']
        entries = _unique(names_file, list(zip(names, colormap(len(names)))))
        return tuple(n for n, _ in entries), tuple(c for _, c in entries), 'index'
    return VOC_CLASSES, PALETTE, 'index'


def label_table(names, colours, form, classes, background):
    """(class names, colours, lookup) of a run on this class list: lookup maps a mask's packed RGB colour
    (form 'rgb') or index ('index') to a class id (IGNORE for void). classes 'road': the class named road against
    every other labelled pixel; background 'ignore': the background class is 'not labelled', not a class."""
    keys = [(r << 16) | (g << 8) | b for r, g, b in colours] if form == 'rgb' else list(range(len(names)))
    ids = np.arange(len(names))
    if background == 'ignore':
        keep = np.array([n.lower() not in BACKGROUND_NAMES for n in names])
        ids = np.where(keep, np.cumsum(keep) - 1, IGNORE)
        names, colours = tuple(n for n, k in zip(names, keep) if k), tuple(c for c, k in zip(colours, keep) if k)
    if classes == 'road':
        road = [i for i, n in enumerate(names) if n.lower() == 'road']
        if not road:
            raise UserError(f'--classes road: no class is named road among {", ".join(names)}')
        ids = np.where(ids == IGNORE, IGNORE, (ids == road[0]).astype(int))
        names, colours = ROAD_CLASSES, ROAD_PALETTE
    lookup = dict(zip(keys, ids.tolist()))
    if form == 'index':
        lookup[VOID] = IGNORE
    return names, colours, lookup


def decode_mask(path, mask, form, lookup):
    """Class ids int8 [H, W] of a mask's pixels ([H, W, 3] RGB or [H, W] indices) through lookup; UserError naming
    the file, each value no class has and its pixel count."""
    keys = (mask[..., 0].astype(np.int32) << 16) | (mask[..., 1].astype(np.int32) << 8) | mask[..., 2] \
        if form == 'rgb' else mask.astype(np.int32)
    values, inverse = np.unique(keys, return_inverse=True)
    known = np.array([v in lookup for v in values.tolist()])
    if not known.all():
        counts = np.bincount(inverse.ravel(), minlength=len(values))
        found = ', '.join(f'{_shown(v, form)}: {counts[i]} px' for i, v in enumerate(values.tolist()) if not known[i])
        where = LABELMAP if form == 'rgb' else f'{CLASS_NAMES} (or VOC\'s 21 classes)'
        raise UserError(f'{path} has {"colours" if form == "rgb" else "class indices"} that {where} does not list: '
                        f'{found}')
    ids = np.array([lookup[v] for v in values.tolist()], np.int8)
    return ids[inverse.reshape(keys.shape)]


def _shown(key, form):
    return f'({key >> 16}, {(key >> 8) & 255}, {key & 255})' if form == 'rgb' else str(key)


def load_pair(form, lookup, image_path, label_path):
    """(uint8 image [H, W, 3], int8 class ids [H, W]) of an image and its mask, checked: RGB or palette masks
    with a labelmap, one-channel or palette masks of indices without; 16-bit and alpha masks refused."""
    image, mask = read_pair(image_path, label_path, *MASK_MODES[form])
    if form == 'rgb' and mask.ndim == 2:  # a palette PNG: its colours are what labelmap.txt lists
        mask = read_image(label_path, 'RGB')
    return image, decode_mask(label_path, mask, form, lookup)


def write_mask(path, classes, palette, rgb=False):
    """A mask of class ids [H, W] in the colours of palette: a palette PNG (reads back as the same class indices
    in VOC's way and as the same colours in CVAT's), or with rgb an RGB PNG as CVAT writes its masks."""
    classes = np.asarray(classes, np.uint8)
    if rgb:
        Image.fromarray(np.asarray(palette, np.uint8)[classes]).save(path)
        return
    image = Image.fromarray(classes, 'P')
    image.putpalette([v for colour in palette for v in colour])
    image.save(path)


def write_export(folder, items, names, palette, rgb=False):
    """A CVAT "Segmentation mask 1.1" export in folder (new, or one being staged): for each (name, image path or None,
    class ids [H, W], subset) of items its mask SegmentationClass/NAME.png (write_mask) and its image in
    JPEGImages/, its name in ImageSets/Segmentation/SUBSET.txt (CVAT's subsets: default, train, val, ...), and
    labelmap.txt. Returns the number of masks."""
    for sub in (IMAGE_DIR, MASK_DIRS[0], LIST_DIR):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    subsets, written = {}, set()
    for name, image, classes, subset in items:
        stem = os.path.splitext(name)[0]
        if stem in written:
            raise UserError(f'two images are named {stem}: an export holds each name once')
        written.add(stem)
        write_mask(os.path.join(folder, MASK_DIRS[0], stem + '.png'), classes, palette, rgb)
        if image:
            shutil.copyfile(image, os.path.join(folder, IMAGE_DIR, stem + os.path.splitext(image)[1].lower()))
        subsets.setdefault(subset, []).append(stem)
    write_lists(folder, subsets, names, palette)
    return sum(map(len, subsets.values()))


def layout_export(layout):
    """(names, palette, items for write_export) of a labelled Layout written as a CVAT export: CVAT's background
    (0, 0, 0) first, standing for the layout's void pixels, its classes after it, its train and val splits as
    subsets. Items are read lazily, one image at a time."""
    def items():
        for subset in ('train', 'val'):
            for name, image, label in getattr(layout, subset) or []:
                _, classes = layout.load_pair(image, label)
                yield name, image, (classes.astype(np.int64) + 1) * (classes != IGNORE), subset

    return ('background', *layout.classes), ((0, 0, 0), *layout.palette), items()


def write_lists(folder, subsets, names, palette):
    """An export's labelmap.txt and ImageSets/Segmentation/SUBSET.txt of {subset: [image names]}; returns the
    paths written."""
    os.makedirs(os.path.join(folder, LIST_DIR), exist_ok=True)
    texts = {os.path.join(LIST_DIR, subset + '.txt'): ''.join(stem + '\n' for stem in stems)
             for subset, stems in subsets.items()}
    texts[LABELMAP] = labelmap_text(names, palette)
    for path, text in texts.items():
        with open(os.path.join(folder, path), 'w', encoding='utf-8') as f:
            f.write(text)
    return [os.path.join(folder, path) for path in texts]


def labelmap_text(names, palette):
    """The text of CVAT's labelmap.txt for a class list: background (0, 0, 0) first, as CVAT writes it."""
    entries = list(zip(names, map(tuple, palette)))
    if not any(n.lower() in BACKGROUND_NAMES for n in names) and (0, 0, 0) not in [c for _, c in entries]:
        entries.insert(0, ('background', (0, 0, 0)))
    return LABELMAP_HEADER + '\n' + ''.join(f'{n}:{r},{g},{b}::\n' for n, (r, g, b) in entries)


def category(name):
    """The sequence a frame belongs to, from its name without the trailing frame number (0001TP_006690 -> 0001TP,
    frame-000123 -> frame; a name that is only a number: one sequence): consecutive frames are held out
    together when the export has no validation list."""
    return re.sub(r'[\W_]*\d+$', '', name) or 'frames'


def _read_list(path):
    """The image names of an ImageSets list file; UserError if it names none."""
    with open(path, encoding='utf-8') as f:
        names = [line.split()[0] for line in f if line.strip()]
    if not names:
        raise UserError(f'{path} is empty: it should list image names, one per line (without extension)')
    return names


def listed_splits(folder):
    """{'train': names, 'val': names or None, 'test': names} from ImageSets/Segmentation; without a train.txt,
    every image of default.txt or trainval.txt trains (val None: the caller splits it); without the folder,
    every image of JPEGImages/. UserError for a list folder that holds none of these files."""
    list_dir = os.path.join(folder, LIST_DIR)
    if not os.path.isdir(list_dir):
        return {'train': sorted(image_files(folder)), 'val': None, 'test': []}
    lists = {split: next((os.path.join(list_dir, f) for f in files if os.path.isfile(os.path.join(list_dir, f))),
                         None) for split, files in LISTS.items()}
    if lists['train'] is None and lists['all'] is None:
        raise UserError(f'{list_dir} holds no train.txt, default.txt or trainval.txt: nothing says which images '
                        'to train on')
    return {'train': _read_list(lists['train'] or lists['all']),
            'val': _read_list(lists['val']) if lists['train'] and lists['val'] else None,
            'test': _read_list(lists['test']) if lists['test'] else []}


def image_files(folder):
    """{name without extension: file name} of the JPEG and PNG images in JPEGImages/, any case of extension."""
    return {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(folder, IMAGE_DIR))
            if f.lower().endswith(IMAGE_EXTENSIONS)}


def _pairs(folder, names, split):
    """[(name, image path, mask path or None)] of a split's names; UserError for an image that is not there, or
    a training or validation image without its mask."""
    masks, images = mask_dir(folder), image_files(folder)
    pairs = []
    for name in names:
        if name not in images:
            raise UserError(f'{name} ({split}) has no image in {os.path.join(folder, IMAGE_DIR)} (.jpg or .png)')
        image = os.path.join(folder, IMAGE_DIR, images[name])
        mask = os.path.join(masks, name + '.png')
        if not os.path.isfile(mask):
            if split != 'test':
                raise UserError(f'{image} has no mask: {mask} is missing; label it or leave it out of the {split} '
                                'list')
            mask = None
        pairs.append((os.path.basename(image), image, mask))
    return pairs


def open_layout(folder, classes='all', background='class'):
    """The Layout of a VOC-style export: its lists (or every image), its class list (class_list), masks read
    by load_pair; background 'ignore' takes the background class as not labelled."""
    names, colours, form = class_list(folder)
    names, colours, lookup = label_table(names, colours, form, classes, background)
    splits = {split: _pairs(folder, listed, split) if listed is not None else None
              for split, listed in listed_splits(folder).items()}
    if not splits['train']:
        raise UserError(f'{folder}: no image to train on')
    return Layout(KIND, folder, names, colours, splits['train'], splits['val'], splits['test'],
                  lambda name: category(os.path.splitext(name)[0]), functools.partial(load_pair, form, lookup),
                  None if classes == 'road' else label_ids, functools.partial(check_pair, *MASK_MODES[form]))


def summary(layout, source):
    """A few lines about a VOC-style export: classes, images per split and sequence."""
    return split_summary(layout, source, 'sequences')
