"""Cityscapes (fine annotations), a dataset provider (datasets.py): its layout, image/label pairing by name, and
its classes from the dataset's own reference code, `cityscapesscripts`' labels table: the 19 evaluation classes
(trainIds), everything else ignored; or, for road-only training, road against every labelled pixel, void
ignored."""
import functools
import os

import numpy as np
from cityscapesscripts.helpers.labels import labels as LABELS

from fcn8s import layout
from fcn8s.images import UNKNOWN_ID, check_labelled, decode_ids
from fcn8s.metrics import IGNORE

KIND = 'cityscapes'
DESCRIPTION = ('Cityscapes (leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png, '
               'gtFine/{train,val}/CITY/*_gtFine_labelIds.png)')

IMAGE_SUFFIX, LABEL_SUFFIX = '_leftImg8bit.png', '_gtFine_labelIds.png'
# The 19 classes Cityscapes evaluates, in trainId order, with their colours (cityscapesscripts' table).
EVAL_LABELS = sorted((label for label in LABELS if 0 <= label.trainId < 255), key=lambda label: label.trainId)
CLASSES = tuple(label.name for label in EVAL_LABELS)
PALETTE = tuple(label.color for label in EVAL_LABELS)
ROAD_ID = next(label.id for label in LABELS if label.name == 'road')
VOID_IDS = tuple(label.id for label in LABELS if label.category == 'void')


def detected(folder):
    return not missing_parts(folder)


def missing_parts(folder):
    """What a Cityscapes folder lacks, for the error that lists the layouts."""
    return [part for part in ('leftImg8bit/train', 'gtFine/train') if not os.path.isdir(os.path.join(folder, part))]


def decoder(road_only):
    """labelIds uint8 [H, W] -> class ids int8 [H, W] (IGNORE where not evaluated): a lookup table over the ids
    0-255; ids that are no Cityscapes label map to a sentinel that decode_label reports."""
    table = np.full(256, UNKNOWN_ID, np.int16)
    for label in LABELS:
        if label.id < 0:  # 'license plate' has id -1: never in a labelIds image
            continue
        if road_only:
            table[label.id] = IGNORE if label.id in VOID_IDS else int(label.id == ROAD_ID)
        else:
            table[label.id] = label.trainId if 0 <= label.trainId < 255 else IGNORE
    return table


def decode_label(path, label_ids, table):
    """Class ids int8 [H, W] of a labelIds image; UserError naming the file and the ids that are no label."""
    return decode_ids(path, label_ids, table, 'a Cityscapes *_gtFine_labelIds.png has one channel (label ids)',
                      'no Cityscapes label has them (0-33): is it a *_gtFine_labelIds.png?')


def label_ids(classes):
    """Class ids [H, W] (trainIds) -> the labelIds the Cityscapes benchmark server reads, uint8 [H, W]."""
    table = np.zeros(256, np.uint8)
    for label in EVAL_LABELS:
        table[label.trainId] = label.id
    return table[np.asarray(classes, np.int64) % 256]


def split_pairs(folder, split):
    """[(name, image path, label path or None)] of a split, every city, sorted, paired by name; UserError for a
    train or val image without its label. Test images never have one: Cityscapes withholds them."""
    image_root = os.path.join(folder, 'leftImg8bit', split)
    label_root = os.path.join(folder, 'gtFine', split)
    if not os.path.isdir(image_root):
        return []
    pairs = []
    for city in sorted(c for c in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, c))):
        for file in sorted(os.listdir(os.path.join(image_root, city))):
            if file.endswith(IMAGE_SUFFIX):
                label = os.path.join(label_root, city, file[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
                pairs.append((file, os.path.join(image_root, city, file), label))
    if split == 'test':  # Cityscapes' gtFine/test holds placeholders (no evaluated pixel): never labels
        return [(name, image, None) for name, image, _ in pairs]
    check_labelled(pairs, split)
    return pairs


def category(name):
    """A Cityscapes image's city, from its name (frankfurt_000000_000294_leftImg8bit.png -> frankfurt)."""
    return name.split('_')[0]


# The provider's open_layout(folder, classes, background) and summary(layout, source) (datasets.py): label-id
# images read with this module's pairing and ids, described per city.
open_layout = functools.partial(layout.label_id_layout, KIND, split_pairs=split_pairs, category=category,
                                decode_label=decode_label, decoder=decoder, scene_classes=(CLASSES, PALETTE, label_ids))
summary = functools.partial(layout.split_summary, groups='cities')
