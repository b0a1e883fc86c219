"""Helpers and constants shared by the test files and project_tests.py (imported as `tests.support`; the fixtures
are in conftest.py): thin SavedModels' channels and the FCN-8s on them, KITTI-layout and Cityscapes-layout folders,
a loopback HTTP server, zip, HDF5 and 16-bit PNG makers, `python main.py` in a subprocess."""
import http.server
import io
import os
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib

import h5py
import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf

import main
from fcn8s import datasets, recipes, synthetic, vgg, weights
from fcn8s.images import read_rgb, resize_image

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's folder, where main.py is
KITTI_DIR = os.path.join(HERE, 'data', 'data_road')
KITTI_SAMPLES = os.path.join(HERE, '..', 'shared', 'kitti_samples')
CAMVID = os.path.join(HERE, '..', 'shared', 'camvid')  # SegNet's CamVid train and val splits: real driving images
THIN = (4, 8, 16, 32, 32, 64)  # VGG16 channels cut down so that tests run in seconds
SMALL_SIZES = ((70, 230), (64, 224), (72, 240))  # mixed sizes, like KITTI's, but small


def init_new_variables(sess, restored=()):
    sess.run(tf.variables_initializer([v for v in tf.global_variables() if v.name not in restored]))


def thin_fcn(sess, vgg_path):
    """Load the thin encoder, add FCN-8s and the training ops; return the tensors the tests need."""
    image_input, keep_prob, layer3, layer4, layer7 = main.load_vgg(sess, vgg_path)
    restored = {v.name for v in tf.global_variables()}
    correct_label = tf.placeholder(tf.float32, [None, None, None, 2])
    learning_rate = tf.placeholder(tf.float32, [])
    last = main.layers(layer3, layer4, layer7, 2)
    logits, train_op, loss = main.optimize(last, correct_label, learning_rate, 2)
    init_new_variables(sess, restored)
    return dict(image_input=image_input, keep_prob=keep_prob, correct_label=correct_label,
                learning_rate=learning_rate, last=last, logits=logits, train_op=train_op, loss=loss)


class FileServer:
    """A loopback HTTP server for download tests: serves `files` {path: bytes} with HTTP Range support, 404 for
    anything else. `cut` {path: n}: the first response for path stops after n bytes of its body (the headers
    promise all of it), as a dropped connection does. `ranges=False`: a server that ignores Range headers."""

    def __init__(self, files, cut=None, ranges=True):
        files, cut, requests = dict(files), dict(cut or {}), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append((self.path, self.headers.get('Range')))
                body = files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                start = int(self.headers['Range'][len('bytes='):-1]) if ranges and self.headers['Range'] else 0
                if start >= len(body) > 0:
                    self.send_response(416)
                    self.send_header('Content-Range', f'bytes */{len(body)}')
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
                self.send_header('Content-Length', str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:start + cut.pop(self.path, len(body))])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.requests = requests
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make_zip(members):
    """Zip bytes of members {name: bytes}; a name ending in '@link' becomes a symbolic link to its bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in members.items():
            if name.endswith('@link'):
                info = zipfile.ZipInfo(name[:-len('@link')])
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, data)
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


def snapshot(folder):
    """{relative path: bytes} of every file under folder: to show that nothing of the user's changed."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def vgg_zip(saved_model_dir):
    """vgg.zip as Udacity's: the SavedModel's files under vgg/."""
    return make_zip({os.path.join('vgg', path): data for path, data in snapshot(saved_model_dir).items()})


def zipfile_members(body):
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def keras_layers(notop=False):
    """Keras VGG16's layer names in order, weight-less layers included."""
    names = ['input_1']
    for block, depth in vgg.BLOCKS:
        names += [f'block{block}_conv{i}' for i in range(1, depth + 1)] + [f'block{block}_pool']
    return names if notop else names + ['flatten', 'fc1', 'fc2', 'predictions']


def write_keras_h5(path, channels, seed, notop=False):
    """Write random weights in the layout of Keras' `vgg16_weights_tf_dim_ordering_tf_kernels.h5` (or of its
    `_notop` variant) with the Keras-1 weight names; return {keras layer: (kernel, bias)} in Keras' shapes."""
    rng = np.random.default_rng(seed)
    in_channels, weights = 3, {}
    for (block, depth), out_channels in zip(vgg.BLOCKS, channels):
        for i in range(1, depth + 1):
            weights[f'block{block}_conv{i}'] = ((3, 3, in_channels, out_channels), 9 * in_channels)
            in_channels = out_channels
    if not notop:
        weights['fc1'] = ((7 * 7 * channels[4], channels[5]), 7 * 7 * channels[4])
        weights['fc2'] = ((channels[5], channels[5]), channels[5])
        weights['predictions'] = ((channels[5], 1000), channels[5])
    for layer, (shape, fan_in) in weights.items():  # He-scaled so that activations keep their size
        kernel = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
        weights[layer] = kernel, rng.uniform(-0.5, 0.5, shape[-1:]).astype(np.float32)
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [name.encode() for name in keras_layers(notop)]
        for layer in keras_layers(notop):
            group = f.create_group(layer)
            names = [f'{layer}_W_1:0', f'{layer}_b_1:0'] if layer in weights else []
            group.attrs['weight_names'] = np.array([name.encode() for name in names], dtype='S')
            for name, value in zip(names, weights.get(layer, ())):
                group.create_dataset(name, data=value)
    return weights


def run_main(*args, cwd=HERE, env=None):
    return subprocess.run([sys.executable, os.path.join(HERE, 'main.py'), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def write_png16(path, pixels):
    """A 16-bit PNG of uint16 pixels [H, W] (grey) or [H, W, 3] (RGB), as cameras and dataset exports write them:
    written by hand, since Pillow writes no 16-bit RGB (one unfiltered scanline after another, big-endian)."""
    height, width = pixels.shape[:2]
    raw = b''.join(b'\0' + row.astype('>u2').tobytes() for row in pixels)

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw))
                + chunk(b'IEND', b''))


def sample_batch(small_dataset, shape=(64, 224)):
    """(a test image of the small dataset, uint8 [h, w, 3]; it resized to shape, float32 [1, H, W, 3])."""
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    image = read_rgb(os.path.join(test_dir, sorted(os.listdir(test_dir))[0]))
    return image, resize_image(image, shape)[None].astype(np.float32)


def resolve_dataset(args):
    """datasets.resolve for parsed training flags, as main.load_data calls it."""
    counts = recipes.RECIPES['synthetic']['num_train'], recipes.RECIPES['synthetic']['num_test']
    return datasets.resolve(args.dataset, args.data_dir, args.kitti_url, not args.no_download, counts)


def resolve_weights(args):
    """weights.resolve_weights for parsed training flags, as main.run calls it."""
    return weights.resolve_weights(args.data_dir, args.vgg_init, args.vgg_dir, args.imagenet_weights, args.vgg_url,
                                   download=not args.no_download)


# CamVid classes of the synthetic scenes -> Cityscapes label ids (road, sidewalk, building, vegetation, sky, car).
CAMVID_TO_CITYSCAPES = {3: 7, 4: 8, 1: 11, 5: 21, 0: 23, 8: 26}


def make_cityscapes(root, counts=(('train', 'aachen', 3), ('train', 'bochum', 3), ('val', 'frankfurt', 3),
                                  ('test', 'berlin', 2)), size=(64, 128), seed=2):
    """A tiny Cityscapes-layout folder of synthetic scenes: leftImg8bit/<split>/<city>/*_leftImg8bit.png and
    gtFine/<split>/<city>/*_gtFine_labelIds.png (none for test); a band of 'ego vehicle' (id 1, void) at the
    bottom of each label, as Cityscapes has."""
    rng = np.random.default_rng(seed)
    for split, city, count in counts:
        for folder in ('leftImg8bit', 'gtFine'):
            os.makedirs(os.path.join(root, folder, split, city), exist_ok=True)
        for i in range(count):
            image, classes = synthetic.render_scene_classes(rng, *size)
            ids = np.zeros(size, np.uint8)
            for camvid_class, label_id in CAMVID_TO_CITYSCAPES.items():
                ids[classes == camvid_class] = label_id
            ids[-4:] = 1
            stem = f'{city}_{i:06d}_000019'
            iio.imwrite(os.path.join(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'), image)
            if split != 'test':
                iio.imwrite(os.path.join(root, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'), ids)
    return str(root)
