"""fcn8s/infer.py, `main.py infer`: images, folders and videos through every kind of model (TensorFlow, TFLite, ONNX
Runtime, OpenVINO), test-time flip, the bird's-eye view, and what it refuses or skips."""
import os
import re
import shutil

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

import main
from fcn8s import bev, conversion, files, inference, models, paths, synthetic, video
from tests.support import sample_batch, snapshot, write_png16


def test_infer_runs_the_onnx_model_and_paints_as_the_frozen_graph(optimized_run, small_dataset, tmp_path, capsys):
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    onnx_file = os.path.join(optimized_run, paths.OPTIMIZED_DIR, 'model.onnx')
    for name, model, extra in (('pb', optimized_run, ['--precision', 'fp32', '--runtime', 'tensorflow']),
                               ('onnx', onnx_file, []), ('runtime', optimized_run, ['--runtime', 'onnxruntime',
                                                                                     '--precision', 'fp32']),
                               ('openvino', onnx_file, ['--runtime', 'openvino'])):
        assert main.main(['infer', '--model', model, '--input', test_dir, '--output', str(tmp_path / name),
                          '--probabilities', *extra]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert ('fp32.pb (fp32)' if name == 'pb' else 'model.onnx') in first and 'run at 64x224' in first
        assert name == 'pb' or ('OpenVINO on CPU' if name == 'openvino' else 'ONNX Runtime on CPU') in first
    for name in os.listdir(test_dir):
        frozen = iio.imread(tmp_path / 'pb' / 'probabilities' / name).astype(int)
        assert frozen.std() > 0
        for other in ('onnx', 'runtime', 'openvino'):
            assert np.abs(iio.imread(tmp_path / other / 'probabilities' / name).astype(int) - frozen).max() <= 1
    assert main.main(['infer', '--model', optimized_run, '--input', test_dir, '--output', str(tmp_path / 'int8'),
                      '--runtime', 'onnxruntime', '--precision', 'int8']) == 0
    assert 'model_int8.onnx (onnx-int8, ONNX Runtime on CPU)' in capsys.readouterr().out
    assert main.main(['infer', '--model', optimized_run, '--input', test_dir, '--output', str(tmp_path / 'ov8'),
                      '--runtime', 'openvino', '--precision', 'int8']) == 0
    assert 'model_int8.onnx (openvino-int8, OpenVINO on CPU)' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'ov8')) == sorted(os.listdir(tmp_path / 'int8'))


def test_infer_refuses_a_damaged_or_sizeless_onnx_model(optimized_run, small_dataset, tmp_path, capsys):
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    body = open(os.path.join(optimized_run, paths.OPTIMIZED_DIR, 'model.onnx'), 'rb').read()
    (tmp_path / 'damaged.onnx').write_bytes(body[:len(body) // 2])  # a copy cut short
    (tmp_path / 'lone.onnx').write_bytes(body)  # no run folder around it to say its size
    for model, message, runtime in (
            ('damaged.onnx', 'ONNX Runtime cannot load it as a model, the file may be damaged', 'auto'),
            ('damaged.onnx', 'OpenVINO cannot read it as a model, the file may be damaged', 'openvino'),
            ('lone.onnx', 'its input size is dynamic', 'auto'), ('lone.onnx', 'its input size is dynamic', 'openvino')):
        assert main.main(['infer', '--model', str(tmp_path / model), '--input', image, '--output',
                          str(tmp_path / 'o'), '--runtime', runtime]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: --model {tmp_path / model}: ' if model == 'lone.onnx' else
                              f'error: {tmp_path / model}: ') and message in err
        assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err and not os.path.exists(tmp_path / 'o')


def write_half_road_model(path, shape=(32, 64), left=False):
    """A frozen graph in the optimized models' format whose road is the bottom half of every image (the left half
    with left)."""
    road = np.zeros((1, *shape), np.float32)
    road[:, shape[0] // 2:] = 1
    if left:
        road = np.zeros((1, *shape), np.float32)
        road[:, :, :shape[1] // 2] = 1
    with tf.Graph().as_default() as graph:
        image = tf.placeholder(tf.float32, [1, *shape, 3], name=inference.INPUT)
        tf.add(tf.constant(road), 0 * image[..., 0], name='road_probability')
    files.atomic_write(str(path), graph.as_graph_def().SerializeToString())
    return str(path)


def test_infer_writes_an_overlay_video_at_the_input_size_and_frame_rate(tmp_path):
    model = write_half_road_model(tmp_path / 'half.pb')
    rng = np.random.default_rng(0)
    frames = [synthetic.render_scene(rng, 75, 241)[0] for _ in range(7)]  # odd sizes, as KITTI's 375x1242
    writer = video.video_writer(str(tmp_path / 'in.mp4'), 12, (75, 241))
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    out = str(tmp_path / 'out.mp4')
    assert main.main(['infer', '--model', model, '--input', str(tmp_path / 'in.mp4'), '--output', out,
                      '--probabilities']) == 0
    source = np.stack(list(iio.imiter(str(tmp_path / 'in.mp4'), plugin='FFMPEG'))).astype(float)
    overlaid = np.stack(list(iio.imiter(out, plugin='FFMPEG'))).astype(float)
    assert overlaid.shape == source.shape == (7, 75, 241, 3)
    assert iio.immeta(out, plugin='FFMPEG')['fps'] == 12
    # Bottom half: half-way to OVERLAY_COLOR (green up, red and blue down); top half: untouched (up to H.264).
    change = (overlaid - source).mean(axis=(0, 2))  # [row, channel]
    assert (change[46:, 1] > 30).all() and (change[46:, [0, 2]] < -15).all()
    assert (np.abs(change[:28]) < 4).all()
    maps = sorted(os.listdir(tmp_path / 'out_probabilities'))
    assert maps == [f'frame_{i:06d}.png' for i in range(7)]
    confidence = iio.imread(tmp_path / 'out_probabilities' / maps[0])
    assert confidence.dtype == np.uint8 and confidence.shape == (75, 241)
    assert (confidence[:28] == 0).all() and (confidence[46:] == 255).all()
    assert not os.path.exists(tmp_path / 'out.partial.mp4')


def write_half_road_onnx(path, shape=(32, 64)):
    """write_half_road_model's model as ONNX, of any batch: several frames per call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    road = np.zeros((1, *shape), np.float32)
    road[:, shape[0] // 2:] = 1
    graph = helper.make_graph(
        [helper.make_node('Mul', [inference.INPUT, 'zero'], ['nothing']),
         helper.make_node('ReduceSum', ['nothing', 'channel'], ['flat'], keepdims=0),
         helper.make_node('Add', ['flat', 'road'], ['road_probability'])],
        'half_road', [helper.make_tensor_value_info(inference.INPUT, TensorProto.FLOAT, ['batch', *shape, 3])],
        [helper.make_tensor_value_info('road_probability', TensorProto.FLOAT, ['batch', *shape])],
        [numpy_helper.from_array(np.zeros((), np.float32), 'zero'), numpy_helper.from_array(road, 'road'),
         numpy_helper.from_array(np.array([3], np.int64), 'channel')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', conversion.ONNX_OPSET)])
    model.ir_version = 8  # what opset 17 came with; onnx 1.23 writes a newer one than ONNX Runtime 1.31 reads
    onnx.save(model, str(path))
    return str(path)


def test_a_video_goes_through_the_model_in_batches_with_the_same_overlays(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    writer = video.video_writer(str(tmp_path / 'in.mp4'), 10, (48, 96))
    for _ in range(7):
        writer.append_data(synthetic.render_scene(rng, 48, 96)[0])
    writer.close()
    one = write_half_road_model(tmp_path / 'half.pb')
    assert main.main(['infer', '--model', one, '--input', str(tmp_path / 'in.mp4'), '--output',
                      str(tmp_path / 'one.mp4'), '--probabilities']) == 0
    said = capsys.readouterr().out
    assert re.search(r"7 frame\(s\) in [\d.]+ s: [\d.]+ per second overall, [\d.]+x the model's own [\d.]+ images/s at "
                     r'batch 1 \(it had [\d.]+ ms of each frame\)', said), said
    monkeypatch.setattr(models, 'VIDEO_BATCHES', (4,))  # 7 frames: a batch of 4, then one of 3
    batched = write_half_road_onnx(tmp_path / 'half.onnx')
    assert main.main(['infer', '--model', batched, '--input', str(tmp_path / 'in.mp4'), '--output',
                      str(tmp_path / 'four.mp4'), '--probabilities']) == 0
    assert 'at batch 4' in capsys.readouterr().out
    maps = sorted(os.listdir(tmp_path / 'one_probabilities'))
    assert maps == sorted(os.listdir(tmp_path / 'four_probabilities')) and len(maps) == 7
    for name in maps:  # frames in their order, each with its own map
        np.testing.assert_array_equal(iio.imread(tmp_path / 'one_probabilities' / name),
                                      iio.imread(tmp_path / 'four_probabilities' / name))
    one, four = (np.stack(list(iio.imiter(str(tmp_path / f'{n}.mp4'), plugin='FFMPEG'))) for n in ('one', 'four'))
    assert one.shape == four.shape == (7, 48, 96, 3) and (one == four).all()
    source = np.stack(list(iio.imiter(str(tmp_path / 'in.mp4'), plugin='FFMPEG')))
    assert np.abs(four.astype(float) - source).mean(axis=(1, 2, 3)).min() > 5  # each frame overlaid, none skipped


def test_infer_tta_flip_averages_each_image_with_its_mirror(tmp_path, capsys):
    """A model that calls the left half road: the mirror image's prediction calls the right half road, and their
    mean is 0.5 everywhere."""
    model = write_half_road_model(tmp_path / 'left.pb', left=True)
    (tmp_path / 'in').mkdir()
    iio.imwrite(tmp_path / 'in' / 'a.png', synthetic.render_scene(np.random.default_rng(3), 32, 64)[0])
    for tta in ('none', 'flip'):
        assert main.main(['infer', '--model', model, '--input', str(tmp_path / 'in'), '--output',
                          str(tmp_path / tta), '--probabilities', '--tta', tta]) == 0
        assert ('--tta flip' in capsys.readouterr().out) == (tta == 'flip')
    plain = iio.imread(tmp_path / 'none' / 'probabilities' / 'a.png')
    assert (plain[:, :32] == 255).all() and (plain[:, 32:] == 0).all()
    assert np.isin(iio.imread(tmp_path / 'flip' / 'probabilities' / 'a.png'), (127, 128)).all()


def test_infer_writes_overlays_of_a_folder_at_each_image_size(optimized_run, small_dataset, tmp_path, capsys):
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    out = str(tmp_path / 'out')
    args = ['infer', '--model', optimized_run, '--input', test_dir, '--output', out, '--precision', 'int8',
            '--probabilities']
    assert main.main(args) == 0
    assert 'int8.tflite (tflite-int8)' in capsys.readouterr().out
    for name in os.listdir(test_dir):
        shape = iio.imread(os.path.join(test_dir, name)).shape
        assert iio.imread(os.path.join(out, name)).shape == shape
        assert iio.imread(os.path.join(out, 'probabilities', name)).shape == shape[:2]
    before = snapshot(tmp_path)
    assert main.main(args) == 2  # nothing is overwritten
    assert 'um_000000.png exists (and 7 more)' in capsys.readouterr().err and snapshot(tmp_path) == before


def test_infer_draws_the_birds_eye_view_of_each_image_with_a_calibration(thin_run, small_dataset, tmp_path, capsys):
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    calib = tmp_path / 'calib'
    shutil.copytree(os.path.join(small_dataset, 'testing', 'calib'), calib)
    os.remove(calib / 'uu_000000.txt')  # an image without its camera: no bird's-eye view, never another's
    out = tmp_path / 'out'
    assert main.main(['infer', '--model', thin_run, '--input', test_dir, '--output', str(out), '--precision',
                      'fp32', '--probabilities', '--bev', str(calib)]) == 0
    said = capsys.readouterr()
    assert f'{calib} has no calibration of {os.path.join(test_dir, "uu_000000.png")}' in said.out + said.err
    names = sorted(os.listdir(test_dir))
    assert sorted(os.listdir(out / 'bev')) == [n for n in names if n != 'uu_000000.png']
    for name in os.listdir(out / 'bev'):
        picture = iio.imread(out / 'bev' / name)
        assert picture.shape == (800, 400, 3)
        # The road painted green in the bird's-eye view is the road of the perspective confidence map, seen from
        # above through the image's own camera.
        confidence = iio.imread(out / 'probabilities' / name)
        homography = bev.plane_homography(bev.read_calibration(str(calib / name.replace('.png', '.txt'))))
        road, inside = bev.bev_probability(confidence / 255, homography)
        expected = bev.bev_picture(iio.imread(os.path.join(test_dir, name))[..., :3], confidence / 255, homography)
        np.testing.assert_array_equal(picture, expected)
        assert (road[inside] > 0.5).any() and not inside.all()
    assert main.main(['infer', '--model', thin_run, '--input', test_dir, '--output', str(tmp_path / 'o2'),
                      '--bev', str(tmp_path / 'nowhere')]) == 2
    assert 'no such calibration file or folder' in capsys.readouterr().err


def test_infer_segments_a_16_bit_png_as_its_8_bit_picture(optimized_run, small_dataset, tmp_path):
    image, _ = sample_batch(small_dataset)
    grey16 = (image.mean(axis=-1) * 257).astype(np.uint16)
    (tmp_path / 'in16').mkdir()
    (tmp_path / 'in8').mkdir()
    write_png16(tmp_path / 'in16' / 'frame.png', grey16)
    iio.imwrite(tmp_path / 'in8' / 'frame.png', np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1))
    for bits in ('16', '8'):
        assert main.main(['infer', '--model', optimized_run, '--input', str(tmp_path / f'in{bits}'), '--output',
                          str(tmp_path / f'out{bits}'), '--precision', 'fp32', '--probabilities']) == 0
    confidence = iio.imread(tmp_path / 'out16' / 'probabilities' / 'frame.png')
    assert confidence.shape == grey16.shape and confidence.std() > 0  # segmented, not refused nor blank
    np.testing.assert_array_equal(confidence, iio.imread(tmp_path / 'out8' / 'probabilities' / 'frame.png'))


@pytest.mark.parametrize('model, input, extra, message', [
    ('{run}/nowhere', '{image}', [], 'no such file or folder'),
    ('{run}/optimized/int8.tflite', '{image}', ['--precision', 'fp32'], 'has its own precision'),
    ('{run}/saved_model', '{image}', ['--precision', 'int8'], 'python main.py optimize'),
    ('{run}/config.json', '{image}', [], 'must be a frozen graph'),
    ('{run}/optimized/model.onnx', '{image}', ['--precision', 'int8'], 'has its own precision'),
    ('{run}/optimized/model.onnx', '{image}', ['--runtime', 'tensorflow'], 'does not run ONNX files'),
    ('{run}', '{image}', ['--runtime', 'onnxruntime', '--precision', 'bf16'], 'runs fp32 or int8 models, not bf16'),
    ('{run}', '{image}', ['--runtime', 'openvino', '--precision', 'bf16'], 'runs fp32 or int8 models, not bf16'),
    ('{run}/optimized/int8.tflite', '{image}', ['--runtime', 'openvino'], 'does not run TFLite files'),
    ('{run}', '{run}/config.json', [], 'expected a PNG/JPEG image'),
    ('{run}', '{run}/checkpoints', [], 'no PNG or JPEG files'),
])
def test_infer_refuses_what_it_cannot_use(optimized_run, small_dataset, tmp_path, capsys, model, input, extra,
                                         message):
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    fill = lambda text: text.format(run=optimized_run, image=image)
    assert main.main(['infer', '--model', fill(model), '--input', fill(input), '--output', str(tmp_path / 'o'),
                      *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err and not os.path.exists(tmp_path / 'o')


def test_an_explicit_precision_is_accepted_where_it_is_the_model_files_own(optimized_run, small_dataset, tmp_path,
                                                                            capsys):
    """A TFLite or ONNX model has its own precision: --precision may name that one, and no other."""
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    onnx_fp32 = write_half_road_onnx(tmp_path / 'half.onnx')
    optimized = os.path.join(optimized_run, paths.OPTIMIZED_DIR)
    for model, own in ((onnx_fp32, 'fp32'), (os.path.join(optimized, 'model_int8.onnx'), 'int8'),
                       (os.path.join(optimized, 'int8.tflite'), 'int8')):
        output = str(tmp_path / 'o' / os.path.basename(model))
        assert main.main(['infer', '--model', model, '--input', image, '--output', output, '--precision', own]) == 0
    assert main.main(['infer', '--model', onnx_fp32, '--input', image, '--output', str(tmp_path / 'o2'),
                      '--precision', 'int8']) == 2
    err = capsys.readouterr().err
    assert f'error: --model {onnx_fp32}: an ONNX model has its own precision, fp32, not int8: drop --precision' in err
    assert 'Traceback' not in err and not os.path.exists(tmp_path / 'o2')


def test_infer_refuses_foreign_models_and_clashing_names(small_dataset, tmp_path, capsys):
    image = os.path.join(small_dataset, 'testing', 'image_2', 'um_000000.png')
    (tmp_path / 'bad.tflite').write_bytes(b'not a flatbuffer')
    (tmp_path / 'empty.pb').write_bytes(tf.GraphDef().SerializeToString())  # parses, but has no road model
    for model in ('bad.tflite', 'empty.pb'):
        assert main.main(['infer', '--model', str(tmp_path / model), '--input', image, '--output',
                          str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err
        assert 'cannot be loaded as a model of this project' in err and 'Traceback' not in err
    (tmp_path / 'garbage.pb').write_bytes(b'\xff' * 16)  # not a protobuf at all
    assert main.main(['infer', '--model', str(tmp_path / 'garbage.pb'), '--input', image, '--output',
                      str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert 'not a frozen graph' in err and 'Traceback' not in err and not os.path.exists(tmp_path / 'o')
    pictures = tmp_path / 'pictures'
    pictures.mkdir()
    shutil.copy(image, pictures / 'a.png')
    Image.open(image).convert('RGB').save(pictures / 'a.jpg')
    assert main.main(['infer', '--model', str(tmp_path / 'empty.pb'), '--input', str(pictures), '--output',
                      str(tmp_path / 'o')]) == 2
    assert 'would both be written as a.png' in capsys.readouterr().err and not os.path.exists(tmp_path / 'o')


def test_infer_skips_an_unreadable_image_writes_the_rest_and_says_what_it_skipped(small_dataset, tmp_path, capsys):
    model = write_half_road_model(tmp_path / 'half.pb')
    pictures = tmp_path / 'pictures'
    shutil.copytree(os.path.join(small_dataset, 'testing', 'image_2'), pictures)
    (pictures / 'umm_000000.png').write_bytes((pictures / 'umm_000000.png').read_bytes()[:300])  # cut short
    assert main.main(['infer', '--model', model, '--input', str(pictures), '--output', str(tmp_path / 'out')]) == 2
    captured = capsys.readouterr()
    assert 'warning: skipped: ' in captured.err + captured.out and 'Traceback' not in captured.err
    assert re.search(r'error: 1 of 4 image\(s\) could not be read and were skipped: \S+umm_000000.png cannot be '
                     'read as an image', captured.err), captured.err
    assert sorted(os.listdir(tmp_path / 'out')) == ['um_000000.png', 'um_000001.png', 'uu_000000.png']


def test_infer_says_when_a_video_is_cut_short(tmp_path, capsys):
    """A Matroska file cut in half (a partial download) still announces all its frames: the overlay video ends
    at the cut, and infer says how many frames it read of how many."""
    model = write_half_road_model(tmp_path / 'half.pb')
    rng = np.random.default_rng(1)
    with imageio.v2.get_writer(str(tmp_path / 'full.mkv'), format='FFMPEG', mode='I', fps=12, codec='libx264',
                               macro_block_size=1, pixelformat='yuv444p') as writer:
        for _ in range(24):
            writer.append_data(synthetic.render_scene(rng, 75, 241)[0])
    body = (tmp_path / 'full.mkv').read_bytes()
    (tmp_path / 'cut.mkv').write_bytes(body[:len(body) // 2])
    out = str(tmp_path / 'out.mp4')
    assert main.main(['infer', '--model', model, '--input', str(tmp_path / 'cut.mkv'), '--output', out]) == 0
    said = re.search(r'warning: \S+cut.mkv: read (\d+) of the 24 frames its container announces: the file is '
                     'probably cut short', capsys.readouterr().out)
    assert said and 0 < int(said.group(1)) < 20
    assert len(list(iio.imiter(out, plugin='FFMPEG'))) == int(said.group(1))
    assert main.main(['infer', '--model', model, '--input', str(tmp_path / 'full.mkv'), '--output',
                      str(tmp_path / 'full.mp4')]) == 0
    assert 'cut short' not in capsys.readouterr().out  # a whole file says nothing
