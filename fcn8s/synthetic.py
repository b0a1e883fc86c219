"""Seeded synthetic road scenes in the KITTI Road dataset layout, and the same scenes in CamVid's with its classes.

The offline stand-in for KITTI Road (the default when KITTI cannot be had) and the tests' data.

Scenes are painted back to front on a float canvas while a label map records which surface owns
every pixel, so the ground truth matches the image exactly by construction. Ground geometry lives in
road coordinates: ``u`` is the lateral position in road half-widths (|u| = 1 at the road edge) and
``t`` is the perspective row parameter (0 at the horizon, 1 at the bottom row). Everything placed in
these coordinates narrows toward the vanishing point automatically.

The drawing is a pinhole image, written down per scene as a KITTI calibration file (scene_calibration): a level
camera (no pitch or roll; KITTI's is within a degree of level) with the horizon row and vanishing column as its
principal point, square pixels of focal length f = PX_PER_METRE * width * BOTTOM_ROW_DISTANCE_M (720 px for KITTI's
1242 columns; KITTI's is 721) and height h = BOTTOM_ROW_DISTANCE_M * (height - horizon) / f above the road (1.36 to
1.96 m over HORIZON_RANGE at KITTI's image shape, 1.66 m at its middle; KITTI's is 1.65 m). Then a ground row at t is
BOTTOM_ROW_DISTANCE_M / t metres ahead and px_per_metre(t) = f / depth, across and up alike. The road's edges
(|u| = 1) lie 10 * (half_bottom - ROAD_FAR_HALF_WIDTH) + ROAD_FAR_HALF_WIDTH / (PX_PER_METRE *
BOTTOM_ROW_DISTANCE_M) * depth metres either side of its centre line: 4.3-11.9 m wide at the camera (two 3.5 m
lanes at half_bottom 0.354), widening by 1.4 cm per metre ahead (ROAD_FAR_HALF_WIDTH keeps the far road visible);
not exactly parallel edges, but an exact projection of them. The centre line starts 10 * ego_offset metres right
of the camera and bends with `curve`.
"""
import concurrent.futures
import os
from collections import deque, namedtuple
from functools import partial

import imageio.v3 as iio
import numpy as np
from PIL import Image
from tqdm import tqdm

from fcn8s import bev, camvid, files
from fcn8s.errors import UserError
from fcn8s.kitti import CATEGORIES, INVALID_COLOR, NON_ROAD_COLOR, ROAD_COLOR

KITTI_SIZES = ((375, 1242), (376, 1241), (370, 1226), (370, 1224))   # (height, width)

LABEL_NON_ROAD, LABEL_ROAD, LABEL_INVALID = 0, 1, 2   # indices into GT_COLOURS
GT_COLOURS = np.array((NON_ROAD_COLOR, ROAD_COLOR, INVALID_COLOR), dtype=np.uint8)
SPLIT_IDS = {'training': 0, 'testing': 1, 'validation': 2}   # part of each image's seed
# The scene's surfaces as CamVid's classes, for the multi-class set (make_synthetic_camvid): fields, lawns and
# distant tree lines are vegetation like trees; kerbs and gravel are pavement; both carriageways are road.
SCENE_CLASS = {'sky': camvid.CLASSES.index('Sky'), 'building': camvid.CLASSES.index('Building'),
               'tree': camvid.CLASSES.index('Tree'), 'pavement': camvid.CLASSES.index('Pavement'),
               'road': camvid.ROAD, 'car': camvid.CLASSES.index('Car')}
SURFACE_CLASS = {'skyline': 'tree', 'ground': 'tree', 'grass': 'tree', 'gravel': 'pavement', 'kerb': 'pavement',
                 'sidewalk': 'pavement', 'asphalt': 'road', 'marking': 'road'}
CAMVID_SIZE = (360, 480)   # (height, width) of SegNet's CamVid images
CAMVID_SEQUENCES = ('0001TP', '0006R0', '0016E5', 'Seq05VD')
WRITER_THREADS = 2   # PNG encoders working while the next scene is drawn

# --- Camera and road geometry (image fractions unless the name says otherwise) ---
HORIZON_RANGE = (0.35, 0.55)          # horizon row / height
VANISHING_X_RANGE = (0.4, 0.6)        # vanishing point column / width
ROAD_HALF_WIDTH_RANGE = (0.22, 0.6)   # road half-width at the bottom row / width
ROAD_FAR_HALF_WIDTH = 0.004           # at the horizon, so the far road stays visible
EGO_OFFSET_RANGE = (-0.25, 0.25)      # road centre at the bottom row relative to the vanishing point
CURVE_RANGE = (-0.18, 0.18)           # sideways shift of the far road
CURVE_POWER_RANGE = (2.5, 4.0)        # larger: the bend starts further away
PX_PER_METRE = 0.1                    # image width fraction per metre at the bottom row
BOTTOM_ROW_DISTANCE_M = 5.8           # ground distance of the bottom row (KITTI focal / PX_PER_METRE)
NYQUIST_FRACTION = 0.5                # depth patterns need >= 2 rows per period to be drawn

# --- Roadside layout, in road half-widths ---
ROADSIDE_KINDS = ('sidewalk', 'grass', 'gravel')
ROADSIDE_PROBS = (0.55, 0.3, 0.15)
VERGE_WIDTH_RANGES = {'sidewalk': (0.25, 0.7), 'grass': (0.3, 1.5), 'gravel': (0.1, 0.4),
                      'median': (0.1, 0.4)}
KERB_WIDTH_RANGE = (0.025, 0.06)
UNPAVED_KERB_PROB = 0.4               # grass or gravel verges only sometimes have a kerb
OPPOSITE_ROAD_PROB = 0.35             # KITTI marks the opposite carriageway INVALID
OPPOSITE_ROAD_WIDTH_RANGE = (0.5, 1.2)
Side = namedtuple('Side', 'sign kind kerb verge opposite')

# --- Colour palettes (RGB) and texture strengths (relative brightness variation) ---
COLOUR_JITTER = 12
SKY_TOP_COLOURS = ((70, 120, 200), (100, 145, 210), (150, 165, 185), (185, 195, 205))
SKY_HORIZON_COLOURS = ((190, 210, 235), (215, 225, 235), (200, 200, 205), (235, 235, 230))
SKY_RAMP_GAMMA = 0.7
CLOUD_COLOUR = (235, 235, 238)
CLOUD_COVER_RANGE = (-0.2, 0.8)       # noise threshold: low means overcast
CLOUD_SHARPNESS = 1.5
CLOUD_OPACITY_RANGE = (0.4, 0.9)
CLOUD_CELLS = ((2, 6), (4, 16))     # (rows, cols) ranges of the coarse cloud grid
SKYLINE_COLOURS = ((45, 70, 45), (60, 80, 55), (105, 120, 135), (75, 95, 70))
SKYLINE_HEIGHT_RANGE = (0.01, 0.08)   # mean height above the horizon / height
SKYLINE_RELIEF = 0.6                  # height variation relative to the mean
SKYLINE_CELLS = (6, 40)               # bumps across the image width
GROUND_COLOURS = ((80, 115, 50), (100, 125, 60), (120, 120, 80), (135, 120, 95))
GRASS_COLOURS = ((70, 110, 45), (95, 130, 55), (110, 125, 70), (60, 95, 40))
GRAVEL_COLOURS = ((140, 128, 105), (120, 112, 98), (150, 145, 135))
KERB_GREY_RANGE = (165, 215)
ASPHALT_GREY_RANGE = (70, 135)
ASPHALT_TINT = 5
OPPOSITE_ASPHALT_SHIFT = 15           # the other carriageway was paved at another time
SIDEWALK_BRIGHTER_RANGE = (14, 40)    # sidewalk grey = asphalt grey + this
SIDEWALK_TINTS = ((0, 0, 0), (0, 0, 0), (16, 4, -6), (10, 8, 0))   # plain, reddish, beige paving
SIDEWALK_TILES_PER_U = (4.0, 10.0)
SIDEWALK_TILE_M = (0.4, 1.0)
TILE_JOINT_WIDTH = 0.12               # joint fraction of a tile
TILE_JOINT_DARKEN = 0.1
MARKING_GREY_RANGE = (200, 245)
GRAIN = {'ground': 0.08, 'asphalt': 0.05, 'sidewalk': 0.04, 'grass': 0.1, 'gravel': 0.1,
         'kerb': 0.03, 'marking': 0.03, 'skyline': 0.08, 'wall': 0.03, 'canopy': 0.12}
PATCHES = {'ground': 0.15, 'asphalt': 0.07, 'sidewalk': 0.05, 'grass': 0.15, 'gravel': 0.1,
           'skyline': 0.15}
PATCH_CELLS = (6, 20)                 # coarse noise grid (rows, cols) for large-scale texture
PATCH_DOWNSAMPLE = 4
TRACK_DARKEN_RANGE = (0.0, 0.1)       # worn tyre tracks in the middle of each lane
TRACK_CENTRE_U = 0.5                  # middle of each lane of a two-lane road
TRACK_WIDTH_U = 0.15

# --- Lane markings ---
CENTRE_LINE_PROB = 0.65
DASHED_CENTRE_PROB = 0.8
EDGE_LINE_PROB = 0.5
CENTRE_JITTER_U = 0.1
LINE_WIDTH_U = (0.025, 0.045)
EDGE_LINE_MARGIN_U = (0.02, 0.08)
DASH_PERIOD_M = (9.0, 18.0)
DASH_DUTY = (0.33, 0.5)

# --- Shadows ---
SHADOW_PROB = 0.6
SHADOW_DARKNESS = (0.3, 0.6)
SHADOW_THRESHOLD = (-0.1, 0.4)        # on noise in [-1, 1]: lower covers more road
SHADOW_SOFTNESS = 0.08
SHADOW_DEPTH_SPAN_M = 60.0            # shadows fade out over this distance ahead
SHADOW_LATERAL_SPAN_M = 20.0          # either side of the road centre
SHADOW_NOISE_SIZE = 256
SHADOW_CELLS_ALONG = (4, 16)
SHADOW_CELLS_ACROSS = (1, 10)         # 1-2 cells give bands across the road, more give blobs
SHADE_CHANNEL_WEIGHTS = (1.0, 0.97, 0.85)   # shade is lit by blue sky, so it keeps some blue

# --- Objects (sizes in metres, positions as t) ---
BUILDING_PROBS = {'sidewalk': 0.8, 'grass': 0.35, 'gravel': 0.2, 'median': 0.3}
BUILDING_COUNT_RANGE = (2, 7)
BUILDING_T_RANGE = (0.03, 0.35)
BUILDING_WIDTH_M = (8.0, 30.0)
BUILDING_HEIGHT_M = (6.0, 25.0)
BUILDING_SETBACK_M = (0.0, 3.0)
BUILDING_COLOURS = ((190, 180, 160), (160, 150, 140), (200, 190, 175), (150, 90, 70),
                    (120, 120, 125), (210, 205, 195), (170, 140, 110))
WINDOW_COLOURS = ((40, 50, 60), (70, 85, 100), (30, 35, 40), (140, 160, 175))
FLOOR_HEIGHT_M = 3.0
WINDOW_BAY_M = 2.5
WINDOW_ROWS = (0.3, 0.75)             # window span within a floor
WINDOW_COLS = (0.25, 0.75)            # window span within a bay
MIN_WINDOW_PX = 3
TREE_COUNT_RANGE = (0, 7)
TREE_T_RANGE = (0.02, 0.6)
TREE_SETBACK_M = (0.5, 4.0)
TRUNK_HEIGHT_M = (1.5, 3.5)
TRUNK_WIDTH_M = (0.25, 0.5)
CANOPY_RADIUS_M = (1.5, 3.5)
CANOPY_ASPECT = (0.8, 1.3)
CANOPY_RAGGEDNESS = 0.35
CANOPY_CELLS = (5, 5)
CANOPY_DROP = 0.7                     # canopy centre sits this many radii above the trunk top
TREE_COLOURS = ((40, 70, 30), (55, 85, 35), (35, 60, 35), (70, 90, 40))
TRUNK_COLOURS = ((70, 55, 40), (90, 75, 60))
MAX_VEHICLES = 3
VEHICLE_T_RANGE = (0.06, 0.55)
VEHICLE_WIDTH_M = (1.6, 1.9)
VEHICLE_ASPECT = (0.75, 0.95)         # height / width seen from behind
VEHICLE_LANE_MARGIN_U = 0.05
VEHICLE_COLOURS = ((230, 230, 230), (180, 182, 185), (30, 30, 35), (150, 20, 25),
                   (30, 50, 110), (90, 95, 100), (200, 190, 170))
GLASS_COLOUR = (35, 40, 50)
TAIL_LIGHT_COLOUR = (170, 20, 20)
TYRE_COLOUR = (20, 20, 22)
MIN_VEHICLE_PX = 2
# Rear view layout as fractions of the vehicle box: (top, bottom) rows and inset columns.
CABIN_ROWS, CABIN_INSET = (0.0, 0.42), 0.07
WINDOW_ROWS_V, WINDOW_INSET = (0.08, 0.4), 0.14
LIGHT_ROWS, LIGHT_WIDTH = (0.45, 0.58), 0.14
BUMPER_ROWS, BUMPER_SHADE = (0.72, 0.84), 0.5
WHEEL_TOP, WHEEL_WIDTH = 0.82, 0.2
CONTACT_SHADOW_HEIGHT, CONTACT_SHADOW_DARKEN = 0.08, 0.5

# --- Camera ---
BRIGHTNESS_RANGE = (0.75, 1.2)
CONTRAST_RANGE = (0.8, 1.15)
COLOUR_CAST = 0.06
NOISE_SIGMA_RANGE = (1.5, 6.0)


class _Scene:
    """Canvas, label map and road geometry shared by every scene element.

    Ground geometry (t, depth, u) covers only the rows below the horizon, starting at `ground_row`.
    """

    def __init__(self, rng, height, width):
        self.rng, self.height, self.width = rng, height, width
        self.img = np.empty((height, width, 3), np.float32)
        self.label = np.full((height, width), LABEL_NON_ROAD, np.uint8)
        self.scene = np.full((height, width), SCENE_CLASS['sky'], np.uint8)  # CamVid class ids
        # One grain field serves every material: materials never overlap, so reuse is invisible.
        self.grain = rng.standard_normal((height, width), dtype=np.float32)
        self.horizon = rng.uniform(*HORIZON_RANGE) * height
        self.vanish_x = rng.uniform(*VANISHING_X_RANGE)
        self.half_bottom = rng.uniform(*ROAD_HALF_WIDTH_RANGE)
        self.ego_offset = rng.uniform(*EGO_OFFSET_RANGE)
        self.curve = rng.uniform(*CURVE_RANGE)
        self.curve_power = rng.uniform(*CURVE_POWER_RANGE)
        rows = np.arange(height, dtype=np.float32) + 0.5
        self.ground_row = int(np.searchsorted(rows, self.horizon, side='right'))
        self.t = ((rows[self.ground_row:] - self.horizon) / (height - self.horizon))[:, None]
        self.depth = 1.0 / self.t
        cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
        self.u = ((cols - self.centre_at(self.t)) / self.half_at(self.t)).astype(np.float32)
        self.asphalt = rng.uniform(*ASPHALT_GREY_RANGE) + rng.uniform(-ASPHALT_TINT, ASPHALT_TINT, 3)
        self.sides = _sample_sides(rng)

    def centre_at(self, t):
        return self.width * (self.vanish_x + self.ego_offset * t + self.curve * (1 - t) ** self.curve_power)

    def half_at(self, t):
        return self.width * (ROAD_FAR_HALF_WIDTH + (self.half_bottom - ROAD_FAR_HALF_WIDTH) * t)

    def row_at(self, t):
        return self.horizon + t * (self.height - self.horizon)

    def px_per_metre(self, t):
        return PX_PER_METRE * self.width * t

    def ground_pixels(self, mask):
        """Flat canvas indices of a mask given over the ground rows."""
        return np.flatnonzero(mask) + self.ground_row * self.width

    def ground_rows(self, idx):
        """Ground-row index of each flat canvas index, for looking up t / depth per pixel."""
        return idx // self.width - self.ground_row

    def u_at(self, idx):
        """Road coordinate u at flat canvas indices of ground pixels."""
        return self.u.reshape(-1)[idx - self.ground_row * self.width]

    def fill(self, idx, colour, kind, label=None, tone=1.0):
        """Paint flat pixel indices (an index array or a slice) with a textured colour.

        `tone` multiplies the brightness per pixel. Texture is evaluated only at the painted pixels,
        which keeps a full-size scene fast.
        """
        tone = tone * (1.0 + GRAIN[kind] * self.grain.reshape(-1)[idx])
        if kind in PATCHES:
            tone += PATCHES[kind] * self._patches(idx)
        self.img.reshape(-1, 3)[idx] = np.asarray(colour, np.float32) * tone[:, None]
        self.scene.reshape(-1)[idx] = SCENE_CLASS[SURFACE_CLASS[kind]]
        if label is not None:
            self.label.reshape(-1)[idx] = label

    def _patches(self, idx):
        # Large-scale texture varies slowly, so a reduced-resolution field looks the same and is cheap.
        small = _smooth_noise(self.rng, (-(-self.height // PATCH_DOWNSAMPLE), -(-self.width // PATCH_DOWNSAMPLE)),
                              PATCH_CELLS)
        full = small.repeat(PATCH_DOWNSAMPLE, 0).repeat(PATCH_DOWNSAMPLE, 1)[:self.height, :self.width]
        return full.reshape(-1)[idx]

    def resolvable(self, period_depth):
        """Ground rows where a pattern repeating every `period_depth` in 1/t spans >= 2 rows."""
        rows_per_depth = self.t ** 2 * (self.height - self.horizon)
        return period_depth * rows_per_depth >= 1.0 / NYQUIST_FRACTION


def _sample_sides(rng):
    opposite_sign = rng.choice((-1, 1)) if rng.random() < OPPOSITE_ROAD_PROB else 0
    return tuple(_sample_side(rng, sign, sign == opposite_sign) for sign in (-1, 1))


def _sample_side(rng, sign, has_opposite):
    if has_opposite:
        return Side(sign, 'median', rng.uniform(*KERB_WIDTH_RANGE),
                    rng.uniform(*VERGE_WIDTH_RANGES['median']), rng.uniform(*OPPOSITE_ROAD_WIDTH_RANGE))
    kind = ROADSIDE_KINDS[rng.choice(len(ROADSIDE_KINDS), p=ROADSIDE_PROBS)]
    has_kerb = kind == 'sidewalk' or rng.random() < UNPAVED_KERB_PROB
    kerb = rng.uniform(*KERB_WIDTH_RANGE) if has_kerb else 0.0
    return Side(sign, kind, kerb, rng.uniform(*VERGE_WIDTH_RANGES[kind]), 0.0)


def _outer_u(side):
    return 1.0 + side.kerb + side.verge + side.opposite


def _pick(rng, palette, jitter=COLOUR_JITTER):
    colour = np.asarray(palette[rng.integers(len(palette))], np.float32)
    return colour + rng.uniform(-jitter, jitter, 3).astype(np.float32)


def _smooth_noise(rng, shape, cells):
    """Value noise in [-1, 1]: a coarse random grid bicubically upsampled to `shape`."""
    coarse = rng.uniform(-1, 1, (max(int(cells[0]), 2), max(int(cells[1]), 2))).astype(np.float32)
    resized = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def _box(s, x0, y0, x1, y1):
    """Integer slices of a float box clipped to the canvas, or None when nothing is visible."""
    r0, r1 = max(int(round(y0)), 0), min(int(round(y1)), s.height)
    c0, c1 = max(int(round(x0)), 0), min(int(round(x1)), s.width)
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None


def _local_coords(box, x0, y0, w, h):
    """Box pixel centres as fractions of an (unclipped) object box: fy (rows, 1), fx (1, cols)."""
    fy = (np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] + 0.5 - y0) / h
    fx = (np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] + 0.5 - x0) / w
    return fy, fx


def _in_span(values, span):
    return (values >= span[0]) & (values < span[1])


def _draw_sky(s):
    """Gradient toward a paler horizon with soft clouds, in the rows above the ground."""
    rng, rows = s.rng, s.ground_row
    top, bottom = _pick(rng, SKY_TOP_COLOURS), _pick(rng, SKY_HORIZON_COLOURS)
    ramp = (np.arange(rows, dtype=np.float32)[:, None, None] / rows) ** SKY_RAMP_GAMMA
    sky = s.img[:rows]
    sky[:] = top + (bottom - top) * ramp
    clouds = _smooth_noise(rng, (rows, s.width), (rng.integers(*CLOUD_CELLS[0]), rng.integers(*CLOUD_CELLS[1])))
    cover = np.clip((clouds - rng.uniform(*CLOUD_COVER_RANGE)) * CLOUD_SHARPNESS, 0, 1)[..., None]
    cover *= rng.uniform(*CLOUD_OPACITY_RANGE)
    sky += (np.asarray(CLOUD_COLOUR, np.float32) - sky) * cover


def _draw_skyline(s):
    """Distant tree line or hills sitting on the horizon."""
    rng = s.rng
    mean = rng.uniform(*SKYLINE_HEIGHT_RANGE) * s.height
    relief = _smooth_noise(rng, (1, s.width), (1, rng.integers(*SKYLINE_CELLS)))
    top = s.horizon - mean * (1 + SKYLINE_RELIEF * relief)
    rows = np.arange(s.ground_row, dtype=np.float32)[:, None] + 0.5
    s.fill(np.flatnonzero(rows >= top), _pick(rng, SKYLINE_COLOURS), 'skyline')


def _draw_ground(s):
    """Fields or lawns everywhere below the horizon; later elements cover most of it."""
    s.fill(slice(s.ground_row * s.width, None), _pick(s.rng, GROUND_COLOURS), 'ground')


def _draw_roadsides(s):
    """Kerb then a verge (sidewalk, grass, gravel or a grass median) on each side of the road."""
    kerb_colour = np.full(3, s.rng.uniform(*KERB_GREY_RANGE), np.float32)
    for side in s.sides:
        v = s.u * side.sign
        kerb_end = 1.0 + side.kerb
        _draw_verge(s, side, s.ground_pixels((v >= kerb_end) & (v < kerb_end + side.verge)))
        s.fill(s.ground_pixels((v >= 1.0) & (v < kerb_end)), kerb_colour, 'kerb')


def _draw_verge(s, side, idx):
    if side.kind == 'sidewalk':
        _draw_sidewalk(s, side, idx)
    elif side.kind == 'gravel':
        s.fill(idx, _pick(s.rng, GRAVEL_COLOURS), 'gravel')
    else:
        s.fill(idx, _pick(s.rng, GRASS_COLOURS), 'grass')


def _draw_sidewalk(s, side, idx):
    """Paving close to the asphalt tone; tile joints are the main texture cue against asphalt."""
    rng, rows = s.rng, s.ground_rows(idx)
    colour = s.asphalt + rng.uniform(*SIDEWALK_BRIGHTER_RANGE) + _pick(rng, SIDEWALK_TINTS, 0)
    tile_depth = rng.uniform(*SIDEWALK_TILE_M) / BOTTOM_ROW_DISTANCE_M
    across = (s.u_at(idx) * side.sign * rng.uniform(*SIDEWALK_TILES_PER_U)) % 1.0 < TILE_JOINT_WIDTH
    along = ((s.depth[rows, 0] / tile_depth) % 1.0 < TILE_JOINT_WIDTH) & s.resolvable(tile_depth)[rows, 0]
    s.fill(idx, colour, 'sidewalk', tone=1.0 - TILE_JOINT_DARKEN * (across | along))


def _draw_opposite_road(s):
    """The other carriageway beyond a median: drawn as asphalt, labelled INVALID like KITTI."""
    for side in s.sides:
        if side.opposite:
            start = 1.0 + side.kerb + side.verge
            v = s.u * side.sign
            colour = s.asphalt + s.rng.uniform(-OPPOSITE_ASPHALT_SHIFT, OPPOSITE_ASPHALT_SHIFT)
            s.fill(s.ground_pixels((v >= start) & (v < start + side.opposite)), colour, 'asphalt', LABEL_INVALID)


def _draw_road(s):
    idx = s.ground_pixels(np.abs(s.u) < 1.0)
    lane_offset = np.abs(np.abs(s.u_at(idx)) - TRACK_CENTRE_U)
    tracks = np.clip(1.0 - lane_offset / TRACK_WIDTH_U, 0, 1) * s.rng.uniform(*TRACK_DARKEN_RANGE)
    s.fill(idx, s.asphalt, 'asphalt', LABEL_ROAD, 1.0 - tracks)


def _draw_lane_markings(s):
    """White paint on the road surface; it stays ROAD in the ground truth."""
    rng = s.rng
    paint = np.full(3, rng.uniform(*MARKING_GREY_RANGE), np.float32)
    if rng.random() < CENTRE_LINE_PROB:
        line = np.abs(s.u - rng.uniform(-CENTRE_JITTER_U, CENTRE_JITTER_U)) < rng.uniform(*LINE_WIDTH_U) / 2
        if rng.random() < DASHED_CENTRE_PROB:
            period = rng.uniform(*DASH_PERIOD_M) / BOTTOM_ROW_DISTANCE_M
            phase, duty = rng.random(), rng.uniform(*DASH_DUTY)
            line &= ((s.depth / period + phase) % 1.0 < duty) & s.resolvable(period)
        s.fill(s.ground_pixels(line), paint, 'marking')
    if rng.random() < EDGE_LINE_PROB:
        inner = 1.0 - rng.uniform(*EDGE_LINE_MARGIN_U)
        au = np.abs(s.u)
        s.fill(s.ground_pixels((au < inner) & (au >= inner - rng.uniform(*LINE_WIDTH_U))), paint, 'marking')


def _draw_shadows(s):
    """Tree and building shadows on the ground; shading never changes the labels."""
    rng = s.rng
    if rng.random() >= SHADOW_PROB:
        return
    cells = (rng.integers(*SHADOW_CELLS_ALONG), rng.integers(*SHADOW_CELLS_ACROSS))
    noise = _smooth_noise(rng, (SHADOW_NOISE_SIZE, SHADOW_NOISE_SIZE), cells)
    # Sample the noise in ground metres so shadows foreshorten toward the horizon like the road does.
    ahead = (BOTTOM_ROW_DISTANCE_M * s.depth - BOTTOM_ROW_DISTANCE_M) / SHADOW_DEPTH_SPAN_M
    cols = np.arange(s.width, dtype=np.float32)[None, :] + 0.5
    lateral = (cols - s.centre_at(s.t)) / (s.px_per_metre(s.t) * 2 * SHADOW_LATERAL_SPAN_M) + 0.5
    last = SHADOW_NOISE_SIZE - 1
    field = noise[(np.clip(ahead, 0, 1) * last).astype(np.intp), (np.clip(lateral, 0, 1) * last).astype(np.intp)]
    amount = np.clip((field - rng.uniform(*SHADOW_THRESHOLD)) / SHADOW_SOFTNESS, 0, 1)
    amount *= rng.uniform(*SHADOW_DARKNESS) * np.clip(1.0 - ahead, 0, 1)
    s.img[s.ground_row:] *= 1.0 - amount[..., None] * np.asarray(SHADE_CHANNEL_WEIGHTS, np.float32)


def _place_buildings(s):
    objects = []
    for side in s.sides:
        if s.rng.random() < BUILDING_PROBS[side.kind]:
            for t in s.rng.uniform(*BUILDING_T_RANGE, s.rng.integers(*BUILDING_COUNT_RANGE)):
                objects.append((t, partial(_draw_building, s, side, t)))
    return objects


def _draw_building(s, side, t):
    """A facade standing just beyond the roadside, scaled by its distance."""
    rng, ppm = s.rng, s.px_per_metre(t)
    inner = s.centre_at(t) + side.sign * (s.half_at(t) * _outer_u(side) + ppm * rng.uniform(*BUILDING_SETBACK_M))
    width, height = ppm * rng.uniform(*BUILDING_WIDTH_M), ppm * rng.uniform(*BUILDING_HEIGHT_M)
    x0, bottom = min(inner, inner + side.sign * width), s.row_at(t)
    box = _box(s, x0, bottom - height, x0 + width, bottom)
    if box is None:
        return
    wall = _pick(rng, BUILDING_COLOURS) * (1.0 + GRAIN['wall'] * s.grain[box])[..., None]
    floor, bay = ppm * FLOOR_HEIGHT_M, ppm * WINDOW_BAY_M
    if min(floor, bay) >= MIN_WINDOW_PX:
        fy, fx = _local_coords(box, x0, bottom - height, bay, floor)
        windows = _in_span(fy % 1.0, WINDOW_ROWS) & _in_span(fx % 1.0, WINDOW_COLS)
        wall[windows] = _pick(rng, WINDOW_COLOURS)
    s.img[box] = wall
    s.label[box] = LABEL_NON_ROAD
    s.scene[box] = SCENE_CLASS['building']


def _place_trees(s):
    objects = []
    for side in s.sides:
        for t in s.rng.uniform(*TREE_T_RANGE, s.rng.integers(*TREE_COUNT_RANGE)):
            objects.append((t, partial(_draw_tree, s, side, t)))
    return objects


def _draw_tree(s, side, t):
    """Trunk plus a ragged elliptical canopy blob beyond the roadside."""
    rng, ppm, ground = s.rng, s.px_per_metre(t), s.row_at(t)
    x = s.centre_at(t) + side.sign * (s.half_at(t) * _outer_u(side) + ppm * rng.uniform(*TREE_SETBACK_M))
    trunk_h, trunk_w = ppm * rng.uniform(*TRUNK_HEIGHT_M), ppm * rng.uniform(*TRUNK_WIDTH_M)
    trunk = _box(s, x - trunk_w / 2, ground - trunk_h, x + trunk_w / 2, ground)
    if trunk is not None:
        s.img[trunk] = _pick(rng, TRUNK_COLOURS)
        s.label[trunk] = LABEL_NON_ROAD
        s.scene[trunk] = SCENE_CLASS['tree']
    rx = ppm * rng.uniform(*CANOPY_RADIUS_M)
    ry = rx * rng.uniform(*CANOPY_ASPECT)
    cy = ground - trunk_h - CANOPY_DROP * ry
    box = _box(s, x - rx * (1 + CANOPY_RAGGEDNESS), cy - ry * (1 + CANOPY_RAGGEDNESS),
               x + rx * (1 + CANOPY_RAGGEDNESS), cy + ry * (1 + CANOPY_RAGGEDNESS))
    if box is None:
        return
    fy, fx = _local_coords(box, x, cy, rx, ry)
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    canopy = fx ** 2 + fy ** 2 < 1.0 + CANOPY_RAGGEDNESS * _smooth_noise(rng, shape, CANOPY_CELLS)
    s.img[box][canopy] = _pick(rng, TREE_COLOURS) * (1.0 + GRAIN['canopy'] * s.grain[box][canopy])[:, None]
    s.label[box][canopy] = LABEL_NON_ROAD
    s.scene[box][canopy] = SCENE_CLASS['tree']


def _place_vehicles(s):
    objects = []
    for t in s.rng.uniform(*VEHICLE_T_RANGE, s.rng.integers(MAX_VEHICLES + 1)):
        # Keep the whole car on the road surface.
        reach = 1.0 - VEHICLE_WIDTH_M[1] * s.px_per_metre(t) / (2 * s.half_at(t)) - VEHICLE_LANE_MARGIN_U
        u = s.rng.uniform(-reach, reach) if reach > 0 else 0.0
        objects.append((t, partial(_draw_vehicle, s, t, u)))
    return objects


def _draw_vehicle(s, t, u):
    """A car seen from behind, with a contact shadow that darkens (but does not relabel) the road."""
    rng, ppm, bottom = s.rng, s.px_per_metre(t), s.row_at(t)
    width = ppm * rng.uniform(*VEHICLE_WIDTH_M)
    if width < MIN_VEHICLE_PX:
        return
    height = width * rng.uniform(*VEHICLE_ASPECT)
    x0 = s.centre_at(t) + u * s.half_at(t) - width / 2
    under = _box(s, x0, bottom, x0 + width, bottom + CONTACT_SHADOW_HEIGHT * height + 1)
    if under is not None:
        s.img[under] *= CONTACT_SHADOW_DARKEN
    box = _box(s, x0, bottom - height, x0 + width, bottom)
    if box is None:
        return
    fy, fx = _local_coords(box, x0, bottom - height, width, height)
    body = _pick(rng, VEHICLE_COLOURS) * (1.0 + GRAIN['wall'] * s.grain[box])[..., None]
    sides_x = (fx < LIGHT_WIDTH) | (fx > 1 - LIGHT_WIDTH)
    body[_in_span(fy, WINDOW_ROWS_V) & _in_span(fx, (WINDOW_INSET, 1 - WINDOW_INSET))] = GLASS_COLOUR
    body[_in_span(fy, LIGHT_ROWS) & sides_x] = TAIL_LIGHT_COLOUR
    body[_in_span(fy, BUMPER_ROWS) & ~sides_x] *= BUMPER_SHADE
    body[(fy >= WHEEL_TOP) & ((fx < WHEEL_WIDTH) | (fx > 1 - WHEEL_WIDTH))] = TYRE_COLOUR
    # The cabin is narrower than the body, so the road shows beside it.
    shape = ~(_in_span(fy, CABIN_ROWS) & ((fx < CABIN_INSET) | (fx > 1 - CABIN_INSET)))
    s.img[box][shape] = body[shape]
    s.label[box][shape] = LABEL_NON_ROAD
    s.scene[box][shape] = SCENE_CLASS['car']


def _draw_objects(s, objects):
    """Painter's algorithm: far objects first so nearer ones occlude them."""
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()


def _apply_camera(s):
    """Exposure, contrast and white-balance changes plus sensor noise; returns uint8 RGB."""
    rng, img = s.rng, s.img
    gain = rng.uniform(*BRIGHTNESS_RANGE) * (1.0 + rng.uniform(-COLOUR_CAST, COLOUR_CAST, 3))
    contrast, mean = rng.uniform(*CONTRAST_RANGE), img.mean()
    img -= mean
    img *= contrast
    img += mean
    img *= gain.astype(np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= rng.uniform(*NOISE_SIGMA_RANGE)
    img += noise
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(rng, height, width):
    """One synthetic road scene. rng: numpy.random.Generator. Returns (image, gt): image uint8 [H, W, 3] RGB,
    gt uint8 [H, W, 3] using only the three KITTI colours (road, non-road, invalid)."""
    s = _render(rng, height, width)
    return s.image, GT_COLOURS[s.label]


def render_scene_classes(rng, height, width):
    """The scene of render_scene(rng, height, width) with its CamVid classes: (image uint8 [H, W, 3], class ids
    uint8 [H, W] in 0-10)."""
    s = _render(rng, height, width)
    return s.image, s.scene


def render_kitti_scene(rng, height, width):
    """The scene of render_scene(rng, height, width) with its camera: (image uint8 [H, W, 3], gt uint8 [H, W, 3],
    {calibration key: matrix} of scene_calibration, for bev.format_calibration)."""
    s = _render(rng, height, width)
    return s.image, GT_COLOURS[s.label], scene_calibration(height, width, s.horizon, s.vanish_x * width)


def scene_calibration(height, width, horizon, vanish_col):
    """The KITTI calibration {key: matrix} of the level pinhole camera that draws a scene (see the module's
    docstring): horizon row and vanishing column in the generator's pixel coordinates (pixel [r, c] spans [r, r + 1)
    x [c, c + 1)), written in the devkit's 1-based ones (bev.DEVKIT_FIRST_PIXEL), so that the devkit's BEV reads
    the pixel the generator drew at the point. Road frame: x right, y down (the road plane y = 0), z ahead.

    R0_rect is the identity (one camera, nothing to rectify); P0, P1 and P3 repeat P2 and Tr_velo_to_cam,
    Tr_imu_to_velo are identities: a generated scene has no other camera, lidar or IMU, but the file keeps KITTI's
    eight lines for tools that read them all.
    """
    focal = PX_PER_METRE * width * BOTTOM_ROW_DISTANCE_M
    camera_height = BOTTOM_ROW_DISTANCE_M * (height - horizon) / focal
    p2 = np.array([[focal, 0, vanish_col + bev.DEVKIT_FIRST_PIXEL, 0],
                   [0, focal, horizon + bev.DEVKIT_FIRST_PIXEL, 0],
                   [0, 0, 1, 0]])
    identity = np.eye(4)[:3]
    # Level: no rotation. y points down, so the camera, camera_height above the road, is at road y = -height.
    cam_to_road = np.array([[1, 0, 0, 0], [0, 1, 0, -camera_height], [0, 0, 1, 0]], np.float64)
    return {'P0': p2, 'P1': p2, 'P2': p2, 'P3': p2, 'R0_rect': np.eye(3), 'Tr_velo_to_cam': identity,
            'Tr_imu_to_velo': identity, 'Tr_cam_to_road': cam_to_road}


def _render(rng, height, width):
    """The painted _Scene, its camera applied: s.image uint8, s.label (KITTI's three), s.scene (CamVid ids)."""
    s = _Scene(rng, height, width)
    _draw_sky(s)
    _draw_skyline(s)
    _draw_ground(s)
    _draw_roadsides(s)
    _draw_opposite_road(s)
    _draw_road(s)
    _draw_lane_markings(s)
    _draw_shadows(s)
    _draw_objects(s, _place_buildings(s) + _place_trees(s) + _place_vehicles(s))
    s.image = _apply_camera(s)
    return s


def _write_scenes(jobs, scene, desc, progress):
    """Write the PNGs of scene(job) -> [(path, array)] for every job. Encoding is a large share of the time and
    Pillow's encoder releases the GIL: writer threads encode while the next scene is drawn."""
    with concurrent.futures.ThreadPoolExecutor(WRITER_THREADS) as pool:
        pending = deque()
        for job in tqdm(jobs, desc=desc, unit='img', disable=not progress):
            pending.extend(pool.submit(iio.imwrite, path, array) for path, array in scene(job))
            while len(pending) > 2 * WRITER_THREADS:  # a bounded queue: rendering never runs far ahead
                pending.popleft().result()
        for write in pending:
            write.result()


def make_synthetic_kitti(root, num_train, num_test, seed=0, sizes=KITTI_SIZES, progress=True):
    """Write a KITTI-layout dataset to root (which must not exist) and return root:
    training/image_2/{cat}_{idx:06d}.png, training/gt_image_2/{cat}_road_{idx:06d}.png, testing/image_2/..., and
    each image's camera (scene_calibration) in KITTI's format in training/calib/{cat}_{idx:06d}.txt, testing/calib/...

    Images go round-robin over the categories um, umm, uu (indices from 0 within each, like KITTI) and cycle
    over `sizes`. Image i of a split is rendered from its own generator default_rng([seed, split, i]), so a
    file does not depend on the counts. The set is written to a sibling folder and renamed when complete, so an
    interrupted run leaves no half-made dataset behind.
    """
    jobs = [('training', i) for i in range(num_train)] + [('testing', i) for i in range(num_test)]
    with files.staged_folder(root) as partial:
        calib = [os.path.join(split, bev.CALIB_FOLDER) for split in ('training', 'testing')]
        for folder in ['training/image_2', 'training/gt_image_2', 'testing/image_2'] + calib:
            os.makedirs(os.path.join(partial, folder))

        def scene(job):
            split, i = job
            category, idx = CATEGORIES[i % len(CATEGORIES)], i // len(CATEGORIES)
            rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
            image, gt, calibration = render_kitti_scene(rng, *sizes[i % len(sizes)])
            with open(os.path.join(partial, split, bev.CALIB_FOLDER, f'{category}_{idx:06d}.txt'), 'w') as f:
                f.write(bev.format_calibration(calibration))
            outputs = [(os.path.join(partial, split, 'image_2', f'{category}_{idx:06d}.png'), image)]
            if split == 'training':
                outputs.append((os.path.join(partial, split, 'gt_image_2', f'{category}_road_{idx:06d}.png'), gt))
            return outputs

        _write_scenes(jobs, scene, 'synthetic road scenes', progress)
    return root


def make_synthetic_camvid(root, num_train, num_val, num_test, seed=0, size=CAMVID_SIZE, progress=True):
    """Write a multi-class set of the same scenes in CamVid's SegNet layout to root (which must not exist) and
    return root: train/, val/, test/ images and trainannot/, valannot/, testannot/ class ids 0-10 (uint8 PNG),
    named like CamVid's (<sequence>_<index>.png, over four sequences; as in CamVid, no name in two splits).
    Seeded per image like make_synthetic_kitti, written to a sibling folder and renamed when complete."""
    splits = {'train': ('training', num_train), 'val': ('validation', num_val), 'test': ('testing', num_test)}
    jobs = [(split, i) for split, (_, count) in splits.items() for i in range(count)]
    first = {'train': 0, 'val': num_train, 'test': num_train + num_val}  # each split's first frame number
    with files.staged_folder(root) as partial:
        for folder in (folder for split in splits for folder in (split, camvid.SPLITS[split])):
            os.makedirs(os.path.join(partial, folder))

        def scene(job):
            split, i = job
            frame = first[split] + i
            name = f'{CAMVID_SEQUENCES[frame % len(CAMVID_SEQUENCES)]}_{frame // len(CAMVID_SEQUENCES):06d}.png'
            image, classes = render_scene_classes(np.random.default_rng([seed, SPLIT_IDS[splits[split][0]], i]),
                                                  *size)
            return [(os.path.join(partial, split, name), image),
                    (os.path.join(partial, camvid.SPLITS[split], name), classes)]

        _write_scenes(jobs, scene, 'synthetic CamVid scenes', progress)
    return root


def synthetic_command(args):
    """`python main.py synthetic DIR` (args: command_line.synthetic_parser's): the generated scenes in CamVid's
    layout."""
    try:
        make_synthetic_camvid(args.root, *args.counts, seed=args.seed)
    except FileExistsError as e:
        raise UserError(f'{e}: choose a new folder (nothing was written)') from None
    except OSError as e:  # an unwritable place or a full disk
        raise UserError(f'cannot write {args.root}: {e.strerror or e}') from None
    print(f'written to {args.root}')
