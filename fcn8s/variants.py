"""`main.py optimize`: a finished run's model made fast for inference (frozen fp32, bf16, TFLite fp16 and int8,
ONNX fp32 and int8, each run by ONNX Runtime and by OpenVINO), each variant timed at batch 1 and scored on the
validation split, into RUN_DIR/optimized/."""
import os
import time

import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from fcn8s import conversion, evaluation, files, inference, run_folder
from fcn8s.errors import UserError
from fcn8s.images import read_rgb, resize_image
from fcn8s.metrics import is_road
from fcn8s.outputs import FLIP_SAID, flipped
from fcn8s.paths import ONNX_VARIANTS, OPTIMIZED_DIR, SERVING_DIR, VARIANT_FILES
from fcn8s.precision import machine, mixed_precision
from fcn8s.recipes import CALIBRATION_IMAGES, WARMUP_RUNS

# model.onnx must give fp32.pb's probabilities to within this (both are float32; they differ by the order of
# their sums): a larger difference is a wrong conversion, and the ONNX models are then skipped.
ONNX_TOLERANCE = 1e-4


def calibration_images(layout, exclude, image_shape, count=CALIBRATION_IMAGES):
    """Up to count training images of a layout.Layout (uint8 [H, W, 3] at image_shape), spread evenly over the
    sorted names, never one of exclude (the validation split)."""
    exclude = set(exclude)
    paths = [path for name, path, _ in sorted(layout.train) if name not in exclude]
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    return [resize_image(read_rgb(path), image_shape) for path in tqdm(chosen, desc='calibration images', leave=False)]


def measure_variant(name, predictor, examples, runs, layout, tta='none'):
    """A row of the optimization table: latency at batch 1, then the score (KITTI MaxF, or mean IoU) and IoU on
    examples, each image's prediction averaged with its mirror image's for tta 'flip'."""
    row = {'variant': name, **inference.latency(predictor, runs)}
    scored = flipped(predictor) if tta == 'flip' else predictor
    row.update(evaluation.predictor_scores(scored, examples, layout, desc=f'scoring {name}'))
    print(f'{name}: {row["median_ms"]:.1f} ms median, score {100 * row["score"]:.2f}', flush=True)
    return row


def largest_difference(predictor, reference, examples):
    """The largest |difference| of two predictors' probabilities (both at reference's (H, W)) on examples."""
    _, image_shape = reference
    largest = 0.0
    for images, _ in evaluation.network_batches(examples, image_shape, 1):
        batch = images.astype(np.float32)
        largest = max(largest, float(np.abs(predictor[0](batch) - reference[0](batch)).max()))
    return largest


def onnx_variant_rows(saved_model, image_shape, examples, calibration, staging, runs, layout, tta='none'):
    """(rows, skipped) of the ONNX variants: model.onnx and model_int8.onnx written into staging
    (conversion.write_onnx_variants), each run by ONNX Runtime and by OpenVINO, timed and scored as the others, with
    its largest difference from fp32.pb's probabilities on examples (max_abs_diff). All are skipped, with the
    reason, where tf2onnx or ONNX Runtime is missing or model.onnx differs from fp32.pb by more than
    ONNX_TOLERANCE; OpenVINO's where it is missing, cannot compile the model or differs by more."""
    print('making onnx-fp32 and onnx-int8 (a minute or two)', flush=True)
    try:
        built = conversion.write_onnx_variants(saved_model, calibration, staging)
    except UserError as e:  # a package of requirements.txt missing: the other variants are still worth having
        print(f'onnx: skipped: {e}', flush=True)
        return [], [{'variant': variant, 'reason': str(e)} for variant in ONNX_VARIANTS]
    fp32 = inference.variant_predictor('fp32', os.path.join(staging, VARIANT_FILES['fp32']))
    rows, skipped = [], []
    for variant in ONNX_VARIANTS:
        path = os.path.join(staging, VARIANT_FILES[variant])
        runtime = variant.split('-')[0]
        if any(row['variant'] == variant for row in skipped):
            continue  # its runtime failed on the fp32 model
        try:
            predictor = inference.variant_predictor(variant, path, image_shape)
            difference = largest_difference(predictor, fp32, examples)
        except (UserError, RuntimeError) as e:  # OpenVINO missing or failing: the other runtime's rows still count
            if runtime != 'openvino':
                raise
            reason = str(e).strip().splitlines()[0]
        else:
            print(f'{variant}: largest |Δ probability| against fp32.pb on the {len(examples)} validation images: '
                  f'{difference:.2e}', flush=True)
            reason = (f'{variant} differs from fp32.pb by up to {difference:.2e} in probability (more than '
                      f'{ONNX_TOLERANCE:g}): a wrong conversion' if variant.endswith('fp32') and
                      difference > ONNX_TOLERANCE else None)
        if reason and runtime == 'onnx':
            for file in {VARIANT_FILES[v] for v in ONNX_VARIANTS}:
                os.remove(os.path.join(staging, file))
            return [], [{'variant': v, 'reason': reason} for v in ONNX_VARIANTS]
        if reason:
            print(f'{variant}: skipped: {reason}', flush=True)
            gone = [v for v in ONNX_VARIANTS if v.startswith(runtime)] if variant.endswith('fp32') else [variant]
            skipped += [{'variant': v, 'reason': reason} for v in gone]
            continue
        row = measure_variant(variant, predictor, examples, runs, layout, tta)
        row.update(file=VARIANT_FILES[variant], size_mb=os.path.getsize(path) / 2 ** 20, max_abs_diff=difference)
        if variant in built:  # OpenVINO runs the files made for ONNX Runtime
            row['build_s'] = round(built[variant], 1)
        rows.append(row)
    return rows, skipped


def format_optimization_table(report):
    """optimization.md: the variants as a Markdown table, then the skipped ones with their reasons."""
    lines = [f'# Optimized models of {report["run"]}', '',
             f'Machine: {report["machine"]}; TensorFlow {report["tensorflow"]}. Input {report["image_shape"][0]}x'
             f'{report["image_shape"][1]}, batch 1: latency over {report["runs"]} runs after '
             f'{WARMUP_RUNS} warm-up runs. {report["score_name"]} and IoU ({report["iou_name"]}) on the '
             f'{report["val_images"]} validation images{", " + FLIP_SAID if report.get("tta") == "flip" else ""}. '
             f'tflite-int8 and onnx-int8 calibrated on {report["calibration_images"]} training images. Command: '
             f'`{report["command"]}`.', '',
             f'| variant | file | size (MB) | median (ms) | p90 (ms) | images/s | speed-up vs fp32 | '
             f'{report["score_name"]} (%) | Δ (pt) | IoU (%) | ΔIoU (pt) |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for row in report['variants']:
        lines.append(f'| {row["variant"]} | {row["file"]} | {row["size_mb"]:.1f} | {row["median_ms"]:.1f} | '
                     f'{row["p90_ms"]:.1f} | {row["images_per_s"]:.2f} | {row["speedup"]:.2f}x | '
                     f'{100 * row["score"]:.2f} | {100 * row["score_change"]:+.2f} | {100 * row["iou"]:.2f} | '
                     f'{100 * row["iou_change"]:+.2f} |')
    for row in report['variants']:
        if 'max_abs_diff' in row:
            lines.append(f'\n{row["variant"]}: largest |Δ probability| against fp32 on the validation images: '
                         f'{row["max_abs_diff"]:.2e}.')
    for row in report['skipped']:
        lines.append(f'\nSkipped: {row["variant"]}: {row["reason"]}.')
    return '\n'.join(lines) + '\n'


def optimize_command(args):
    """`main.py optimize`: the run's model frozen, in bf16, as TFLite fp16/int8 and as ONNX fp32/int8, each timed
    and scored. args: command_line.optimize_parser's (recorded in the report as the command that has them)."""
    config, saved_model = run_folder.finished_run(args.checkpoint, '--checkpoint')
    image_shape = tuple(config['settings']['image_shape'])
    layout, examples = evaluation.validation_set(args.checkpoint, config)
    calibration = calibration_images(layout, config['data']['val_names'], image_shape)
    if not calibration:
        raise UserError(f'--checkpoint {args.checkpoint}: no training image outside the validation split to '
                        'calibrate int8 on')
    out_dir = os.path.join(args.checkpoint, OPTIMIZED_DIR)
    # Staged: a failure leaves no half-made models, and the previous ones stay until the new are done.
    with files.writing(args.checkpoint, 'the optimized models'), \
            files.staged_folder(out_dir, replace=True) as staging:
        report = optimize_variants(args, saved_model, image_shape, examples, calibration, staging, layout)
        table = format_optimization_table(report)
        files.atomic_write(os.path.join(staging, 'optimization.md'), table)
    print(table + f'\nwritten to {out_dir}')


def optimize_variants(args, saved_model, image_shape, examples, calibration, staging, layout):
    """Make, time and score every variant into staging; write and return the report (optimization.json)."""
    print(f'freezing {saved_model} at {image_shape[0]}x{image_shape[1]}', flush=True)
    frozen = conversion.freeze(saved_model, image_shape)
    reference = measure_variant('saved_model', inference.saved_model_predictor(saved_model, image_shape),
                                examples, args.runs, layout, args.tta)
    reference.update(file=SERVING_DIR, size_mb=files.folder_bytes(saved_model) / 2 ** 20)
    rows, skipped = [], []
    precision, why = mixed_precision()
    for variant, file in VARIANT_FILES.items():
        path = os.path.join(staging, file)
        if variant in ONNX_VARIANTS:
            continue  # made below, from the SavedModel at a dynamic size
        if variant == 'bf16' and precision is None:
            print(f'{variant}: skipped: {why}', flush=True)
            skipped.append({'variant': variant, 'reason': why})
            continue
        start = time.time()
        print(f'making {variant} (a minute or two)', flush=True)
        files.atomic_write(path, conversion.make_variant(frozen, variant, precision, calibration))
        build_s = round(time.time() - start, 1)
        row = measure_variant(variant, inference.variant_predictor(variant, path), examples, args.runs, layout,
                              args.tta)
        row.update(file=file, size_mb=os.path.getsize(path) / 2 ** 20, build_s=build_s)
        if variant == 'bf16':
            row['precision'] = why
        rows.append(row)
    onnx_rows, onnx_skipped = onnx_variant_rows(saved_model, image_shape, examples, calibration, staging,
                                                args.runs, layout, args.tta)
    rows, skipped = rows + onnx_rows, skipped + onnx_skipped
    fp32 = rows[0]
    for row in [reference] + rows:
        row.update(speedup=fp32['median_ms'] / row['median_ms'], score_change=row['score'] - fp32['score'],
                   iou_change=row['iou'] - fp32['iou'])
    command = f'python main.py optimize --checkpoint {args.checkpoint} --runs {args.runs} --tta {args.tta}'
    report = {'run': args.checkpoint, 'command': command,
              'machine': machine(), 'tensorflow': tf.__version__, 'image_shape': list(image_shape),
              'runs': args.runs, 'val_images': len(examples), 'calibration_images': len(calibration), 'tta': args.tta,
              'score_name': 'MaxF' if is_road(layout.classes) else 'mean IoU',
              'iou_name': 'road, at the MaxF threshold' if is_road(layout.classes) else 'mean over classes',
              'variants': [reference] + rows, 'skipped': skipped}
    files.write_json(os.path.join(staging, 'optimization.json'), report)
    return report
