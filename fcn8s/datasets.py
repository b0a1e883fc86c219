"""Where the training data comes from and how it is laid out: a --dataset folder of the user's in one of the three
layouts the project reads (KITTI Road, Cityscapes, CamVid), KITTI Road in the data folder (downloaded when
missing), or, offline, road scenes generated in KITTI's layout (the fallback, said loudly)."""
import collections
import colorsys
import functools
import os
import time
import zipfile

import numpy as np

from fcn8s import camvid, cityscapes, downloads, files, kitti, synthetic
from fcn8s.errors import UserError, warn
from fcn8s.images import OVERLAY_COLOR, read_pair
from fcn8s.metrics import ROAD_CLASSES
from fcn8s.paths import SYNTHETIC_DIR


def resolve(dataset, data_dir, kitti_url, download, synthetic_images, wait_s=0):
    """(dataset folder, source) where source is 'user' (dataset, a folder the user named: never replaced), 'kitti'
    (data_dir/data_road, downloaded from kitti_url if download allows) or 'synthetic' (data_dir/synthetic_road,
    generated once with synthetic_images = (training, test) images). With wait_s (a worker of a cluster, which
    never downloads or generates), a missing KITTI is waited for, or the generated scenes, whichever appears first
    within wait_s seconds: the chief downloads or generates into a data_dir they share, and a worker whose own
    data_dir holds neither stops with an error instead of training on other data than the chief's.
    """
    if dataset:
        if os.path.isfile(dataset):
            raise UserError(f'--dataset {dataset} is a file: it must be a dataset folder'
                            + (' (unzip it first)' if zipfile.is_zipfile(dataset) else ''))
        if not os.path.isdir(dataset):
            raise UserError(f'--dataset {dataset}: no such folder')
        return dataset, 'user'
    road_dir = os.path.join(data_dir, 'data_road')
    if not kitti.kitti_is_present(road_dir):  # an incomplete KITTI folder is to be fixed, not replaced
        downloads.refuse_incomplete(road_dir, 'KITTI Road', kitti.KITTI_FOLDERS)
    if wait_s:
        return wait_for_data(road_dir, os.path.join(data_dir, SYNTHETIC_DIR), wait_s)
    try:
        if not download and not kitti.kitti_is_present(road_dir):
            raise UserError(f'it is not in {road_dir} (--no-download)\n  '
                            + kitti.kitti_instructions(data_dir, kitti_url))
        return kitti.maybe_download_kitti(data_dir, kitti_url), 'kitti'
    except UserError as e:
        folder = os.path.join(data_dir, SYNTHETIC_DIR)
        warn(f'KITTI Road is not available: {e}\nTraining on generated road scenes instead: {folder} '
             f'({synthetic_images[0]} training, {synthetic_images[1]} test images). See docs/data-and-weights.md.')
        if not os.path.isdir(folder):
            with files.writing(data_dir, 'the generated road scenes'):
                synthetic.make_synthetic_kitti(folder, *synthetic_images, seed=0)
        return folder, 'synthetic'


def wait_for_data(road_dir, synthetic_dir, wait_s):
    """(folder, source) of KITTI Road in road_dir or the generated scenes in synthetic_dir, whichever is there
    first within wait_s seconds (the chief renames either into place whole); UserError naming both otherwise."""
    deadline = time.time() + wait_s
    while True:
        if kitti.kitti_is_present(road_dir):
            return road_dir, 'kitti'
        if os.path.isdir(synthetic_dir):
            return synthetic_dir, 'synthetic'
        if time.time() >= deadline:
            raise UserError(f'this worker has no training data: neither KITTI Road ({road_dir}) nor the generated '
                            f'scenes ({synthetic_dir}) appeared within {wait_s:g} s (--worker-timeout). Put the '
                            'chief\'s dataset on every machine (or give every worker the same --dataset)')
        time.sleep(1)


# ------------------------------------------------------------------------------------------- three layouts

# A dataset folder as the training reads it. kind: 'kitti', 'cityscapes' or 'camvid'; classes: the class names,
# class id = position (road-only: ('non-road', 'road')); palette: their colours for overlays; train, val, test:
# [(name, image path, label path or None)] (val None: split from train by the caller); category(name): the
# drive, city or sequence an image belongs to; load_pair(image path, label path) -> (uint8 image [H, W, 3], int8
# class ids [H, W], IGNORE where not evaluated), checked; encode(class ids [H, W]) -> the label image the
# dataset's benchmark reads (None for a road model, whose outputs are KITTI's confidence maps).
Layout = collections.namedtuple('Layout', 'kind root classes palette train val test category load_pair encode')
ROAD_PALETTE = ((0, 0, 0), OVERLAY_COLOR)

KINDS = {'kitti': 'KITTI Road (training/image_2, training/gt_image_2, testing/image_2)',
         'cityscapes': 'Cityscapes (leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png, '
                       'gtFine/{train,val}/CITY/*_gtFine_labelIds.png)',
         'camvid': 'CamVid as SegNet distributes it (train/, trainannot/, val/, valannot/, test/, testannot/)'}


def detect(folder):
    """'kitti', 'cityscapes' or 'camvid' by the folders there; UserError naming the three layouts and what each
    lacks."""
    if cityscapes.is_cityscapes(folder):
        return 'cityscapes'
    if camvid.is_camvid(folder):
        return 'camvid'
    if os.path.isdir(os.path.join(folder, 'training')) or os.path.isdir(os.path.join(folder, 'data_road')):
        return 'kitti'  # kitti.scan_dataset names what is missing of it
    lacks = {'kitti': [f for f in kitti.KITTI_FOLDERS if not os.path.isdir(os.path.join(folder, f))],
             'cityscapes': cityscapes.missing_parts(folder), 'camvid': camvid.missing_parts(folder)}
    raise UserError(f'{folder} is in none of the layouts this project reads: '
                    + '; '.join(f'{KINDS[kind]}: no {", ".join(parts)}' for kind, parts in lacks.items()))


def open_training_layout(folder, classes, source):
    """(Layout, a few lines about it) of the dataset a run trains on, its folder listed and checked once: KITTI's
    three folders, pairs and image headers (kitti.scan_dataset), or the splits of Cityscapes or CamVid."""
    if detect(folder) != 'kitti':
        layout = open_layout(folder, classes)
        return layout, summary(layout, source)
    scan = kitti.scan_dataset(folder)
    return kitti_layout(folder, scan['pairs'], scan['test_images']), kitti.dataset_summary(folder, source, scan)


def kitti_layout(folder, pairs, test_names):
    """The Layout of a KITTI Road folder with these training pairs [(image path, label path)] and test images."""
    test_dir = os.path.join(folder, 'testing', 'image_2')
    return Layout('kitti', folder, ROAD_CLASSES, ROAD_PALETTE,
                  [(os.path.basename(image), image, label) for image, label in pairs], None,
                  [(name, os.path.join(test_dir, name), None) for name in test_names], kitti.category,
                  kitti.load_pair, None)


def open_layout(folder, classes='all'):
    """The Layout of a dataset folder; classes 'road' makes any layout a road / non-road one (void ignored)."""
    kind = detect(folder)
    if kind == 'kitti':  # evaluate needs no test images; training checks them (open_training_layout)
        test_dir = os.path.join(folder, 'testing', 'image_2')
        return kitti_layout(folder, kitti.training_pairs(os.path.join(folder, 'training')),
                            kitti.list_images(test_dir) if os.path.isdir(test_dir) else [])
    module = cityscapes if kind == 'cityscapes' else camvid
    road_only = classes == 'road'
    table = module.decoder(road_only)
    splits = {split: module.split_pairs(folder, split) for split in ('train', 'val', 'test')}
    if not splits['train']:
        raise UserError(f'{folder}: its {kind} train split holds no images: nothing to train on')
    return Layout(kind, folder, ROAD_CLASSES if road_only else module.CLASSES,
                  ROAD_PALETTE if road_only else module.PALETTE, splits['train'], splits['val'] or None,
                  splits['test'], module.category, functools.partial(load_label_pair, module.decode_label, table),
                  None if road_only else module.label_ids)


def labelled_pairs(layout, names, flag):
    """[(image path, label path)] of the named training or validation images of a layout; UserError (for flag)
    naming an image that is not there any more or has no label."""
    pairs = {name: (image, label) for name, image, label in layout.train + (layout.val or [])}
    missing = [name for name in names if name not in pairs or pairs[name][1] is None]
    if missing:
        raise UserError(f'{flag}: {layout.root} has changed: {missing[0]} ({len(missing)} of {len(names)} images) '
                        'is no longer there with its label')
    return [pairs[name] for name in names]


def load_label_pair(decode_label, table, image_path, label_path):
    """(uint8 image [H, W, 3], int8 class ids [H, W]) of an image and its one-channel label image, checked."""
    image, label_ids = read_pair(image_path, label_path, ('L', 'P'), 'one-channel images of label ids')
    return image, decode_label(label_path, label_ids, table)


def summary(layout, source):
    """A few lines about a Cityscapes or CamVid layout: classes, images per split and category."""
    lines = [f'dataset {layout.root} ({source}, {layout.kind}, {len(layout.classes)} classes: '
             f'{", ".join(layout.classes)})']
    for split in ('train', 'val', 'test'):
        examples = getattr(layout, split) or []
        categories = collections.Counter(layout.category(name) for name, _, _ in examples)
        labelled = sum(label is not None for _, _, label in examples)
        lines.append(f'{split:6} {len(examples):6d} images ({labelled} labelled) in {len(categories)} '
                     f'{"cities" if layout.kind == "cityscapes" else "sequences"}')
    return '\n'.join(lines)


def class_table(kind, num_classes):
    """(class names, palette, encode) of a scene-parsing model of num_classes classes trained on a layout of kind
    (None: unknown, as for a model file outside its run folder: told by the count, 19 Cityscapes', 11 CamVid's);
    a count of neither gets numbered classes, colours spread over the hue circle, and raw ids."""
    for name, module in (('cityscapes', cityscapes), ('camvid', camvid)):
        if kind in (None, name) and len(module.CLASSES) == num_classes:
            return module.CLASSES, module.PALETTE, module.label_ids
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.8, 0.9)) for h in hues]
    return tuple(f'class {i}' for i in range(num_classes)), palette, lambda classes: np.asarray(classes, np.uint8)
