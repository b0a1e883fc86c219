"""fcn8s/variants.py, `main.py optimize`: every variant and its table, an OpenVINO failure that costs only its rows,
and a multi-class run optimized and then inferred with."""
import json
import os
import shutil

import imageio.v3 as iio
import pytest

import main
from fcn8s import evaluation, inference, paths, precision, run_folder, variants


def test_optimize_and_infer_work_on_a_multi_class_run(camvid_run, small_camvid, tmp_path, capsys):
    """optimize scores each variant on mean IoU (with --tta flip here); infer writes class-coloured overlays and, with
    --probabilities, CamVid's label images, from the run folder and from an optimized file alone."""
    assert main.main(['optimize', '--checkpoint', camvid_run, '--runs', '2', '--tta', 'flip']) == 0
    report = json.load(open(os.path.join(camvid_run, 'optimized', 'optimization.json')))
    assert report['score_name'] == 'mean IoU' and report['tta'] == 'flip'
    assert 'each averaged with its mirror image (--tta flip)' in open(os.path.join(camvid_run, 'optimized',
                                                                                   'optimization.md')).read()
    fp32 = next(row for row in report['variants'] if row['variant'] == 'fp32')
    reference = next(row for row in report['variants'] if row['variant'] == 'saved_model')
    assert fp32['score'] == pytest.approx(reference['score'], abs=1e-3) and 0 < fp32['score'] <= 1
    test_dir = os.path.join(small_camvid, 'test')
    # (fp32 for the run folder: --precision auto could take a faster int8 model, whose labels differ a little)
    for model, out, extra in ((camvid_run, 'run', ['--precision', 'fp32']),
                              (os.path.join(camvid_run, 'optimized', 'int8.tflite'), 'file', [])):
        assert main.main(['infer', '--model', model, '--input', test_dir, '--output', str(tmp_path / out),
                          '--probabilities', *extra]) == 0
        assert '11 classes' in capsys.readouterr().out
        for name in os.listdir(test_dir):
            assert iio.imread(tmp_path / out / name).shape == (64, 96, 3)
            labels = iio.imread(tmp_path / out / 'probabilities' / name)
            assert labels.shape == (64, 96) and labels.max() <= 10
    run_labels = iio.imread(os.path.join(camvid_run, 'labels', name))
    assert (iio.imread(tmp_path / 'run' / 'probabilities' / name) == run_labels).mean() > 0.99  # as training's


def test_optimize_writes_every_variant_and_its_table(optimized_run):
    out = os.path.join(optimized_run, paths.OPTIMIZED_DIR)
    report = json.load(open(os.path.join(out, 'optimization.json')))
    measured = {row['variant']: row for row in report['variants']}
    skipped = {row['variant']: row['reason'] for row in report['skipped']}
    assert set(measured) | set(skipped) == {'saved_model', *paths.VARIANT_FILES} and not set(measured) & set(skipped)
    assert ('bf16' in skipped) == (precision.mixed_precision()[0] is None) and set(skipped) <= {'bf16'}
    for variant, row in measured.items():
        if variant != 'saved_model':
            assert os.path.getsize(os.path.join(out, row['file'])) / 2 ** 20 == pytest.approx(row['size_mb'])
        assert 0 < row['median_ms'] <= row['p90_ms'] and row['runs'] == 2
        assert row['images_per_s'] == pytest.approx(1000 / row['median_ms'])
        assert 0 <= row['score'] <= 1 and 0 <= row['iou'] <= 1
        assert row['score_change'] == pytest.approx(row['score'] - measured['fp32']['score'])
        assert row['speedup'] == pytest.approx(measured['fp32']['median_ms'] / row['median_ms'])
    assert report['image_shape'] == [64, 224] and report['val_images'] == 3 and report['calibration_images'] == 9
    assert report['score_name'] == 'MaxF'
    table = open(os.path.join(out, 'optimization.md')).read()
    assert all(f'| {variant} | {row["file"]} |' in table for variant, row in measured.items())
    assert all(f'Skipped: {variant}: {reason}' in table for variant, reason in skipped.items())
    assert not os.path.exists(out + '.partial')


def test_an_openvino_failure_skips_its_rows_and_keeps_onnx_runtimes(optimized_run, tmp_path, monkeypatch):
    """OpenVINO that cannot compile the model (a RuntimeError) costs its two rows, with the reason, not the run."""
    config, saved_model = run_folder.finished_run(optimized_run, '--checkpoint')
    layout, examples = evaluation.validation_set(optimized_run, config)
    staging = tmp_path / 'staging'
    staging.mkdir()
    shutil.copy(os.path.join(optimized_run, paths.OPTIMIZED_DIR, 'fp32.pb'), staging)

    def broken(path, image_shape=None):
        raise RuntimeError('Exception from src/plugin.cpp:1:\nUnsupported operation in this made-up failure')
    monkeypatch.setattr(inference, 'openvino_predictor', broken)
    calibration = variants.calibration_images(layout, config['data']['val_names'], (64, 224), count=4)
    rows, skipped = variants.onnx_variant_rows(saved_model, (64, 224), examples, calibration, str(staging), 2,
                                                   layout)
    assert [row['variant'] for row in rows] == ['onnx-fp32', 'onnx-int8']
    assert [row['variant'] for row in skipped] == ['openvino-fp32', 'openvino-int8']
    assert all(row['reason'].startswith('Exception from src/plugin.cpp') for row in skipped)
    assert os.path.isfile(staging / 'model.onnx') and os.path.isfile(staging / 'model_int8.onnx')
