"""helper.py, Udacity's data functions: test overlays without growing the graph, and inference samples written into
a new folder."""
import os

import imageio.v3 as iio
import tensorflow.compat.v1 as tf

import helper
from tests.support import thin_fcn


def test_gen_test_output_does_not_grow_the_graph(thin_vgg, small_dataset):
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        outputs = helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                         os.path.join(small_dataset, 'testing'), (64, 224))
        name, first = next(outputs)
        ops = len(sess.graph.get_operations())
        rest = list(outputs)
        again = list(helper.gen_test_output(sess, net['logits'], net['keep_prob'], net['image_input'],
                                            os.path.join(small_dataset, 'testing'), (64, 224)))
        assert len(sess.graph.get_operations()) == ops
    assert len(rest) == 3 and len(again) == 4
    assert first.shape == iio.imread(os.path.join(small_dataset, 'testing', 'image_2', name)).shape


def test_save_inference_samples_writes_an_overlay_per_kitti_test_image_into_a_new_folder(thin_vgg, small_dataset,
                                                                                          tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'data_road').symlink_to(small_dataset)  # Udacity's data_dir/data_road/testing/image_2
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    with tf.Session() as sess:
        net = thin_fcn(sess, thin_vgg)
        folders = [helper.save_inference_samples(str(tmp_path / 'runs'), str(tmp_path / 'data'), sess, (64, 224),
                                                 net['logits'], net['keep_prob'], net['image_input'])
                   for _ in range(2)]
    assert folders[0] != folders[1] and all(os.path.dirname(f) == str(tmp_path / 'runs') for f in folders)
    assert sorted(os.listdir(folders[0])) == sorted(os.listdir(test_dir))
    for name in os.listdir(test_dir):
        assert iio.imread(os.path.join(folders[0], name)).shape == iio.imread(os.path.join(test_dir, name)).shape
