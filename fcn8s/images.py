"""Image files and pixels: reading and checking them, resizing (bilinear for pictures, nearest neighbour for
labels), the green road overlay, class-coloured overlays and their legend."""
import os

import numpy as np
from PIL import Image, ImageDraw

from fcn8s.errors import UserError

CONVERTIBLE_MODES = ('RGB', 'RGBA', 'L', 'LA', 'P', 'PA', 'CMYK')  # 8-bit modes that convert to RGB exactly
# 16-bit grey PNGs, as some cameras and dataset exports write them, open in these modes ('I': as 32-bit integers);
# they are read scaled to 8 bits (value >> 8), as Pillow itself reads 16-bit RGB PNGs (as mode RGB).
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I')
PICTURE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
OVERLAY_COLOR = (0, 255, 0)
OVERLAY_ALPHA_255 = 127  # the road overlay's opacity, of 255 (Udacity's helper: [0, 255, 0, 127])
CLASS_ALPHA = 0.5  # scene-parsing overlays: half the picture, half its classes' colours


def _unreadable(path, error):
    return UserError(f'{path} cannot be read as an image ({error.__class__.__name__}: {error}); replace or remove '
                     'it')


def read_image(path, mode=None):
    """The pixels of an image file, converted to PIL `mode` if given (from an 8-bit mode, or to RGB from 16-bit
    grey, scaled to 8 bits); an unreadable or truncated file is a UserError naming it."""
    try:
        with Image.open(path) as image:
            if mode is None or image.mode == mode:
                return np.asarray(image)
            check_convertible(path, image.mode)
            if image.mode in SIXTEEN_BIT_MODES and mode == 'RGB':
                return np.repeat(_eight_bits(path, np.asarray(image))[..., None], 3, axis=-1)
            return np.asarray(image.convert(mode))
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for a bad file (OSError, SyntaxError, ...): same to the user
        raise _unreadable(path, e) from None


def read_rgb(path):
    """An image file as uint8 [H, W, 3] RGB: grayscale and palette images expanded, an alpha channel dropped
    (the dataset summary reports each conversion)."""
    return read_image(path, 'RGB')


def check_convertible(path, mode):
    """PIL converts 16-bit and float images to RGB by clipping (a white picture): 16-bit grey is scaled here
    instead (read_image), other modes are refused by name."""
    if mode not in CONVERTIBLE_MODES + SIXTEEN_BIT_MODES:
        raise UserError(f'{path} is a PIL mode {mode} image (neither 8-bit nor 16-bit grey): save it as an 8-bit RGB '
                        'PNG')


def _eight_bits(path, pixels):
    """uint8 of 16-bit grey pixels (the top 8 bits); UserError for values beyond 16 bits (a 32-bit image)."""
    if pixels.size and (pixels.min() < 0 or pixels.max() > 0xFFFF):
        raise UserError(f'{path} holds values beyond 16 bits ({pixels.min()} to {pixels.max()}): save it as an '
                        '8-bit RGB PNG')
    return (pixels.astype(np.uint32) >> 8).astype(np.uint8)


def read_header(path):
    """(mode, (W, H)) of an image file from its header alone; UserError for a file that is not an image."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as e:  # as in read_image
        raise _unreadable(path, e) from None


def check_pair(label_modes, labels_are, image_path, label_path):
    """UserError, from the two files' headers alone, for an image that is not one or cannot become RGB, or a
    label that is not one of the PIL label_modes (labels_are says what they must be; labels are never converted:
    a guessed colour or id would be a wrong label) or has another size than its image."""
    (image_mode, size), (mode, label_size) = read_header(image_path), read_header(label_path)
    check_convertible(image_path, image_mode)
    if mode not in label_modes:
        raise UserError(f'{label_path} is a PIL mode {mode} image: labels must be {labels_are} (labels are never '
                        'converted: a guessed value would be a wrong label)')
    if label_size != size:
        raise UserError(f'{label_path} is {label_size[0]}x{label_size[1]} but its image is {size[0]}x{size[1]}: '
                        'a label must match its image pixel for pixel')


def read_pair(image_path, label_path, label_modes, labels_are):
    """(uint8 RGB image [H, W, 3], its label's pixels) of an image and its label, checked (check_pair)."""
    check_pair(label_modes, labels_are, image_path, label_path)
    return read_rgb(image_path), read_image(label_path)


UNKNOWN_ID = -2  # in a label table: an id that is no label of the dataset


def decode_ids(path, label_ids, table, one_channel, known):
    """Class ids int8 [H, W] of a one-channel label image, through table (ids 0-255 -> class ids, IGNORE for
    void, UNKNOWN_ID for ids that are no label); UserError naming the file: one_channel says what it should
    hold, known which ids are labels."""
    if label_ids.ndim != 2:
        raise UserError(f'{path}: {one_channel}, this one has {label_ids.shape[-1]}')
    classes = table[label_ids]
    if (classes == UNKNOWN_ID).any():
        unknown = sorted(int(i) for i in np.unique(label_ids[classes == UNKNOWN_ID]))
        raise UserError(f'{path} has label ids {unknown}: {known}')
    return classes.astype(np.int8)


def list_pictures(folder):
    """Sorted PNG/JPEG file names in folder (any names)."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(PICTURE_EXTENSIONS))


def check_labelled(pairs, split):
    """UserError naming the first of a split's pairs [(name, image path, label path)] whose label file is
    missing, and how many are."""
    missing = [(image, label) for _, image, label in pairs if not os.path.isfile(label)]
    if missing:
        raise UserError(f'{missing[0][0]} has no label: {missing[0][1]} is missing ({len(missing)} of {len(pairs)} '
                        f'{split} images lack theirs)')


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


def overlay(image, prob):
    """Green overlay (alpha 127) on uint8 [H, W, 3] where the road probability [H, W] exceeds 0.5."""
    # Each channel's blend round((128 x + 127 c) / 255) = (128 x + 127 c + 127) // 255 (an integer / 255 is never
    # x.5) as a table that Pillow applies, then picks where road: far cheaper per video frame than the same blend in
    # numpy (docs/measurements.md).
    keep = 255 - OVERLAY_ALPHA_255
    table = [(keep * x + OVERLAY_ALPHA_255 * c + 127) // 255 for c in OVERLAY_COLOR for x in range(256)]
    picture = Image.fromarray(image)
    road = Image.fromarray((prob > 0.5).view(np.uint8) * np.uint8(255))
    return np.asarray(Image.composite(picture.point(table), picture, road))


def class_ids_at(probs, shape):
    """Class ids int [H, W]: the argmax of per-class maps float [h, w, K] each resized (bilinear) to shape (H, W),
    the first class on ties, as np.argmax. One class at a time: cheaper than resizing all K, stacking and taking
    the argmax, which holds all K full-size maps at once (docs/measurements.md)."""
    best = np.array(resize_probability(probs[..., 0], shape))  # writable: Pillow's arrays are not
    ids = np.zeros(best.shape, np.int64)
    for k in range(1, probs.shape[-1]):
        prob = resize_probability(probs[..., k], shape)
        ids[prob > best] = k
        np.maximum(best, prob, out=best)
    return ids


def class_overlay(image, classes, palette, alpha=CLASS_ALPHA):
    """uint8 [H, W, 3] with each pixel blended (alpha, Pillow's blend) with the palette colour of its class id
    [H, W]; ids outside the palette (ignored pixels) are left as they are."""
    known = (classes >= 0) & (classes < len(palette))
    ids = Image.fromarray(np.where(known, classes, 0).astype(np.uint8), 'P')
    ids.putpalette([int(value) for colour in palette for value in colour])
    picture = Image.fromarray(image)
    blended = Image.blend(picture, ids.convert('RGB'), alpha)
    return np.asarray(Image.composite(blended, picture, Image.fromarray(known.view(np.uint8) * np.uint8(255))))


def legend(names, palette, row=20, width=220):
    """A legend image uint8 [row x len(names), width, 3]: each class's colour swatch and name, on white."""
    picture = Image.new('RGB', (width, row * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for i, (name, colour) in enumerate(zip(names, palette)):
        draw.rectangle([4, i * row + 3, 4 + 2 * row, (i + 1) * row - 3], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((12 + 2 * row, i * row + 4), name, fill=(0, 0, 0))
    return np.asarray(picture)
