"""KITTI Road's bird's-eye view (BEV): calibration files, the benchmark's metric grid on the road plane, and
perspective maps (road probabilities, class labels) resampled onto it.

Geometry. A road point X = (x, y, z, 1) in road coordinates (metres; x right, y down, z ahead, the road plane
y = 0) is seen at image pixel P2 · R0_rect · Tr_cam_to_road⁻¹ · X, R0_rect and Tr_cam_to_road extended to 4x4. On
the plane y = 0 that is a homography: columns x, z and 1 of the 3x4 product take road (x, z, 1) to image (u, v, 1).

Matched with the KITTI road devkit (devkit_road: python/BirdsEyeView.py, which python/transform2BEV.py runs):
  - grid: 0.05 m cells, x in [-10, 10] m, z in [6, 46] m, so 800 rows x 400 columns (BevParams);
  - orientation and cell centres (computeBEVLookUpTable): row 0 is the far edge and column 0 the left, every cell
    stands for its centre: rows from z = 45.975 m (row 0) down to 6.025 m (row 799), columns from x = -9.975 m
    (column 0) up to 9.975 m (column 399); the devkit rounds these centres to float32 before projecting, as we do;
  - R0_rect is part of the product (KittiCalibration.setup, whose default leaves it in);
  - pixel coordinates are 1-based: a cell is inside the image when 1 <= u <= W and 1 <= v <= H (world2image),
    and it takes the pixel at 0-based [int(v) - 1, int(u) - 1] (transformImage2BEV): nearest neighbour by
    truncation, so the 0-based pixel column c spans u in [c + 1, c + 2), whose middle is u = c + 1.5;
  - a cell outside the image is 0 in its output: black (outside the evaluated area) in a ground-truth image,
    confidence 0 in a result. Here such cells are IGNORE in a label and False in the validity mask.
Labels are resampled exactly as the devkit resamples them (nearest neighbour); probabilities bilinearly at the
same positions, the middle of 0-based pixel [r, c] being (u, v) = (c + 1.5, r + 1.5), so that both read the image
where the devkit reads it.

The benchmark's submission (devkit_road readme.txt) is described by the SUBMISSION_* constants below.
"""
import os
from collections import namedtuple

import numpy as np
from PIL import Image, ImageDraw

from fcn8s.errors import UserError
from fcn8s.images import overlay
from fcn8s.metrics import IGNORE

# --- The benchmark's BEV grid (devkit_road, BirdsEyeView.py) ---
BEV_RES_M = 0.05                # cell size, metres
BEV_X_LIMITS_M = (-10.0, 10.0)  # lateral extent, left to right
BEV_Z_LIMITS_M = (6.0, 46.0)    # extent ahead of the camera
BEV_SHAPE = (round((BEV_Z_LIMITS_M[1] - BEV_Z_LIMITS_M[0]) / BEV_RES_M),
             round((BEV_X_LIMITS_M[1] - BEV_X_LIMITS_M[0]) / BEV_RES_M))   # (rows, columns) = (800, 400)
DEVKIT_FIRST_PIXEL = 1.0        # the devkit's image coordinate of the first pixel (1-based, read by truncation)
PIXEL_MIDDLE = DEVKIT_FIRST_PIXEL + 0.5   # devkit coordinate of the middle of 0-based pixel 0

# --- The server's BEV submission (devkit_road readme.txt) ---
# One PNG per test image, named like the ground truth (um_road_000000.png ... um_road_000095.png, umm_road_*,
# uu_road_*; um_lane_* for the ego-lane task), transformed to the BEV grid before submitting: uint8 [800, 400]
# (BEV_SHAPE), either binary {0, 255} or a confidence 0-255, for which the server takes the threshold of best F1
# as the working point. All files go into one zip archive, in its root folder (no sub-folder).
SUBMISSION_NAME = '{category}_road_{index:06d}.png'
SUBMISSION_TEST_IMAGES = {'um': 96, 'umm': 94, 'uu': 100}   # the test set: 290 images
SUBMISSION_DTYPE = np.uint8

# --- Calibration files: calib/<image name>.txt, lines `KEY: numbers` (row-major) ---
CALIB_FOLDER = 'calib'
CALIB_EXTENSION = '.txt'
CALIB_SHAPES = {'P0': (3, 4), 'P1': (3, 4), 'P2': (3, 4), 'P3': (3, 4), 'R0_rect': (3, 3),
                'Tr_velo_to_cam': (3, 4), 'Tr_imu_to_velo': (3, 4), 'Tr_cam_to_road': (3, 4)}
CALIB_NUMBER_FORMAT = '.12e'   # as KITTI writes them
Calibration = namedtuple('Calibration', 'p2 r0_rect tr_cam_to_road')   # the three matrices the BEV needs, float64


def _calibration_lines(path):
    """{key: [number strings]} of a calibration file; UserError naming the file when unreadable or not `key: ...`."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read the calibration file {path}: {getattr(e, "strerror", None) or e}') from None
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        key, colon, values = line.partition(':')
        if not colon:
            raise UserError(f'{path} line {number} is not `KEY: numbers`: {line[:60]!r}')
        entries[key.strip()] = values.split()
    return entries


def _calibration_matrix(entries, key, path):
    """Matrix `key` of CALIB_SHAPES from _calibration_lines' entries, float64; UserError naming the file."""
    shape = CALIB_SHAPES[key]
    if key not in entries:
        raise UserError(f'{path} has no {key} line: a KITTI Road calibration needs P2, R0_rect and Tr_cam_to_road')
    try:
        values = np.array([float(value) for value in entries[key]])
    except ValueError:
        raise UserError(f'{path}: {key} holds something that is not a number: {" ".join(entries[key])[:80]!r}') \
            from None
    if values.size != shape[0] * shape[1] or not np.isfinite(values).all():
        raise UserError(f'{path}: {key} must be {shape[0] * shape[1]} finite numbers ({shape[0]}x{shape[1]}, '
                        f'row-major), it has {values.size}: {" ".join(entries[key])[:80]!r}')
    return values.reshape(shape)


def read_calibration(path):
    """The Calibration (P2 [3, 4], R0_rect [3, 3], Tr_cam_to_road [3, 4], float64) of a KITTI calibration file;
    UserError naming the file when it is missing, lacks one of the three or holds anything but numbers."""
    entries = _calibration_lines(path)
    calib = Calibration(*(_calibration_matrix(entries, key, path) for key in ('P2', 'R0_rect', 'Tr_cam_to_road')))
    # A rotation has determinant 1: near 0 it is a wrong or zeroed matrix, which has no inverse to project with.
    if abs(np.linalg.det(calib.tr_cam_to_road[:, :3])) < 0.5 or abs(np.linalg.det(calib.r0_rect)) < 0.5:
        raise UserError(f'{path}: R0_rect and the left 3x3 of Tr_cam_to_road must be rotations (determinant 1)')
    return calib


def format_calibration(matrices):
    """The text of a KITTI calibration file from {key: matrix} (keys of CALIB_SHAPES, written in the given order)."""
    return ''.join(f'{key}: ' + ' '.join(format(float(v), CALIB_NUMBER_FORMAT) for v in np.ravel(m)) + '\n'
                   for key, m in matrices.items())


def _homogeneous(matrix):
    """A 3x3 or 3x4 matrix extended to 4x4 with a last row (0, 0, 0, 1)."""
    out = np.eye(4)
    out[:3, :matrix.shape[1]] = matrix
    return out


def road_to_image(calib):
    """The 3x4 projection of road points (x, y, z, 1), metres, to image (u, v, 1) in the devkit's 1-based pixel
    coordinates: P2 · R0_rect · Tr_cam_to_road⁻¹ (float64)."""
    return calib.p2 @ _homogeneous(calib.r0_rect) @ np.linalg.inv(_homogeneous(calib.tr_cam_to_road))


def plane_homography(calib):
    """The 3x3 homography of the road plane y = 0: road (x, z, 1), metres -> image (u, v, 1), 1-based pixels."""
    return road_to_image(calib)[:, [0, 2, 3]]


def cell_centres():
    """(x, z) float64 [800, 400] each: road coordinates (metres) of every BEV cell's centre; row 0 is the far
    edge (z = 45.975), column 0 the left (x = -9.975)."""
    rows, cols = BEV_SHAPE
    x = BEV_X_LIMITS_M[0] + BEV_RES_M * (np.arange(cols) + 0.5)
    z = BEV_Z_LIMITS_M[1] - BEV_RES_M * (np.arange(rows) + 0.5)
    return np.broadcast_to(x, BEV_SHAPE), np.broadcast_to(z[:, None], BEV_SHAPE)


def cell_image_positions(homography):
    """(u, v) float64 [800, 400]: image column and row of every BEV cell's centre, in the devkit's 1-based pixel
    coordinates (0-based pixel [r, c] spans u in [c + 1, c + 2), v in [r + 1, r + 2)); nan behind the camera.

    homography: plane_homography's 3x3."""
    # Rounded to float32 as the devkit rounds them, so that a cell on a pixel border falls on the devkit's side.
    x, z = (c.astype(np.float32) for c in cell_centres())
    u, v, w = np.tensordot(np.asarray(homography, np.float64), np.stack([x, z, np.ones_like(x)]), axes=1)
    ahead = w > 0   # a point behind the camera projects through it, upside down: it is in no image
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(ahead, u / w, np.nan), np.where(ahead, v / w, np.nan)


def inside_image(u, v, image_shape):
    """bool [800, 400]: cells whose position (u, v), 1-based pixels, falls on an image of image_shape (H, W, ...),
    by the devkit's test 1 <= u <= W and 1 <= v <= H (nan is outside)."""
    height, width = image_shape[:2]
    with np.errstate(invalid='ignore'):
        return (u >= DEVKIT_FIRST_PIXEL) & (u <= width) & (v >= DEVKIT_FIRST_PIXEL) & (v <= height)


def sample_nearest(image, u, v):
    """(values [800, 400] or [800, 400, C] of image's dtype, inside bool [800, 400]): the pixel of image [H, W] or
    [H, W, C] under each cell, the devkit's way (0-based [int(v) - 1, int(u) - 1]); 0 where inside is False."""
    image = np.asarray(image)
    inside = inside_image(u, v, image.shape)
    rows = np.where(inside, v, DEVKIT_FIRST_PIXEL).astype(np.intp) - int(DEVKIT_FIRST_PIXEL)
    cols = np.where(inside, u, DEVKIT_FIRST_PIXEL).astype(np.intp) - int(DEVKIT_FIRST_PIXEL)
    values = image[rows, cols]
    values[~inside] = 0
    return values, inside


def sample_bilinear(image, u, v):
    """(values float32 [800, 400], inside bool [800, 400]): image [H, W] (float, or uint8 read as 0-255) bilinearly
    interpolated at each cell's position (u, v), 1-based pixels as the devkit has them, the middle of 0-based pixel
    [r, c] being (c + 1.5, r + 1.5); nearest edge pixels beyond the outer pixel middles; 0 where inside is False."""
    image = np.asarray(image, np.float32)
    height, width = image.shape
    inside = inside_image(u, v, image.shape)
    col = np.where(inside, u, PIXEL_MIDDLE) - PIXEL_MIDDLE   # 0-based pixel-middle coordinates
    row = np.where(inside, v, PIXEL_MIDDLE) - PIXEL_MIDDLE
    c0, r0 = np.floor(col).astype(np.intp), np.floor(row).astype(np.intp)
    fc, fr = (col - c0).astype(np.float32), (row - r0).astype(np.float32)
    c0, c1 = np.clip(c0, 0, width - 1), np.clip(c0 + 1, 0, width - 1)
    r0, r1 = np.clip(r0, 0, height - 1), np.clip(r0 + 1, 0, height - 1)
    top = image[r0, c0] * (1 - fc) + image[r0, c1] * fc
    bottom = image[r1, c0] * (1 - fc) + image[r1, c1] * fc
    return np.where(inside, top * (1 - fr) + bottom * fr, np.float32(0)), inside


def bev_labels(classes, homography):
    """Class ids int8 [H, W] (IGNORE = -1 where not evaluated) -> int8 [800, 400] by nearest neighbour as the
    devkit samples; IGNORE where a cell falls outside the image or on an ignored pixel."""
    values, inside = sample_nearest(np.asarray(classes, np.int8), *cell_image_positions(homography))
    values[~inside] = IGNORE
    return values


def bev_probability(probability, homography):
    """A perspective map [H, W] (road probability float, or confidence uint8 0-255) -> (float32 [800, 400] in
    the same units by bilinear sampling, valid bool [800, 400]: False, and 0, where a cell is outside the image)."""
    return sample_bilinear(probability, *cell_image_positions(homography))


def calibration_path(calib_dir, image_name):
    """Path of the calibration of image_name (um_000000.png; also a result or label named like um_road_000000.png,
    whose calibration is um_000000.txt as transform2BEV finds it) in calib_dir, or None when there is none:
    a map without its calibration is to be reported by the caller, never projected with another's."""
    stem = os.path.splitext(os.path.basename(image_name))[0]
    tags = stem.split('_')
    candidates = [stem] + ([f'{tags[0]}_{tags[2]}'] if len(tags) == 3 else [])
    for candidate in candidates:
        path = os.path.join(calib_dir, candidate + CALIB_EXTENSION)
        if os.path.isfile(path):
            return path
    return None


# --- Pictures: the road seen from above, a line every GRID_M metres ---
GRID_M = 5
GRID_COLOUR = (255, 255, 255)
OUTSIDE_COLOUR = (40, 40, 40)   # cells the camera does not see


def bev_image(image, homography):
    """uint8 [800, 400, 3]: an RGB picture uint8 [H, W, 3] seen from above (bilinear per channel), OUTSIDE_COLOUR
    where a cell falls outside it."""
    u, v = cell_image_positions(homography)
    channels = [sample_bilinear(image[..., c], u, v) for c in range(3)]
    view = np.round(np.stack([values for values, _ in channels], axis=-1)).astype(np.uint8)
    view[~channels[0][1]] = OUTSIDE_COLOUR
    return view


def bev_picture(image, probability, homography):
    """uint8 [800, 400, 3] for a person: the picture seen from above, green where the road probability [H, W]
    exceeds 0.5 (as in the perspective overlays), and a grid line every GRID_M metres labelled with its
    distance ahead (rows) or to the side (columns, 0 = the camera's)."""
    prob, inside = bev_probability(probability, homography)
    picture = Image.fromarray(overlay(bev_image(image, homography), np.where(inside, prob, 0)))
    draw = ImageDraw.Draw(picture)
    for metres in range(int(BEV_Z_LIMITS_M[0]) + GRID_M - int(BEV_Z_LIMITS_M[0]) % GRID_M, int(BEV_Z_LIMITS_M[1]),
                        GRID_M):
        row = int(round((BEV_Z_LIMITS_M[1] - metres) / BEV_RES_M))
        draw.line([(0, row), (BEV_SHAPE[1] - 1, row)], fill=GRID_COLOUR)
        draw.text((3, row + 2), f'{metres} m', fill=GRID_COLOUR)
    for metres in range(int(BEV_X_LIMITS_M[0]) + GRID_M, int(BEV_X_LIMITS_M[1]), GRID_M):
        col = int(round((metres - BEV_X_LIMITS_M[0]) / BEV_RES_M))
        draw.line([(col, 0), (col, BEV_SHAPE[0] - 1)], fill=GRID_COLOUR)
        draw.text((col + 3, BEV_SHAPE[0] - 14), f'{metres:+d} m' if metres else '0', fill=GRID_COLOUR)
    return np.asarray(picture)


def calibration_of(calib, image_name):
    """The calibration file of an image for `infer --bev CALIB`: CALIB itself when it is a file (one camera for
    every image), else CALIB/<image name>.txt (None when there is none)."""
    return calib if os.path.isfile(calib) else calibration_path(calib, image_name)
