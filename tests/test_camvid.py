"""fcn8s/camvid.py: CamVid's class ids, its own val and test splits, and real frames of SegNet's CamVid read and
trained on."""
import os
import re
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import helper
import main
from fcn8s import camvid, datasets, metrics
from fcn8s.errors import UserError


def test_camvid_ids_keep_their_classes_and_11_is_ignored():
    ids = np.array([[0, 3, 8, 10, 11]], np.uint8)
    np.testing.assert_array_equal(camvid.decode_label('a.png', ids, camvid.decoder(False)), [[0, 3, 8, 10, -1]])
    np.testing.assert_array_equal(camvid.decode_label('a.png', ids, camvid.decoder(True)), [[0, 1, 0, 0, -1]])
    with pytest.raises(UserError, match=r"a.png has label ids \[12, 37\]: CamVid's class ids are 0-10"):
        camvid.decode_label('a.png', np.array([[12, 37, 3]], np.uint8), camvid.decoder(False))


def test_camvid_needs_its_val_labels_but_not_its_test_labels(small_camvid, tmp_path):
    root = tmp_path / 'camvid'
    shutil.copytree(small_camvid, root)
    (root / 'testannot' / '0001TP_000003.png').unlink()  # withheld, as benchmarks do
    layout = datasets.open_layout(str(root))
    assert [label for name, _, label in layout.test if name == '0001TP_000003.png'] == [None]
    label = root / 'valannot' / '0006R0_000002.png'
    label.unlink()
    with pytest.raises(UserError, match=f'0006R0_000002.png has no label: {re.escape(str(label))} is missing .1 of '
                                        '4 val images'):
        datasets.open_layout(str(root))


# ----------------------------------------------------------------------------- real frames: SegNet's CamVid

def test_real_camvid_frames_are_read_as_a_camvid_layout_with_its_11_classes_and_void(real_camvid):
    layout = datasets.open_layout(real_camvid)
    assert layout.kind == 'camvid' and layout.classes == camvid.CLASSES and len(layout.classes) == 11
    assert [name for name, _, _ in layout.train] == sorted(os.listdir(os.path.join(real_camvid, 'train')))
    assert all(os.path.basename(image) == os.path.basename(label) for _, image, label in layout.train + layout.val)
    raw_void, void, seen = 0, 0, set()
    for _, image_path, label_path in layout.train + layout.val:
        image, classes = layout.load_pair(image_path, label_path)
        raw = iio.imread(label_path)
        assert image.shape == (360, 480, 3) and classes.shape == (360, 480) and classes.dtype == np.int8
        assert set(np.unique(classes)) <= set(range(11)) | {metrics.IGNORE}
        np.testing.assert_array_equal(classes[raw < 11], raw[raw < 11])  # ids 0-10 are the classes themselves
        raw_void, void = raw_void + int((raw == camvid.UNLABELLED).sum()), void + int((classes == metrics.IGNORE).sum())
        seen |= set(np.unique(classes[classes >= 0]).tolist())
    assert void == raw_void > 0  # unlabelled (11), and only it, is void
    assert {camvid.ROAD, camvid.CLASSES.index('Sky'), camvid.CLASSES.index('Building')} <= seen


def test_a_short_training_on_real_camvid_frames_lowers_the_loss(real_camvid, thin_vgg):
    layout = datasets.open_layout(real_camvid)
    pairs = [(image, label) for _, image, label in layout.train]
    get_batches_fn = helper.gen_batch_function(None, (96, 128), pairs=pairs, load_pair=layout.load_pair,
                                               num_classes=11)
    images, labels = next(get_batches_fn(6))
    with tf.Graph().as_default(), tf.Session() as sess:
        net = main.build_fcn(sess, thin_vgg, 0, num_classes=11)
        feed = {net['input_image']: images, net['correct_label']: labels, net['keep_prob']: 1.0,
                net['learning_rate']: 1e-3}
        losses = [sess.run([net['train_op'], net['cross_entropy_loss']], feed)[1] for _ in range(20)]
    assert losses[0] == pytest.approx(np.log(11), rel=0.1)  # score layers start near zero: a uniform guess
    assert losses[-1] < 0.8 * losses[0]
