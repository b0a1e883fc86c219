"""Which model of a run or path to load, and loading it: the one model loader. `--model` may name a run folder (its
optimized/ variant of a precision and runtime, else its saved_model/), an optimized/ folder, an exported
SavedModel, a frozen .pb, a .tflite or an .onnx file; the result is an inference.py predictor, with what it is and
the batch sizes it takes, and the classes its output has (model_classes).
"""
import json
import os

import numpy as np
from google.protobuf.message import DecodeError

from fcn8s import conversion, datasets, inference, precision, run_folder
from fcn8s.errors import UserError, require
from fcn8s.layout import ROAD_PALETTE
from fcn8s.metrics import ROAD_CLASSES
from fcn8s.paths import ONNX_VARIANTS, OPTIMIZED_DIR, RUNTIME_VARIANTS, SERVING_DIR, VARIANT_FILES, variant_runtime

# --precision auto takes a faster variant than fp32 only if its score is at most this much lower (0.5 points).
AUTO_SCORE_LOSS = 0.005
# A video goes through a model of dynamic batch (the ONNX models) at whichever of these batch sizes it runs
# fastest; frozen graphs and TFLite models take one image at a time.
VIDEO_BATCHES = (1, 4)
RUNTIME_NAMES = {'tensorflow': 'TensorFlow', 'onnxruntime': 'ONNX Runtime', 'openvino': 'OpenVINO'}


def load_model(path, requested, runtime='auto'):
    """(predictor (predict, (H, W)), what it is, the batch sizes it takes) for `--model path --precision requested
    --runtime runtime`.

    path: a run folder (its optimized/ model of that precision and runtime when there is one, else its
    saved_model/), an optimized/ folder, an exported SavedModel inside a run folder, a frozen .pb, a .tflite or an
    .onnx file. A SavedModel is frozen when loaded: its weights become constants, which oneDNN lays out once
    instead of at every image. auto: auto_variant's choice for an optimized/ folder, else bf16 where the CPU has
    it (precision.choose), else fp32; never int8 by that rule, which costs accuracy."""
    if os.path.isfile(path):
        return _load_model_file(path, requested, runtime)
    if not os.path.isdir(path):
        raise UserError(f'--model {path}: no such file or folder')
    optimized = path if os.path.isfile(os.path.join(path, 'optimization.json')) else os.path.join(path,
                                                                                                   OPTIMIZED_DIR)
    variant, why = auto_variant(optimized, runtime) if requested == 'auto' else (None, None)
    chosen = None
    if variant is None:
        chosen, rule = precision.choose('auto') if requested == 'auto' else (requested, None)
        tool = 'tensorflow' if runtime == 'auto' else runtime
        if requested == 'auto' and chosen not in RUNTIME_VARIANTS[tool]:
            chosen, rule = 'fp32', f'fp32: {RUNTIME_NAMES[tool]} has no {chosen} model'
        variant = _runtime_variant(path, chosen, tool)
        why = why and f'{why}; {rule}'
    file = os.path.join(optimized, VARIANT_FILES[variant])
    said = f' (auto: {why})' if why else ''
    if os.path.isfile(file):
        runs_on = f', {_runs_on(variant_runtime(variant))}' if variant in ONNX_VARIANTS else ''
        return (inference.variant_predictor(variant, file, _run_image_shape(file)),
                f'{file} ({variant}{runs_on}){said}', VIDEO_BATCHES if variant in ONNX_VARIANTS else (1,))
    if variant in ONNX_VARIANTS:
        raise UserError(f'--model {path}: no {VARIANT_FILES[variant]} there (python main.py optimize --checkpoint '
                        'RUN_DIR makes it)')
    return _load_saved_model(path, chosen, said)  # (auto_variant chooses only variants whose file is there)


def _runtime_variant(path, chosen, runtime):
    """The variant of precision chosen that runtime runs; UserError for a precision it has no model of."""
    variants = RUNTIME_VARIANTS[runtime]
    if chosen not in variants:
        raise UserError(f'--model {path}: --runtime {runtime} runs {" or ".join(variants)} models, not {chosen}')
    return variants[chosen]


def _load_saved_model(path, chosen, said):
    """load_model for a run folder or SavedModel without an optimized model of precision chosen ('fp32', 'bf16'
    or 'int8'): the SavedModel, frozen at the run's size."""
    if os.path.isfile(os.path.join(path, 'saved_model.pb')):
        run_dir, saved_model = os.path.dirname(os.path.abspath(path)), path
    else:
        run_dir, saved_model = path, os.path.join(path, SERVING_DIR)
    if chosen == 'int8' or not os.path.isfile(os.path.join(saved_model, 'saved_model.pb')):
        raise UserError(f'--model {path}: no {chosen} model there: give a run folder, its {OPTIMIZED_DIR}/ or '
                        f'{SERVING_DIR}/ folder, a .pb, a .tflite or an .onnx file'
                        + (' (int8 models are made by python main.py optimize --checkpoint RUN_DIR)'
                           if chosen == 'int8' else ''))
    config = run_folder.read_config(run_dir, '--model')  # the input size the model was trained at
    mixed = precision.require_mixed_precision('--precision bf16') if chosen == 'bf16' else None
    frozen = conversion.freeze(saved_model, config['settings']['image_shape'])
    return (inference.graph_predictor(frozen, mixed),
            f'{saved_model} (SavedModel, frozen{", " + mixed if mixed else ""}){said}', (1,))


def auto_variant(optimized, runtime):
    """(variant, why) for --precision auto from optimized/optimization.json: the fastest variant of runtime
    ('auto': any) that main.py optimize measured on this very machine (CPU, cores, GPUs) and whose score is
    within AUTO_SCORE_LOSS of fp32's; (None, why not) when there is no such report, or it was measured
    elsewhere."""
    report_path = os.path.join(optimized, 'optimization.json')
    if not os.path.isfile(report_path):
        return None, None
    try:
        with open(report_path) as f:
            report = json.load(f)
        rows = {row['variant']: row for row in report['variants']}
        fp32, measured_on = rows['fp32']['score'], report['machine']
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f'{report_path} cannot be read ({type(e).__name__}: {e})'
    here = precision.machine()
    if measured_on != here:
        return None, f'{report_path} was measured on {measured_on}, not on this machine ({here})'
    allowed = [v for v in VARIANT_FILES if runtime in ('auto', variant_runtime(v))]
    good = [rows[v] for v in allowed if v in rows and rows[v]['score'] >= fp32 - AUTO_SCORE_LOSS
            and os.path.isfile(os.path.join(optimized, VARIANT_FILES[v]))]
    if not good:
        return None, f'{report_path} has no {runtime} variant within {100 * AUTO_SCORE_LOSS:g} points of fp32'
    best = min(good, key=lambda row: row['median_ms'])
    return best['variant'], (
        f'the fastest of the {len(good)} variants main.py optimize measured on this machine within '
        f'{100 * AUTO_SCORE_LOSS:g} points of fp32\'s {report.get("score_name", "score")}: {best["median_ms"]:.1f} ms '
        f'against fp32\'s {rows["fp32"]["median_ms"]:.1f}, score {100 * best["score"]:.2f} against '
        f'{100 * fp32:.2f}' + (' (scored with --tta flip)' if report.get('tta') == 'flip' else ''))


def _runs_on(runtime):
    """What runs an ONNX model here, for the user: ONNX Runtime's execution providers, or OpenVINO's CPU."""
    if runtime == 'openvino':
        return 'OpenVINO on CPU'
    return 'ONNX Runtime on ' + ', '.join(p.replace('ExecutionProvider', '') for p in
                                          inference.onnx_runtime_providers())


def run_config(model_path):
    """The config.json of the run a model belongs to: the model folder's own (a run folder) or its parent's (its
    optimized/ or saved_model/), a model file's folder's or that folder's parent's; None when there is none."""
    folder = os.path.abspath(model_path if os.path.isdir(model_path) else os.path.dirname(model_path))
    for run_dir in (folder, os.path.dirname(folder)):
        if os.path.isfile(os.path.join(run_dir, 'config.json')):
            return run_folder.read_config(run_dir, '--model')
    return None


def _run_image_shape(model_path):
    """(H, W) the run of a model file was trained at (run_config), or None."""
    config = run_config(model_path)
    return tuple(config['settings']['image_shape']) if config else None


def _load_model_file(path, requested, runtime):
    """load_model for a .tflite, .onnx or frozen .pb file."""
    kind = next((k for k, ext in (('TFLite', '.tflite'), ('ONNX', '.onnx'), ('frozen graph', '.pb'))
                 if path.endswith(ext)), None)
    if kind is None:
        raise UserError(f'--model {path}: a file must be a frozen graph (.pb), a TFLite model (.tflite) or an '
                        'ONNX model (.onnx)')
    if runtime != 'auto' and (runtime != 'tensorflow') != (kind == 'ONNX'):
        raise UserError(f'--model {path}: --runtime {runtime} does not run {kind} files; drop --runtime')
    own = None if kind == 'frozen graph' or requested == 'auto' else file_precision(path, kind)
    if own and requested != own:
        raise UserError(f'--model {path}: {"an" if kind == "ONNX" else "a"} {kind} model has its own precision, '
                        f'{own}, not {requested}: drop --precision')
    if kind == 'TFLite':
        return inference.tflite_predictor(path), f'{path} (TFLite)', (1,)
    if kind == 'ONNX':
        tool = 'openvino' if runtime == 'openvino' else 'onnxruntime'
        predictor = inference.variant_predictor(RUNTIME_VARIANTS[tool]['fp32'], path, _run_image_shape(path))
        if None in predictor[1]:
            raise UserError(f'--model {path}: its input size is dynamic, and no config.json of the run it '
                            'belongs to is beside it (RUN_DIR/ or RUN_DIR/optimized/) to tell the size it was '
                            'trained at: keep the model in its run folder')
        return predictor, f'{path} ({_runs_on(tool)})', VIDEO_BATCHES
    if requested == 'int8':
        raise UserError(f'--model {path}: int8 models are .tflite or .onnx files (main.py optimize writes '
                        'int8.tflite and model_int8.onnx next to it)')
    try:
        graph_def = inference.read_graph_def(path)
    except (OSError, DecodeError) as e:
        raise UserError(f'--model {path}: not a frozen graph ({e})') from None
    chosen = precision.choose('auto')[0] if requested == 'auto' else requested
    mixed = precision.require_mixed_precision('--precision bf16') if chosen == 'bf16' else None
    return (inference.graph_predictor(graph_def, mixed), f'{path} (frozen graph{", " + mixed if mixed else ""})',
            (1,))


def file_precision(path, kind):
    """The precision of the model file at path of kind 'TFLite' or 'ONNX', as --precision names it: 'int8' where it
    holds int8 tensors (quantized weights), 'fp16' where it holds float16 ones, else 'fp32'."""
    if kind == 'TFLite':
        dtypes = [tensor['dtype'] for tensor in inference.tflite_interpreter(path).get_tensor_details()]
    else:
        onnx = require('onnx', f'{path}: reading an ONNX model')
        try:
            initializers = onnx.load(path).graph.initializer
        except DecodeError as e:
            raise UserError(f'--model {path}: not an ONNX model, the file may be damaged ({e})') from None
        dtypes = [onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type) for tensor in initializers]
    found = {np.dtype(dtype) for dtype in dtypes}
    return 'int8' if np.dtype(np.int8) in found else 'fp16' if np.dtype(np.float16) in found else 'fp32'


def model_classes(model_path, warmup_output):
    """(names, palette, encode) of a model's classes: a road model's when its output has no class axis (a road
    probability), else those of the run the model belongs to, when its config.json is found beside it, else told
    by their count (the names and colours it recorded, else its layout's)."""
    output = np.asarray(warmup_output)
    if output.ndim < 4:
        return ROAD_CLASSES, ROAD_PALETTE, None
    data = (run_config(model_path) or {}).get('data', {})
    return datasets.class_table(data.get('layout'), output.shape[-1], data.get('classes'), data.get('palette'))
