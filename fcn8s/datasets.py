"""Where the training data comes from and which provider reads it: a --dataset folder of the user's in one of the
layouts the project reads (PROVIDERS: KITTI Road, Cityscapes, CamVid, VOC-style exports), KITTI Road in the data folder (downloaded
when missing), or, offline, road scenes generated in KITTI's layout (the fallback, said loudly)."""
import colorsys
import os
import time
import zipfile

import numpy as np

from fcn8s import camvid, cityscapes, downloads, files, kitti, synthetic, voc
from fcn8s.errors import UserError, warn
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


# ------------------------------------------------------------------------------------------- the layouts

# The dataset providers, each a module with KIND, DESCRIPTION, CLASSES, PALETTE, label_ids, detected(folder),
# missing_parts(folder), open_layout(folder, classes, background) -> Layout and summary(layout, source) -> text: a
# new layout is one new module, named here. Detection tries them in this order (KITTI's is the loosest).
PROVIDERS = (cityscapes, camvid, voc, kitti)


def provider(folder):
    """The provider whose layout folder has; UserError naming every layout and what folder lacks of each."""
    for candidate in PROVIDERS:
        if candidate.detected(folder):
            return candidate
    raise UserError(f'{folder} is in none of the layouts this project reads: '
                    + '; '.join(f'{p.DESCRIPTION}: no {", ".join(p.missing_parts(folder))}' for p in PROVIDERS))


def open_layout(folder, classes='all', background='class'):
    """The Layout of a dataset folder; classes 'road' makes any layout a road / non-road one (void ignored);
    background 'ignore' takes a VOC-style export's background class as not labelled."""
    return provider(folder).open_layout(folder, classes, background)


def open_training_layout(folder, classes, background, source):
    """(Layout, a few lines about it) of the dataset a run trains on, listed and checked once by its provider."""
    reader = provider(folder)
    layout = reader.open_layout(folder, classes, background)
    return layout, reader.summary(layout, source)


def class_table(kind, num_classes, names=None, palette=None):
    """(class names, palette, encode) of a scene-parsing model of num_classes classes trained on a layout of kind:
    names and palette as its run recorded them (config.json) where they fit, else the layout's own; for a kind
    of None (unknown, as for a model file outside its run folder) told by the count, 19 Cityscapes', 11 CamVid's;
    a count of none gets numbered classes, colours spread over the hue circle, and raw ids."""
    if names and palette and len(names) == len(palette) == num_classes:
        encode = next((reader.label_ids for reader in PROVIDERS if reader.KIND == kind and reader.label_ids),
                      lambda classes: np.asarray(classes, np.uint8))
        return tuple(names), tuple(tuple(c) for c in palette), encode
    for reader in PROVIDERS:
        if reader.label_ids and kind in (None, reader.KIND) and len(reader.CLASSES) == num_classes:
            return reader.CLASSES, reader.PALETTE, reader.label_ids
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.8, 0.9)) for h in hues]
    return tuple(f'class {i}' for i in range(num_classes)), palette, lambda classes: np.asarray(classes, np.uint8)
