"""`main.py infer`: overlays (road green, or each class in its colour) and confidence maps or label images of
images, a folder of them, or a video, with any model a run has (models.load_model finds and loads it): its
optimized/ variants, its saved_model/, a frozen .pb, a .tflite or an .onnx file."""
import os
import shutil
import time

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from fcn8s import bev, files, inference, models, voc
from fcn8s.errors import UserError
from fcn8s.images import PICTURE_EXTENSIONS, class_overlay, list_pictures, overlay, read_rgb
from fcn8s.metrics import confidence, is_road
from fcn8s.outputs import FLIP_SAID, classes_at, flipped, model_input, road_at
from fcn8s.pipeline import batched, behind, prefetch
from fcn8s.video import VIDEO_EXTENSIONS, is_video, read_video, video_writer


def infer_inputs(path):
    """(video path or None, [picture paths]) of --input: a video, a PNG/JPEG, or a folder of them."""
    if os.path.isdir(path):
        pictures = [os.path.join(path, f) for f in list_pictures(path)]
        if not pictures:
            raise UserError(f'--input {path}: no PNG or JPEG files in that folder')
        return None, pictures
    if not os.path.isfile(path):
        raise UserError(f'--input {path}: no such file or folder')
    if is_video(path):
        return path, []
    if path.lower().endswith(PICTURE_EXTENSIONS):
        return None, [path]
    raise UserError(f'--input {path}: expected a PNG/JPEG image, a folder of them, or a video '
                    f'({", ".join(VIDEO_EXTENSIONS)})')


def output_paths(args, video, pictures, prelabels=False):
    """([output name per picture], [every path this command would write]); UserError if one exists already or two
    pictures would write the same name. prelabels: also an annotation tool's export (voc.MASK_DIRS[0]/ and its
    lists)."""
    names = [os.path.splitext(os.path.basename(p))[0] + '.png' for p in pictures]
    if video:
        targets = [args.output] + ([os.path.splitext(args.output)[0] + '_probabilities'] if args.probabilities
                                   else [])
    else:
        folders = ('', *(['probabilities'] if args.probabilities else []), *(['bev'] if args.bev else []),
                   *([voc.MASK_DIRS[0]] if prelabels else []))
        targets = [os.path.join(args.output, folder, n) for folder in folders for n in names]
        targets += [os.path.join(args.output, f) for f in (voc.LABELMAP, os.path.join(voc.LIST_DIR, 'default.txt'))
                    if prelabels]
    if len(set(names)) < len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise UserError(f'--input {args.input}: two images would both be written as {clash} (e.g. a .png and a '
                        '.jpg of the same name); rename one')
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise UserError(f'--output {args.output}: {existing[0]} exists'
                        + (f' (and {len(existing) - 1} more)' if len(existing) > 1 else '')
                        + ': choose another --output (nothing is overwritten)')
    return names, targets


def painter(classes, image_shape):
    """paint(image uint8 [h, w, 3], output) -> (overlay, map) at the image's own size, from the model's output for
    that image at image_shape, for a model of classes = (names, palette, encode): for a road model the green
    overlay and the uint8 confidence map; for scene parsing the class-coloured overlay and the label image
    (encode's ids)."""
    names, palette, encode = classes
    if is_road(names):
        def paint(image, output):
            prob = road_at(output, image_shape, image.shape[:2])
            return overlay(image, prob), confidence(prob)
    else:
        def paint(image, output):
            predicted = classes_at(output, image_shape, len(names), image.shape[:2])
            return class_overlay(image, predicted, palette), encode(predicted)
    return paint


def per_image(outputs, count):
    """A model's output for a batch of count images ([N, H, W] or [N, H, W, K]): one flat array per image."""
    return np.reshape(outputs, (count, -1))


def infer_pictures(pictures, names, output, probabilities, predictor, paint, written, bev_calib=None,
                   mask_palette=None):
    """Overlays (and maps: confidence or labels) of pictures into output, predictor's outputs painted by paint,
    with bev_calib (infer's --bev) each road picture's bird's-eye view into output/bev/, and with mask_palette
    each picture's classes as an annotation tool's mask in those colours (voc.write_mask); every path made is
    appended to written. An unreadable picture is skipped with a warning; returns the [(path, why)] skipped."""
    predict, image_shape = predictor
    for folder in ('', *(['probabilities'] if probabilities else []), *(['bev'] if bev_calib else []),
                   *([voc.MASK_DIRS[0]] if mask_palette else [])):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    skipped = []
    for picture, name in tqdm(list(zip(pictures, names)), desc='images', unit='image'):
        try:
            image = read_rgb(picture)
        except UserError as e:  # as in training's test outputs: one bad image must not cost the others
            tqdm.write(f'warning: skipped: {e}')
            skipped.append((picture, str(e)))
            continue
        painted, labels = paint(image, per_image(predict(model_input(image, image_shape)[None]), 1)[0])
        written.append(os.path.join(output, name))
        iio.imwrite(written[-1], painted)
        if probabilities:
            written.append(os.path.join(output, 'probabilities', name))
            iio.imwrite(written[-1], labels)
        if mask_palette:
            written.append(os.path.join(output, voc.MASK_DIRS[0], name))
            voc.write_mask(written[-1], labels, mask_palette)
        calibration = bev_calib and bev.calibration_of(bev_calib, os.path.basename(picture))
        if calibration:
            homography = bev.plane_homography(bev.read_calibration(calibration))
            written.append(os.path.join(output, 'bev', name))
            iio.imwrite(written[-1], bev.bev_picture(image, labels / 255, homography))  # labels: the confidence map
        elif bev_calib:
            tqdm.write(f'warning: {bev_calib} has no calibration of {picture}: no bird\'s-eye view of it')
    return skipped


def infer_video(video, output, probability_dir, predictor, paint, written, batch=1):
    """Overlay video of video at output (.mp4, same size and frame rate), and per-frame maps in probability_dir
    unless None; every path made is appended to written. Three stages overlap: frames decoded and resized ahead
    (prefetch), the model on batches of batch frames (the last one padded: a model compiled for one shape keeps
    it), overlays painted and encoded behind it (behind). Says how many frames were read when the container
    announced more (a file cut short)."""
    frames, fps, announced = read_video(video)
    predict, image_shape = predictor
    partial = output[:-len('.mp4')] + '.partial.mp4'  # renamed when complete: never half a video under its name
    written.append(partial)
    if probability_dir:
        written.append(probability_dir)
        os.makedirs(probability_dir)
    writer, count = None, 0

    def write(item):  # in behind's thread
        nonlocal writer, count
        frame, frame_output = item
        painted, labels = paint(frame, frame_output)
        try:
            writer = writer or video_writer(partial, fps, frame.shape[:2])
            writer.append_data(painted)
        except (OSError, RuntimeError, ValueError) as e:  # ffmpeg's encoding errors
            raise UserError(f'{output}: failed writing frame {count} ({type(e).__name__}: {e})') from None
        if probability_dir:
            iio.imwrite(os.path.join(probability_dir, f'frame_{count:06d}.png'), labels)
        count += 1

    inputs = prefetch(((frame, model_input(frame, image_shape)) for frame in frames), 2 * batch)
    try:
        with tqdm(total=announced, desc='frames', unit='frame') as bar, behind(write, 2 * batch) as put:
            for group in batched(inputs, batch):
                images = np.stack([x for _, x in group] + [group[-1][1]] * (batch - len(group)))
                for (frame, _), frame_output in zip(group, per_image(predict(images), batch)):
                    put((frame, frame_output))
                bar.update(len(group))
    finally:
        inputs.close()
        if writer:
            writer.close()
    if writer is None:
        raise UserError(f'{video}: no frames')
    os.replace(partial, output)
    # The announced count comes from the container's duration x frame rate: one frame either way is rounding.
    if announced and count < announced - 1:
        print(f'warning: {video}: read {count} of the {announced} frames its container announces: the file is '
              'probably cut short (a partial download or copy); the overlay video ends there', flush=True)


def timed(predictor, seconds):
    """The predictor with (duration, images) of each call appended to seconds."""
    predict, image_shape = predictor

    def timed_predict(batch):
        start = time.perf_counter()
        prob = predict(batch)
        seconds.append((time.perf_counter() - start, len(batch)))
        return prob
    return timed_predict, image_shape


def video_batch(predictor, batches):
    """(batch, images/s) of the batch size of batches at which the model runs the most images per second on its
    own (inference.latency: two timed calls after one): on a CPU, a batch reads fc6's weights, the largest, once
    for all its images."""
    speeds = {batch: inference.latency(predictor, runs=2, warmup=1, batch=batch)['images_per_s'] for batch in batches}
    return max(speeds.items(), key=lambda item: item[1])


def ready_model(args):
    """(predictor, batch sizes it takes, classes (names, palette, encode), what it is) of --model, loaded, run once
    (a Session sets its graph up at its first run) and described on one line."""
    start = time.perf_counter()
    try:
        predictor, description, batches = models.load_model(args.model, args.precision, args.runtime)
    except (KeyError, ValueError, RuntimeError, tf.errors.OpError) as e:  # a graph or file not of this project
        raise UserError(f'--model {args.model}: cannot be loaded as a model of this project '
                        f'({type(e).__name__}: {e})') from None
    predict, image_shape = predictor
    if None in image_shape:
        raise UserError(f'--model {args.model}: its input size is not fixed (main.py optimize writes models at '
                        'the size the run was trained at)')
    classes = models.model_classes(args.model, predict(np.zeros((1, *image_shape, 3), np.float32)))
    print(f'model {description}, run at {image_shape[0]}x{image_shape[1]}, '
          + ('road, ' if is_road(classes[0]) else f'{len(classes[0])} classes, ')
          + f'ready in {time.perf_counter() - start:.1f} s', flush=True)
    return predictor, batches, classes, description


def infer_command(args):
    """`main.py infer` (args: command_line.infer_parser's): overlays (and confidence maps, or label images) of
    images, a folder of them, or a video."""
    video, pictures = infer_inputs(args.input)
    if video and not args.output.lower().endswith('.mp4'):
        raise UserError(f'--output {args.output}: the overlay of a video is an .mp4 file')
    if args.bev and (video or not os.path.exists(args.bev)):
        raise UserError(f'--bev {args.bev}: ' + ('bird\'s-eye views are drawn of images, not of a video' if video
                                                 else 'no such calibration file or folder'))
    # A run trained on an annotation tool's export gets its pre-labels back in the same form.
    data = (models.run_config(args.model) or {}).get('data', {})
    prelabels = not video and data.get('layout') == voc.KIND and not is_road(data['classes'])
    names, targets = output_paths(args, video, pictures, prelabels)
    predictor, batches, classes, _ = ready_model(args)
    if args.tta == 'flip':
        predictor = flipped(predictor)
        print(f'{FLIP_SAID}: twice the model\'s time', flush=True)
    if args.bev and not is_road(classes[0]):
        raise UserError(f'--bev: bird\'s-eye views are of road models; {args.model} segments {len(classes[0])} '
                        'classes')
    batch, alone = video_batch(predictor, batches) if video else (1, None)
    paint = painter(classes, predictor[1])
    model_seconds, written, skipped = [], [], []  # written: this command's own outputs, removed if it fails
    start = time.perf_counter()
    try:
        with files.writing(os.path.dirname(os.path.abspath(args.output)) if video else args.output, 'the overlays'):
            if video:
                infer_video(video, args.output, targets[1] if args.probabilities else None,
                            timed(predictor, model_seconds), paint, written, batch)
            else:
                skipped = infer_pictures(pictures, names, args.output, args.probabilities,
                                         timed(predictor, model_seconds), paint, written, args.bev,
                                         classes[1] if prelabels else None)
                if prelabels:
                    read = [os.path.splitext(n)[0] for p, n in zip(pictures, names) if p not in dict(skipped)]
                    written += voc.write_lists(args.output, {'default': read}, *classes[:2])
    except BaseException:
        for path in reversed(written):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        raise
    print(speed_line(video, time.perf_counter() - start, model_seconds, batch, alone) + f'; written to {args.output}')
    if skipped:
        raise UserError(f'{len(skipped)} of {len(pictures)} image(s) could not be read and were skipped: '
                        + '; '.join(why for _, why in skipped))


def speed_line(video, seconds, model_seconds, batch, alone):
    """How fast infer went: images (or frames) per second overall, and the model's share; for a video, against
    the model's own images/s (alone, at that batch, measured before it)."""
    count = sum(n for _, n in model_seconds)
    line = f'{count} {"frame" if video else "image"}(s) in {seconds:.1f} s: {count / seconds:.2f} per second overall'
    if not video:
        return line + f', {1000 * np.median([s for s, _ in model_seconds]) if count else 0:.1f} ms median in the model'
    return line + (f', {count / seconds / alone:.2f}x the model\'s own {alone:.2f} images/s at batch {batch} '
                   f'(it had {1000 * sum(s for s, _ in model_seconds) / max(count, 1):.1f} ms of each frame)')
