"""fcn8s/bev.py, KITTI Road's bird's-eye view: calibration files, the devkit's grid and sampling, the generated
scenes' cameras, and the real calibrations beside the project."""
import os

import imageio.v3 as iio
import numpy as np
import pytest

from fcn8s import bev, kitti, synthetic
from fcn8s.errors import UserError
from fcn8s.metrics import IGNORE, NON_ROAD, ROAD
from tests.support import KITTI_SAMPLES

KITTI_SIZE = (375, 1242)


# u = 10 x + 101.5, v = 93.5 - 2 z: a hand-made homography for the sampling tests (see their docstrings).
TOY_HOMOGRAPHY = np.array([[10.0, 0.0, 101.5], [0.0, -2.0, 93.5], [0.0, 0.0, 1.0]])


REAL_CALIB = os.path.join(KITTI_SAMPLES, 'training', 'calib', 'um_000000.txt')


REAL_LABEL = os.path.join(KITTI_SAMPLES, 'training', 'gt_image_2', 'um_road_000000.png')


def straight_scene(monkeypatch, folder):
    """(class ids int8 [375, 1242], calibration path) of a generated KITTI-layout scene whose road is straight:
    horizon at row 0.46 * 375 = 172.5, vanishing column 0.5 * 1242 = 621, half_bottom 0.35 with no far width,
    ego_offset 0.05, no curve, and no vehicles or trees (the only things drawn over the road's label)."""
    for name, value in [('HORIZON_RANGE', (0.46, 0.46)), ('VANISHING_X_RANGE', (0.5, 0.5)),
                        ('ROAD_HALF_WIDTH_RANGE', (0.35, 0.35)), ('ROAD_FAR_HALF_WIDTH', 0.0),
                        ('EGO_OFFSET_RANGE', (0.05, 0.05)), ('CURVE_RANGE', (0.0, 0.0)), ('MAX_VEHICLES', 0),
                        ('TREE_COUNT_RANGE', (0, 1))]:
        monkeypatch.setattr(synthetic, name, value)
    root = synthetic.make_synthetic_kitti(str(folder / 'road'), 1, 0, seed=4, sizes=(KITTI_SIZE,), progress=False)
    classes = kitti.decode_label(iio.imread(os.path.join(root, 'training', 'gt_image_2', 'um_road_000000.png')))
    return classes, os.path.join(root, 'training', 'calib', 'um_000000.txt')


def test_the_grid_is_the_devkits():
    """0.05 m cells over x in [-10, 10] and z in [6, 46]: 40 / 0.05 = 800 rows, 20 / 0.05 = 400 columns. Row 0 is the
    far edge: its centre z = 46 - 0.025 = 45.975, row 799's 6 + 0.025 = 6.025; column 0 is the left: x = -10 + 0.025 =
    -9.975, column 399 x = 9.975; row 519 is z = 45.975 - 519 * 0.05 = 20.025, column 240 x = -9.975 + 12 = 2.025."""
    assert bev.BEV_SHAPE == (800, 400)
    x, z = bev.cell_centres()
    assert x.shape == z.shape == (800, 400)
    np.testing.assert_allclose([x[0, 0], x[0, 399], x[519, 240]], [-9.975, 9.975, 2.025], atol=1e-12)
    np.testing.assert_allclose([z[0, 0], z[799, 0], z[519, 240]], [45.975, 6.025, 20.025], atol=1e-12)
    assert (x[5] == x[0]).all() and (z[:, 7] == z[:, 0]).all()


def test_a_straight_generated_road_is_as_wide_and_straight_in_the_bev(monkeypatch, tmp_path):
    """The straight scene's camera (module docstring of synthetic): f = 0.1 * 1242 * 5.8 = 720.36 px, height
    h = 5.8 * (375 - 172.5) / 720.36 = 1.6304 m; its road is 20 * 0.35 = 7.0 m wide, centred 10 * 0.05 = 0.5 m right
    of the camera: edges at x = -3.0 and 4.0 m, the borders between columns 139 | 140 and 279 | 280, so the road is
    columns 140-279 (140 cells) in every row; the whole strip is in view (its nearest corners, z = 6.025, project to
    u = 622 - 720.36 * 3 / 6.025 = 263 and 622 + 720.36 * 4 / 6.025 = 1100, v = 173.5 + 1174.5 / 6.025 = 368.4).

    A cell takes the label of the pixel under it, decided at the pixel's middle: half a column off is up to
    z / (2 f) metres across; half a row off changes the depth by z^2 / (2 f h), which moves a point at x across by
    |x| / z of that. At an edge (|x| <= 4) that is (z / 2f)(1 + 4 / 1.6304) = 0.0719 m at z = 30 (cells 0.025 m from
    the edge may flip, those 0.075 m away may not: each edge within one cell) and 0.110 m at z = 46 (two cells). Over
    all 800 rows the errors average out: the mean width is 140 cells to within one, and the least-squares slopes of
    the road's centre and width against z move them by less than a cell over the 40 m. A wrong focal length, height,
    principal point or left-right/near-far flip fails these.
    """
    classes, calib_path = straight_scene(monkeypatch, tmp_path)
    labels = bev.bev_labels(classes, bev.plane_homography(bev.read_calibration(calib_path)))
    road = labels == ROAD
    first = road.argmax(axis=1)
    last = bev.BEV_SHAPE[1] - 1 - road[:, ::-1].argmax(axis=1)
    assert road.any(axis=1).all() and (road.sum(axis=1) == last - first + 1).all()  # one unbroken strip a row
    assert not (labels[:, 138:282] == IGNORE).any()
    z = bev.cell_centres()[1][:, 0]
    near = z <= 30
    assert (np.abs(first[near] - 140) <= 1).all() and (np.abs(last[near] - 279) <= 1).all()
    assert (np.abs(first - 140) <= 2).all() and (np.abs(last - 279) <= 2).all()
    assert abs(road.sum(axis=1).mean() - 140) < 1
    centre_slope = np.polyfit(z, (first + last) / 2, 1)[0]
    width_slope = np.polyfit(z, road.sum(axis=1), 1)[0]
    assert abs(centre_slope) * 40 < 1 and abs(width_slope) * 40 < 1


def test_a_road_point_lands_on_the_pixel_of_the_formula(monkeypatch, tmp_path):
    """The straight scene's file: P2 = [[720.36, 0, 622, 0], [0, 720.36, 173.5, 0], [0, 0, 1, 0]] (principal point
    621 + 1 and 172.5 + 1: the devkit's coordinates are 1-based), R0_rect = I and Tr_cam_to_road = [I | (0, -h, 0)]
    with h = 1174.5 / 720.36 = 1.630435 m. So P2 · R0_rect · Tr_cam_to_road⁻¹ takes the road point (2.025, 0, 20.025),
    the centre of cell [519, 240], to the camera point (2.025, h, 20.025) and to u = 720.36 * 2.025 / 20.025 + 622 =
    694.8454, v = 720.36 * h / 20.025 + 173.5 = 1174.5 / 20.025 + 173.5 = 232.1517: the devkit's pixel
    [int(v) - 1, int(u) - 1] = [231, 693], in the generator's 0-based coordinates the point (693.85, 231.15), inside
    that pixel, which the generator drew as road (-3 < 2.025 < 4). A label that is road at that pixel alone is road in
    that cell; moved one pixel right, it is not.
    """
    classes, calib_path = straight_scene(monkeypatch, tmp_path)
    with open(calib_path) as f:
        numbers = {line.split(':')[0]: np.array(line.split(':')[1].split(), float) for line in f}
    p2, r0, tr = numbers['P2'].reshape(3, 4), numbers['R0_rect'].reshape(3, 3), numbers['Tr_cam_to_road'].reshape(3, 4)
    np.testing.assert_allclose(p2, [[720.36, 0, 622, 0], [0, 720.36, 173.5, 0], [0, 0, 1, 0]], atol=1e-9)
    np.testing.assert_array_equal(r0, np.eye(3))
    np.testing.assert_allclose(tr, [[1, 0, 0, 0], [0, 1, 0, -1.630435], [0, 0, 1, 0]], atol=1e-6)
    h, (x, z) = -tr[1, 3], (2.025, 20.025)  # rotations are I: the product is u = f x / z + cx, v = f h / z + cy
    u, v = p2[0, 0] * x / z + p2[0, 2], p2[1, 1] * h / z + p2[1, 2]
    np.testing.assert_allclose([u, v], [694.8454, 232.1517], atol=1e-4)
    homography = bev.plane_homography(bev.read_calibration(calib_path))
    positions = bev.cell_image_positions(homography)
    np.testing.assert_allclose([positions[0][519, 240], positions[1][519, 240]], [u, v], atol=1e-4)
    assert classes[231, 693] == ROAD
    one_pixel = np.full(KITTI_SIZE, NON_ROAD, np.int8)
    one_pixel[231, 693] = ROAD
    assert bev.bev_labels(one_pixel, homography)[519, 240] == ROAD
    one_pixel = np.roll(one_pixel, 1, axis=1)
    assert bev.bev_labels(one_pixel, homography)[519, 240] == NON_ROAD


def test_labels_are_sampled_as_the_devkit_samples_them():
    """TOY_HOMOGRAPHY puts cell [i, j] (x = -9.975 + 0.05 j, z = 45.975 - 0.05 i) at u = 10 x + 101.5 = 1.75 + 0.5 j,
    v = 93.5 - 2 z = 1.55 + 0.1 i. The devkit reads 0-based pixel [int(v) - 1, int(u) - 1]: column int(0.75 + 0.5 j),
    so j = 0, 1, 2, 3 read columns 0, 1, 1, 2, and row int(0.55 + 0.1 i): rows 0-4 read row 0, row 5 reads row 1.
    On a 60 x 150 image a cell is inside for 1 <= u <= 150 and 1 <= v <= 60: j <= 296 (u = 149.75; j = 297 is
    150.25) and i <= 584 (v = 59.95; 585 is 60.05). Outside cells and ignored pixels give IGNORE."""
    columns = np.tile(np.arange(150) % 2, (60, 1)).astype(np.int8)   # NON_ROAD, ROAD, NON_ROAD, ...
    columns[0, 0] = IGNORE
    labels = bev.bev_labels(columns, TOY_HOMOGRAPHY)
    assert labels.dtype == np.int8 and labels.shape == (800, 400)
    np.testing.assert_array_equal(labels[5, :4], [NON_ROAD, ROAD, ROAD, NON_ROAD])   # columns 0, 1, 1, 2
    np.testing.assert_array_equal(labels[:6, 0], [IGNORE] * 5 + [NON_ROAD])          # row 0 (ignored) to row 1
    assert labels[5, 296] == NON_ROAD and labels[5, 297] == IGNORE   # column int(148.75) = 148, even
    assert labels[584, 5] != IGNORE and (labels[585:] == IGNORE).all() and (labels[:, 297:] == IGNORE).all()
    values, inside = bev.sample_nearest(np.arange(150, dtype=np.uint8)[None].repeat(60, 0), *bev.cell_image_positions(
        TOY_HOMOGRAPHY))
    assert values.dtype == np.uint8 and values[0, 3] == 2 and values[0, 297] == 0 and not inside[0, 297]


def test_probabilities_are_sampled_bilinearly_at_the_devkits_pixel_middles():
    """With TOY_HOMOGRAPHY (see the label test) cell [i, j] is at u = 1.75 + 0.5 j, v = 1.55 + 0.1 i; the middle of
    0-based pixel [r, c] is at (c + 1.5, r + 1.5), so the cell lies at column 0.25 + 0.5 j and row 0.05 + 0.1 i in
    0-based pixel middles. An image equal to its column index (a ramp) gives 0.25 + 0.5 j there: 0.25 at j = 0, 50.25
    at j = 100, 148.25 at j = 296; one equal to 10 x its row gives 10 (0.05 + 0.1 i) = 0.5 + i: 584.5 at i = 584.
    Outside the 60 x 150 image (j >= 297, i >= 585) the value is 0 and the cell not valid. A uint8 ramp is read
    as 0-255. Before the first pixel's middle (u = 1.1: column -0.4) the first pixel's value is taken."""
    ramp = np.tile(np.arange(150, dtype=np.float32), (60, 1))
    values, valid = bev.bev_probability(ramp, TOY_HOMOGRAPHY)
    assert values.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_allclose(values[7, [0, 100, 296]], [0.25, 50.25, 148.25], atol=1e-4)
    assert values[7, 297] == 0 and not valid[7, 297] and valid[584, 296] and not valid[585].any()
    rows, _ = bev.bev_probability(10 * np.arange(60, dtype=np.float32)[:, None].repeat(150, 1), TOY_HOMOGRAPHY)
    np.testing.assert_allclose(rows[[0, 100, 584], 3], [0.5, 100.5, 584.5], atol=1e-3)
    uint8, _ = bev.bev_probability(ramp.astype(np.uint8), TOY_HOMOGRAPHY)
    np.testing.assert_allclose(uint8[7, 100], 50.25, atol=1e-4)
    shifted = TOY_HOMOGRAPHY - [[0, 0, 0.65], [0, 0, 0], [0, 0, 0]]   # u = 1.1 + 0.5 j
    edge, _ = bev.bev_probability(ramp + 1, shifted)
    np.testing.assert_allclose(edge[7, :2], [1.0, 1.1], atol=1e-4)   # clamped; then column 0.1: 1 + 0.1


@pytest.mark.skipif(not os.path.isfile(REAL_CALIB), reason='no real KITTI samples beside the project')
def test_the_real_label_lands_where_its_image_has_the_road():
    """um_000000.txt: Tr_cam_to_road is within a degree of I with translation (0.0096, -1.597, 0.279): the camera is
    1.6 m above the road, so road (x, 0, z) is roughly camera (x, 1.597, z - 0.279), which P2 (f = 721.5, principal
    point (609.6, 172.9), offset 44.9 px m across) sees at u ~ 609.6 + (721.5 x + 44.9) / (z - 0.279) and
    v ~ 172.9 + 1152 / (z - 0.279): at x = 0.025, z = 10.025 about (616.1, 291.1); the small rotations (R0_rect's
    included) add a few pixels more. Computed exactly (the product in this test, from the file's numbers):
      - [719, 200] (x = 0.025, z = 10.025): u = 617.08, v = 295.99, pixel [294, 616]; the label's road spans
        columns 332-717 in row 295: ROAD;
      - [719, 100] (x = -4.975, z = 10.025): u = 246.66, v = 301.67, pixel [300, 245], left of the road: NON_ROAD;
      - [0, 0] (x = -9.975, z = 45.975): u = 453.35, v = 205.34, pixel [204, 452]; the far road spans columns
        468-538 in row 201: NON_ROAD;
      - [719, 10] (x = -9.475): u = -86.7 < 1 and [719, 399] (x = 9.975): u = 1354.3 > 1242, beside the image;
        [799, 200] (z = 6.025): v = 378.4 > 375, below it (row 796, z = 6.175, is the last in view): all IGNORE.
    Without R0_rect the far row would move by over 4 pixels (metres, at 46 m): the positions must be the product
    with it.
    """
    with open(REAL_CALIB) as f:
        numbers = {line.split(':')[0]: np.array(line.split(':')[1].split(), float) for line in f if ':' in line}
    p2, r0, tr = numbers['P2'].reshape(3, 4), np.eye(4), np.eye(4)
    r0[:3, :3], tr[:3] = numbers['R0_rect'].reshape(3, 3), numbers['Tr_cam_to_road'].reshape(3, 4)
    homography = bev.plane_homography(bev.read_calibration(REAL_CALIB))
    u, v = bev.cell_image_positions(homography)
    for row, col in [(719, 200), (0, 0), (0, 399)]:
        x, z = -9.975 + 0.05 * col, 45.975 - 0.05 * row
        with_r0 = p2 @ r0 @ np.linalg.inv(tr) @ [x, 0, z, 1]
        without = p2 @ np.linalg.inv(tr) @ [x, 0, z, 1]
        np.testing.assert_allclose([u[row, col], v[row, col]], with_r0[:2] / with_r0[2], atol=1e-3)
        assert row != 0 or np.hypot(*(with_r0[:2] / with_r0[2] - without[:2] / without[2])) > 4
    np.testing.assert_allclose([u[719, 200], v[719, 200], u[0, 0], v[0, 0]], [617.08, 295.99, 453.35, 205.34],
                               atol=0.01)
    labels = bev.bev_labels(kitti.decode_label(iio.imread(REAL_LABEL)), homography)
    assert labels[719, 200] == ROAD and labels[719, 100] == NON_ROAD and labels[0, 0] == NON_ROAD
    assert labels[719, 10] == labels[719, 399] == labels[799, 200] == IGNORE and labels[796, 200] != IGNORE
    assert (labels == ROAD).sum() > 50000   # a road some 5 m wide over the 40 m: 100 cells x 800 rows


@pytest.mark.parametrize('text, complaint', [
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\n', 'no Tr_cam_to_road line'),
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 x\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_cam_to_road: 1 0 0 0 0 1 0 0 0 0 1 0\n',
     'P2 holds something that is not a number'),
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0\nTr_cam_to_road: 1 0 0 0 0 1 0 0 0 0 1 0\n',
     'R0_rect must be 9 finite numbers'),
    ('P2 1 0 0 0 0 1 0 0 0 0 1 0\n', 'line 1 is not'),
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_cam_to_road: 0 0 0 0 0 0 0 0 0 0 0 0\n',
     'must be rotations'),
])
def test_a_malformed_calibration_is_a_user_error_naming_the_file(tmp_path, text, complaint):
    path = tmp_path / 'um_000000.txt'
    path.write_text(text)
    with pytest.raises(UserError, match=complaint) as error:
        bev.read_calibration(str(path))
    assert str(path) in str(error.value)


def test_a_missing_calibration_is_a_user_error_or_none(tmp_path):
    """read_calibration of a missing file is a UserError naming it; calibration_path finds um_000000.txt for the
    image um_000000.png and for a result or label um_road_000000.png (as transform2BEV does), None for um_000001.png
    (the caller reports it) and for a folder that does not exist."""
    missing = str(tmp_path / 'um_000001.txt')
    with pytest.raises(UserError, match='um_000001.txt'):
        bev.read_calibration(missing)
    (tmp_path / 'um_000000.txt').write_text('')
    found = str(tmp_path / 'um_000000.txt')
    assert bev.calibration_path(str(tmp_path), 'um_000000.png') == found
    assert bev.calibration_path(str(tmp_path), 'some/where/um_road_000000.png') == found
    assert bev.calibration_path(str(tmp_path), 'um_000001.png') is None
    assert bev.calibration_path(str(tmp_path / 'nowhere'), 'um_000000.png') is None
