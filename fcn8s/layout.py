"""A dataset's layout as training, evaluation and inference read it: the one record every provider (kitti.py,
cityscapes.py, camvid.py, voc.py) returns from its open_layout, what providers of label-id images share, and the
validation split of a layout without one of its own."""
import collections
import functools

import numpy as np

from fcn8s.errors import UserError
from fcn8s.images import OVERLAY_COLOR, check_pair, read_pair
from fcn8s.metrics import ROAD_CLASSES

# kind: the provider's KIND; classes: the class names, class id = position (road-only: ROAD_CLASSES); palette:
# their colours for overlays; train, val, test: [(name, image path, label path or None)] (val None: split from
# train by the caller); category(name): the drive, city or sequence an image belongs to; load_pair(image path,
# label path) -> (uint8 image [H, W, 3], int8 class ids [H, W], IGNORE where not evaluated), checked;
# encode(class ids [H, W]) -> the label image the dataset's benchmark reads (None for a road model, whose outputs
# are KITTI's confidence maps); check_pair(image path, label path): load_pair's checks from the files' headers
# alone (images.check_pair), for datasets too large to decode before training.
Layout = collections.namedtuple('Layout', 'kind root classes palette train val test category load_pair encode '
                                          'check_pair')
LABEL_ID_MODES = (('L', 'P'), 'one-channel images of label ids')  # (PIL modes, what they are) of label-id images
ROAD_PALETTE = ((0, 0, 0), OVERLAY_COLOR)
SPLITS = ('train', 'val', 'test')
VAL_STRETCH = 10  # frames: the longest stretch of consecutive frames held out together for validation


def load_label_pair(decode_label, table, image_path, label_path):
    """(uint8 image [H, W, 3], int8 class ids [H, W]) of an image and its one-channel label image, checked."""
    image, label_ids = read_pair(image_path, label_path, *LABEL_ID_MODES)
    return image, decode_label(label_path, label_ids, table)


def label_id_layout(kind, folder, classes='all', background='class', *, split_pairs, category, decode_label, decoder,
                    scene_classes):
    """The Layout of a dataset whose labels are one-channel images of ids (Cityscapes, CamVid): split_pairs(folder,
    split) lists each split, decode_label with decoder(road_only)'s table reads a label; classes 'all' has
    scene_classes (names, palette, encode), 'road' is road against the rest (background: VOC-style exports'
    only). A provider's open_layout is this function with its own keywords."""
    splits = {split: split_pairs(folder, split) for split in SPLITS}
    if not splits['train']:
        raise UserError(f'{folder}: its {kind} train split holds no images: nothing to train on')
    road_only = classes == 'road'
    names, palette, encode = (ROAD_CLASSES, ROAD_PALETTE, None) if road_only else scene_classes
    return Layout(kind, folder, names, palette, splits['train'], splits['val'] or None, splits['test'], category,
                  functools.partial(load_label_pair, decode_label, decoder(road_only)), encode,
                  functools.partial(check_pair, *LABEL_ID_MODES))


def split_summary(layout, source, groups):
    """A few lines about a layout with splits of its own: classes, images per split and per category (groups:
    what a category is called, e.g. 'cities')."""
    lines = [f'dataset {layout.root} ({source}, {layout.kind}, {len(layout.classes)} classes: '
             f'{", ".join(layout.classes)})']
    for split in SPLITS:
        examples = getattr(layout, split) or []
        categories = collections.Counter(layout.category(name) for name, _, _ in examples)
        labelled = sum(label is not None for _, _, label in examples)
        lines.append(f'{split:6} {len(examples):6d} images ({labelled} labelled) in {len(categories)} {groups}')
    return '\n'.join(lines)


def labelled_pairs(layout, names, flag):
    """[(image path, label path)] of the named training or validation images of a layout; UserError (for flag)
    naming an image that is not there any more or has no label."""
    pairs = {name: (image, label) for name, image, label in layout.train + (layout.val or [])}
    missing = [name for name in names if name not in pairs or pairs[name][1] is None]
    if missing:
        raise UserError(f'{flag}: {layout.root} has changed: {missing[0]} ({len(missing)} of {len(names)} images) '
                        'is no longer there with its label')
    return [pairs[name] for name in names]


def split_train_val(names, val_fraction, seed, category_of):
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
