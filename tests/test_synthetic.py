"""fcn8s/synthetic.py: the generated scenes, deterministic, in KITTI's layout with a calibration per image and in
CamVid's with its classes; `main.py synthetic`; a failed write leaves nothing."""
import errno
import os

import imageio.v3 as iio
import numpy as np
import pytest

import main
from fcn8s import bev, camvid, datasets, files, kitti, metrics, synthetic
from tests.support import SMALL_SIZES


def test_synthetic_scenes_are_deterministic_and_use_the_kitti_layout(tmp_path):
    a = synthetic.make_synthetic_kitti(str(tmp_path / 'a'), 4, 2, seed=3, sizes=SMALL_SIZES, progress=False)
    b = synthetic.make_synthetic_kitti(str(tmp_path / 'b'), 4, 2, seed=3, sizes=SMALL_SIZES, progress=False)
    for folder, expected in [('training/image_2', ['um_000000.png', 'um_000001.png', 'umm_000000.png',
                                                   'uu_000000.png']),
                             ('training/gt_image_2', ['um_road_000000.png', 'um_road_000001.png',
                                                      'umm_road_000000.png', 'uu_road_000000.png']),
                             ('testing/image_2', ['um_000000.png', 'umm_000000.png'])]:
        assert sorted(os.listdir(os.path.join(a, folder))) == expected
        for name in expected:
            with open(os.path.join(a, folder, name), 'rb') as fa, open(os.path.join(b, folder, name), 'rb') as fb:
                assert fa.read() == fb.read()
    classes = kitti.decode_label(iio.imread(os.path.join(a, 'training/gt_image_2/um_road_000000.png')))
    assert (classes == metrics.ROAD).any() and (classes == metrics.NON_ROAD).any()


def test_a_failed_scene_write_stops_the_generation_and_leaves_nothing(tmp_path, monkeypatch):
    writes, real_imwrite = [], iio.imwrite

    def imwrite(path, array):  # the second scene's label finds the disk full, in a writer thread
        writes.append(path)
        if path.endswith('um_road_000001.png'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_imwrite(path, array)

    monkeypatch.setattr(synthetic.iio, 'imwrite', imwrite)
    with pytest.raises(OSError, match='No space left'):
        synthetic.make_synthetic_kitti(str(tmp_path / 'road'), 20, 2, sizes=SMALL_SIZES, progress=False)
    assert 4 <= len(writes) < 42 and os.listdir(tmp_path) == []  # stopped early; no set, no staging folder


def test_the_generated_sets_have_a_calibration_per_image(tmp_path):
    """make_synthetic_kitti writes calib/<image name>.txt beside every training and test image, the scene's own
    camera (the same matrices render_kitti_scene gives), and the images stay those of render_scene. The bottom
    edge of the image (generator row `height`, devkit row height + 1) is BOTTOM_ROW_DISTANCE_M = 5.8 m ahead, and
    there a metre across is PX_PER_METRE * width = 0.1 * width pixels, as the generator draws."""
    root = synthetic.make_synthetic_kitti(str(tmp_path / 'road'), 4, 2, seed=3, sizes=SMALL_SIZES, progress=False)
    for split in ('training', 'testing'):
        images = sorted(os.listdir(os.path.join(root, split, 'image_2')))
        calibs = sorted(os.listdir(os.path.join(root, split, 'calib')))
        assert calibs == [name.replace('.png', '.txt') for name in images]
        for i, name in enumerate(images):
            height, width = iio.imread(os.path.join(root, split, 'image_2', name)).shape[:2]
            homography = bev.plane_homography(bev.read_calibration(os.path.join(root, split, 'calib', calibs[i])))
            (u0, v0, w0), (u1, _, w1) = homography @ [0, 5.8, 1], homography @ [1, 5.8, 1]
            assert v0 / w0 == pytest.approx(height + 1) and u1 / w1 - u0 / w0 == pytest.approx(0.1 * width)
    with open(os.path.join(root, 'training', 'calib', 'umm_000000.txt')) as f:
        written = f.read()
    image, gt, calibration = synthetic.render_kitti_scene(np.random.default_rng([3, 0, 1]), *SMALL_SIZES[1])
    assert written == bev.format_calibration(calibration)
    again, gt_again = synthetic.render_scene(np.random.default_rng([3, 0, 1]), *SMALL_SIZES[1])
    assert (image == again).all() and (gt == gt_again).all()


def test_the_synthetic_camvid_set_has_the_scenes_classes(small_camvid):
    annotations = os.path.join(small_camvid, 'trainannot')
    classes = iio.imread(os.path.join(annotations, os.listdir(annotations)[0]))
    assert classes.dtype == np.uint8 and set(np.unique(classes)) <= set(synthetic.SCENE_CLASS.values())
    assert {camvid.ROAD, synthetic.SCENE_CLASS['sky']} <= set(np.unique(classes))
    image, scene = synthetic.render_scene_classes(np.random.default_rng(7), 64, 96)
    kitti_image, _ = synthetic.render_scene(np.random.default_rng(7), 64, 96)
    np.testing.assert_array_equal(image, kitti_image)  # the same scene as the KITTI-layout one


def test_main_py_synthetic_writes_the_camvid_set_and_never_into_an_existing_folder(tmp_path, capsys):
    root = tmp_path / 'demo'
    assert main.main(['synthetic', str(root), '--counts', '2', '1', '1']) == 0
    assert datasets.provider(str(root)).KIND == 'camvid'
    layout = datasets.open_layout(str(root))
    assert (len(layout.train), len(layout.val), len(layout.test)) == (2, 1, 1)
    before = sorted(p.name for p in root.rglob('*'))
    assert main.main(['synthetic', str(root), '--counts', '1', '1', '1']) == 2
    assert 'already exists' in capsys.readouterr().err and sorted(p.name for p in root.rglob('*')) == before
    (tmp_path / 'mine.partial').mkdir()
    (tmp_path / 'mine.partial' / 'notes.txt').write_text('a folder of the user that happens to have that name')
    assert main.main(['synthetic', str(tmp_path / 'mine'), '--counts', '1', '1', '1']) == 2
    assert (tmp_path / 'mine.partial' / 'notes.txt').exists() and not (tmp_path / 'mine').exists()
    interrupted = tmp_path / 'again.partial'
    interrupted.mkdir()
    (interrupted / files.STAGING_MARK).touch()  # an interrupted generation: made anew
    assert main.main(['synthetic', str(tmp_path / 'again'), '--counts', '1', '1', '1']) == 0
    assert not interrupted.exists() and not (tmp_path / 'again' / files.STAGING_MARK).exists()
