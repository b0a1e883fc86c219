"""The validation split of a dataset without one of its own: stretches of consecutive frames held out per
category (KITTI's um/umm/uu, a CamVid sequence), so that validation never scores near-copies of training frames."""
import numpy as np

VAL_STRETCH = 10  # frames: the longest stretch of consecutive frames held out together for validation


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
