"""Scoring a segmentation model on labelled images: KITTI's road figures (MaxF, AP, IoU per category) for road
models, the confusion matrix's figures (per-class and mean IoU, pixel and class accuracy) for scene parsing.
The one scoring loop behind validation during training, `main.py evaluate` (this module's command) and the
accuracy columns of `main.py optimize`. evaluate also writes what a user can act on: the confusion matrix's picture,
every image's own figures and a gallery of the worst images."""
import csv
import heapq
import io
import os
import shutil

import imageio.v3 as iio
import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from fcn8s import batches, bev, datasets, files, metrics, outputs, plots, precision, run_folder
from fcn8s.errors import UserError
from fcn8s.images import (class_ids_at, class_overlay, overlay, read_header, resize_image, resize_nearest,
                          resize_probability)
from fcn8s.layout import labelled_pairs
from fcn8s.metrics import ROAD_CLASSES, is_road

# Validation images per forward pass, at most (and at most twice the training batch, which a forward pass without
# gradients holds in less memory): the weights' conversion for oneDNN (and to bfloat16) is paid once per forward
# pass, not once per image (docs/measurements.md).
VALIDATION_BATCH = 8
GALLERY_WIDTH = 1600  # pixels: a wider image | truth | prediction picture of the gallery is scaled down to it


class StreamedExamples:
    """The examples (name, uint8 image [h, w, 3], int8 classes [h, w]) of (image path, label path) pairs, read by
    load_pair again at every pass, in order: a validation set too large to keep in memory."""

    def __init__(self, pairs, load_pair):
        self.pairs, self.load_pair = pairs, load_pair

    def __len__(self):
        return len(self.pairs)

    def __iter__(self):
        for image, label in self.pairs:
            yield (os.path.basename(image), *self.load_pair(image, label))


def load_examples(pairs, load_pair):
    """The examples (name, uint8 image [h, w, 3], int8 classes [h, w]) of (image path, label path) pairs, every one
    read and checked here: a list, or where they would take more memory than batches.keep_in_memory allows
    (said), StreamedExamples."""
    examples = StreamedExamples(pairs, load_pair)
    size = sum(4 * width * height for width, height in (read_header(image)[1] for image, _ in pairs))
    kept, said = batches.keep_in_memory(size, batches.available_memory(), 'validation images')
    if kept:
        return list(tqdm(examples, total=len(pairs), desc='loading', leave=False))
    print(said, flush=True)
    for _ in tqdm(examples, total=len(pairs), desc='reading', leave=False):
        pass  # read once now, so that a bad label stops the run before training, not after an epoch
    return examples


def network_batches(examples, image_shape, batch_size):
    """[(uint8 images [b, H, W, 3], int8 class ids [b, H, W])] of examples, in order, at the network's input size,
    batch_size at a time (kept compact: they are made once and fed every epoch)."""
    resized = [(resize_image(image, image_shape), resize_nearest(labels, image_shape))
               for _, image, labels in examples]
    return [(np.stack([image for image, _ in resized[i:i + batch_size]]),
             np.stack([labels for _, labels in resized[i:i + batch_size]]))
            for i in range(0, len(resized), batch_size)]


def bev_views(examples, layout):
    """({name: (homography [3, 3], BEV labels int8 [800, 400])} of the road examples whose image has a KITTI
    calibration (LAYOUT_ROOT/training/calib/<name>.txt), the number of examples without one): what scoring in
    KITTI's bird's-eye view needs, made once. Nothing for scene parsing or a layout other than KITTI's."""
    if not is_road(layout.classes) or layout.kind != 'kitti':
        return {}, len(examples)
    calib_dir = os.path.join(layout.root, 'training', bev.CALIB_FOLDER)
    views = {}
    for name, _, classes in examples:
        path = bev.calibration_path(calib_dir, name)
        if path is not None:
            homography = bev.plane_homography(bev.read_calibration(path))
            views[name] = homography, bev.bev_labels(classes, homography)
    return views, len(examples) - len(views)


def _pool(counts, category, hist):
    counts[category] = counts.get(category, 0) + hist


def score_examples(run_model, examples, net_batches, image_shape, layout, desc='scoring', views=None,
                   on_image=None):
    """Run a model over examples and pool its counts per category: the project's one scoring loop.

    run_model(images [b, H, W, 3], labels [b, H, W, K]) -> (probabilities: the road's, b*H*W values, for a road
    model, else every class's, b*H*W*K; the mean loss over the batch's valid pixels, or None), for the
    network_batches of examples at image_shape (H, W); layout: a layout.Layout (classes, palette, category).
    Each probability map is scored at its image's own size (resized back bilinearly), and, for the examples of
    views (bev_views), in KITTI's bird's-eye view too. Returns {'hists': {category: counts}, 'bev_hists': the
    same in the bird's-eye view, 'bev_images': how many were, 'loss': the mean loss over all valid pixels or
    None, 'overlays': {name: overlay} of the first image of each category, 'bev_pictures': {name:
    bev.bev_picture} likewise}; counts are [2, LEVELS] (true class, confidence level) for a road model, else the
    confusion matrix [K, K]. on_image(name, image, classes, prediction, hist), when given, is called for every
    image with its prediction at its own size (the road probability float [h, w], or class ids int [h, w]) and
    its own counts (as above), so that a caller keeps what it needs of each image (nothing else is kept).
    """
    road, num_classes, views = is_road(layout.classes), len(layout.classes), views or {}
    hists, bev_hists, loss_sum, valid, overlays, pictures, bev_images = {}, {}, 0.0, 0, {}, {}, 0
    position = iter(examples)
    for net_images, net_classes in tqdm(net_batches, desc=desc, leave=False):
        probs, loss = run_model(net_images.astype(np.float32), batches.one_hot(net_classes, num_classes))
        if loss is not None:
            pixels = int((net_classes >= 0).sum())  # the loss is a mean over these
            loss_sum, valid = loss_sum + float(loss) * pixels, valid + pixels
        shape = (len(net_images), *image_shape) if road else (len(net_images), *image_shape, num_classes)
        for prob in np.reshape(probs, shape):
            name, image, classes = next(position)
            category = layout.category(name)
            if road:
                prob = resize_probability(prob, image.shape[:2])
                hist = metrics.fast_hist(classes, metrics.confidence(prob), metrics.NUM_CLASSES, metrics.LEVELS)
            else:
                prob = class_ids_at(prob, image.shape[:2])
                hist = metrics.fast_hist(classes, prob, num_classes)
            _pool(hists, category, hist)
            if on_image is not None:
                on_image(name, image, classes, prob, hist)
            if not any(layout.category(n) == category for n in overlays):
                overlays[name] = overlay(image, prob) if road else class_overlay(image, prob, layout.palette)
            if name in views:
                bev_images += 1
                homography, bev_classes = views[name]
                bev_prob, _ = bev.bev_probability(prob, homography)
                _pool(bev_hists, category, metrics.fast_hist(bev_classes, metrics.confidence(bev_prob),
                                                             metrics.NUM_CLASSES, metrics.LEVELS))
                if not any(layout.category(n) == category for n in pictures):
                    pictures[name] = bev.bev_picture(image, prob, homography)
    return {'hists': hists, 'bev_hists': bev_hists, 'bev_images': bev_images,
            'loss': loss_sum / max(valid, 1) if valid else None, 'overlays': overlays, 'bev_pictures': pictures}


def _counts(hists):
    """The counts of kitti_table's curves as lists, per category and pooled ('all')."""
    counts = {category: hist.tolist() for category, hist in sorted(hists.items())}
    counts['all'] = sum(hists.values()).tolist()
    return counts


def validation_record(scores, layout):
    """The figures of a score_examples result as a metrics.json record, with val_score, the figure the best
    epoch is chosen on. Road: val_loss, the headline KITTI figures of the pooled counts, the KITTI table per
    category (val_kitti) and the counts behind every curve (val_counts); val_score is MaxF. Scene parsing:
    val_loss, mean IoU, pixel and mean class accuracy, per-class IoU and accuracy (val_classes) and the
    confusion matrix (val_confusion); val_score is the mean IoU. Road examples scored in the bird's-eye view too
    add its headline MaxF, table and counts (val_bev_max_f, val_bev_kitti, val_bev_counts) and how many images
    it covers (val_bev_images)."""
    if not is_road(layout.classes):
        confusion = sum(scores['hists'].values())
        figures = metrics.segmentation_scores(confusion)
        return {'val_loss': scores['loss'], 'val_mean_iou': figures['mean_iou'],
                'val_pixel_accuracy': figures['pixel_accuracy'], 'val_mean_accuracy': figures['mean_accuracy'],
                'val_score': figures['mean_iou'],
                'val_classes': {name: {'iou': iou, 'accuracy': accuracy} for name, iou, accuracy in
                                zip(layout.classes, figures['iou'], figures['accuracy'])},
                'val_confusion': confusion.tolist()}
    table = metrics.kitti_table(scores['hists'])
    record = {'val_loss': scores['loss'], 'val_iou_at_0.5': table['all']['iou_at_0.5'],
              'val_max_f': table['all']['max_f'], 'val_road_recall': table['all']['recall_at_0.5'],
              'val_non_road_as_road': table['all']['fpr_at_0.5'], 'val_score': table['all']['max_f'],
              'val_kitti': table, 'val_counts': _counts(scores['hists'])}
    if scores['bev_hists']:
        bev_table = metrics.kitti_table(scores['bev_hists'])
        record.update(val_bev_max_f=bev_table['all']['max_f'], val_bev_kitti=bev_table,
                      val_bev_counts=_counts(scores['bev_hists']), val_bev_images=scores['bev_images'])
    return record


def make_validate_fn(sess, net, examples, image_shape, layout, batch_size=VALIDATION_BATCH, views=None, flip=False,
                     on_image=None):
    """validate_fn for train_nn on examples [(name, uint8 image [h, w, 3], int8 classes [h, w])]: () ->
    (validation_record, overlays {name: uint8 image} of one image per category, perspective and bird's-eye).

    net holds build_fcn's tensors, layout the dataset's layout.Layout. The loss is taken at the network's input
    size (the mean over all valid pixels), the counts at each image's own size, and in the bird's-eye view for
    the examples of views (bev_views). batch_size images go through the network at once. With flip, the
    probabilities are the mean of each image's and its mirror's (outputs.flip_mean); the loss is the image's.
    on_image: score_examples'.
    """
    probabilities = outputs.probabilities(net['logits'], layout.classes)
    net_batches = network_batches(examples, image_shape, batch_size)  # once: the same images every epoch

    def run_model(images, labels):
        probs, loss = sess.run([probabilities, net['cross_entropy_loss']],
                               {net['input_image']: images, net['correct_label']: labels, net['keep_prob']: 1.0})
        if flip:
            mirrored = sess.run(probabilities, {net['input_image']: images[:, :, ::-1], net['keep_prob']: 1.0})
            probs = outputs.flip_mean(probs, mirrored, images.shape[:3])
        return probs, loss

    def validate_fn():
        scores = score_examples(run_model, examples, net_batches, image_shape, layout, 'validation', views,
                                on_image)
        record = validation_record(scores, layout)
        if not is_road(layout.classes):
            tqdm.write(format_class_table(record))
        return record, {**scores['overlays'], **{f'bev_{name}': picture
                                                 for name, picture in scores['bev_pictures'].items()}}

    return validate_fn


def predictor_scores(predictor, examples, layout, desc='scoring'):
    """{'score': the figure models are compared on (MaxF, or mean IoU), 'iou': road IoU at the MaxF threshold,
    or mean IoU} of an inference.py predictor (predict, (H, W)) on examples."""
    predict, image_shape = predictor
    scores = score_examples(lambda images, _: (predict(images), None), examples,
                            network_batches(examples, image_shape, 1), image_shape, layout, desc)
    record = validation_record(scores, layout)
    if is_road(layout.classes):
        return {'score': record['val_max_f'], 'iou': record['val_kitti']['all']['iou']}
    return {'score': record['val_mean_iou'], 'iou': record['val_mean_iou']}


def format_class_table(record):
    """Per-class IoU and accuracy, then the means, in percent."""
    lines = [f'{"class":16}{"IoU":>9}{"accuracy":>10}']
    for name, figures in record['val_classes'].items():
        lines.append(f'{name:16}{100 * figures["iou"]:9.2f}{100 * figures["accuracy"]:10.2f}')
    lines.append(f'{"mean":16}{100 * record["val_mean_iou"]:9.2f}{100 * record["val_mean_accuracy"]:10.2f}   pixel '
                 f'accuracy {100 * record["val_pixel_accuracy"]:.2f}')
    return '\n'.join(lines)


def format_record_table(record, classes):
    """The validation table of a record of a model of these classes: KITTI's for a road model (in the perspective
    view, then in the bird's-eye view when the record has it), per class for scene parsing."""
    if not is_road(classes):
        return format_class_table(record)
    table = format_kitti_table(record['val_kitti'])
    if 'val_bev_kitti' in record:
        table += (f'\nbird\'s-eye view (KITTI\'s 0.05 m grid, x -10..10 m, z 6..46 m), the '
                  f'{record["val_bev_images"]} images with a calibration:\n'
                  + format_kitti_table(record['val_bev_kitti']))
    return table


def format_kitti_table(table):
    """KITTI scores per category as a text table, in percent like the benchmark's."""
    columns = ('max_f', 'ap', 'precision', 'recall', 'fpr', 'fnr', 'iou', 'iou_at_0.5')
    lines = [f'{"":8}' + ''.join(f'{c:>11}' for c in ('MaxF', 'AP', 'PRE', 'REC', 'FPR', 'FNR', 'IoU', 'IoU@0.5'))
             + '  threshold  Udacity bar']
    for category, scores in table.items():
        lines.append(f'{category:8}' + ''.join(f'{100 * scores[c]:11.2f}' for c in columns)
                     + f'{scores["threshold"]:11.3f}  ' + ('pass' if scores['udacity_pass'] else 'fail'))
    return '\n'.join(lines)


def run_classes(config):
    """(the class names of a run's model, the --classes and --background any dataset is opened with to score it):
    'road' for a road model, which every layout can score, else the run's own choice."""
    classes = tuple(config['data'].get('classes', ROAD_CLASSES))
    return (classes, 'road' if is_road(classes) else config['settings'].get('classes', 'all'),
            config['settings'].get('background', 'class'))


def validation_set(run_dir, config, flag='--checkpoint'):
    """(layout, examples) of a run's validation split: its dataset opened as the run opened it, its validation
    images read and checked; UserError when the dataset is gone or has changed."""
    dataset = config['data']['dataset']
    if not os.path.isdir(dataset):
        raise UserError(f'{flag} {run_dir}: its dataset {dataset} is gone (its validation images are needed)')
    layout = datasets.open_layout(dataset, *run_classes(config)[1:])
    pairs = labelled_pairs(layout, config['data']['val_names'], f'{flag} {run_dir}')
    return layout, load_examples(pairs, layout.load_pair)


def labelled_set(dataset, run_dir, config):
    """(layout, examples) of every labelled image of another dataset folder (one without a validation split of
    its own, as KITTI: all its training images; else its val and whatever test images have labels), opened to
    score the run's model."""
    if not os.path.isdir(dataset):
        raise UserError(f'--dataset {dataset}: no such folder')
    classes, opened_as, background = run_classes(config)
    layout = datasets.open_layout(dataset, opened_as, background)
    if tuple(layout.classes) != classes:
        raise UserError(f'--dataset {dataset}: its classes ({", ".join(layout.classes)}) are not those of {run_dir}')
    labelled = layout.train if layout.val is None else layout.val + layout.test
    return layout, load_examples([(image, label) for _, image, label in labelled if label], layout.load_pair)


def evaluate_command(args, build_fcn):
    """`main.py evaluate`: the scores of a run's best checkpoint (args: command_line.evaluate_parser's), printed and
    written to eval.json. build_fcn(sess, vgg_dir, seed, num_classes, skip_scales) -> tensors by name is main's
    graph builder."""
    config = run_folder.read_config(args.checkpoint, '--checkpoint')
    best = tf.train.latest_checkpoint(os.path.join(args.checkpoint, run_folder.BEST_CHECKPOINT))
    if best is None:
        raise UserError(f'{args.checkpoint}: no best checkpoint yet (one is saved after the first epoch)')
    layout, examples = (labelled_set(args.dataset, args.checkpoint, config) if args.dataset
                        else validation_set(args.checkpoint, config))
    if not examples:
        raise UserError(f'{args.checkpoint}: no labelled images to evaluate')
    image_shape = tuple(config['settings']['image_shape'])
    arithmetic, why = evaluation_precision(args.precision, config)
    print(f'precision {arithmetic} ({why})', flush=True)
    with tf.Graph().as_default(), tf.Session(config=precision.training_config(arithmetic)) as sess:
        net = build_fcn(sess, config['weights']['vgg_dir'], config['settings']['seed'], len(layout.classes),
                        config['weights'].get('skip_scales'))
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        views, without = bev_views(examples, layout)
        per_image = ImageFigures(layout, args.worst)
        validate_fn = make_validate_fn(sess, net, examples, image_shape, layout, views=views, flip=args.tta == 'flip',
                                       on_image=per_image)
        sess.graph.finalize()
        record, pictures = validate_fn()
    print(f'{best} on {len(examples)} images of {args.dataset or "the validation split"}'
          + (', ' + outputs.FLIP_SAID if args.tta == 'flip' else '') + ' (%):\n'
          + format_record_table(record, layout.classes))
    if is_road(layout.classes) and without:
        print(f'bird\'s-eye view: {without} of the {len(examples)} images have no calibration '
              f'({os.path.join(layout.root, "training", bev.CALIB_FOLDER)}/<name>.txt) and are left out of it')
    about = {'checkpoint': best, 'dataset': args.dataset or config['data']['dataset'], 'precision': arithmetic,
             'tta': args.tta, 'images': [name for name, _, _ in per_image.rows],  # read once: already scored
             **({'bev_without_calibration': without} if is_road(layout.classes) else {})}
    written = write_evaluation(args.checkpoint, about, record, pictures, layout, per_image)
    print(f'written to {", ".join(written)}')


def evaluation_precision(requested, config):
    """(arithmetic, why) of evaluate: --precision if given, else what the run validated with (config['precision']
    since --precision auto, the flag itself before), auto where this machine lacks bf16."""
    ran = config.get('precision', {}).get('chosen') or config['settings'].get('precision', 'fp32')
    if requested:
        return precision.choose(requested)
    if ran == 'bf16' and precision.mixed_precision()[0] != 'bf16':
        return precision.choose('auto')
    return ran, 'the precision the run validated with'


def write_evaluation(run_dir, about, record, pictures, layout, per_image):
    """eval.json (about, then the loss and every figure of record), its plot, the confusion matrix's picture
    (eval_confusion.png), every image's figures (eval_images.csv) and the gallery of the worst images (eval_worst/)
    of per_image (an ImageFigures), and one bird's-eye picture per category (pictures' bev_<name> entries) into
    run_dir; returns the paths written."""
    path, road = os.path.join(run_dir, 'eval.json'), is_road(layout.classes)
    title = f'{os.path.basename(about["checkpoint"])}, {len(about["images"])} images'
    with files.writing(run_dir, 'the evaluation'):
        files.write_json(path, {**about, 'loss': record['val_loss'], **{
            key[4:]: value for key, value in record.items() if key.startswith('val_') and key != 'val_loss'}})
        written = [path, plots.plot_scores(record, road, run_dir, 'eval_', title),
                   os.path.join(run_dir, 'eval_confusion.png'), os.path.join(run_dir, 'eval_images.csv')]
        plots.plot_confusion(working_confusion(record['val_counts']['all'] if road else record['val_confusion'], road),
                             layout.classes, written[2], title + (', road where p > 0.5' if road else ''))
        files.atomic_write(written[3], per_image.csv_text())
        for name, picture in pictures.items():
            if name.startswith('bev_'):
                written.append(os.path.join(run_dir, f'eval_bev_{layout.category(name[4:])}.png'))
                iio.imwrite(written[-1], picture)
        written += write_gallery(os.path.join(run_dir, 'eval_worst'), per_image, layout)
    return written


def working_confusion(counts, road):
    """The confusion matrix [K, K] (rows: truth, columns: prediction) of score_examples' counts: a road model's
    [2, LEVELS] read at the threshold 0.5 (non-road, road), scene parsing's [K, K] as they are."""
    counts = np.asarray(counts)
    return metrics.binarize(counts) if road else counts


def image_figures(hist, road):
    """One image's figures from its own counts (score_examples' hist: [2, LEVELS] for a road model, else [K, K]):
    valid_pixels (those not ignored), pixel_accuracy, and mean_iou (the mean over the classes in the image's
    truth or prediction, metrics.segmentation_scores) or, for a road model at the threshold 0.5, road_iou_at_0.5
    and road_f_at_0.5 (F = 2 IoU / (1 + IoU), both being TP over sums of TP, FP and FN). nan where a figure has
    no pixels to count (no valid pixel; no road in the truth nor in the prediction)."""
    confusion = working_confusion(hist, road)
    scores = metrics.segmentation_scores(confusion)
    figures = {'valid_pixels': int(confusion.sum()), 'pixel_accuracy': scores['pixel_accuracy']}
    if not road:
        return {**figures, 'mean_iou': scores['mean_iou']}
    iou = metrics.road_iou(confusion)
    return {**figures, 'road_iou_at_0.5': iou, 'road_f_at_0.5': 2 * iou / (1 + iou)}


class ImageFigures:
    """score_examples' on_image for evaluate: every image's image_figures, in scoring order, and the `worst` images
    of the lowest ranking figure (mean IoU, or road IoU at 0.5) with their truth and prediction, in a heap of at
    most `worst` entries: memory bounded whatever the number of images. An image whose ranking figure is nan
    (nothing to score, or no road in its truth nor prediction: nothing wrong) is never among the worst."""

    def __init__(self, layout, worst):
        self.layout, self.worst, self.road, self.rows, self._heap = layout, worst, is_road(layout.classes), [], []

    def __call__(self, name, image, classes, prediction, hist):
        figures = image_figures(hist, self.road)
        self.rows.append((name, self.layout.category(name), figures))
        figure = figures['road_iou_at_0.5' if self.road else 'mean_iou']
        if self.worst and np.isfinite(figure):
            # The heap's first entry is the best kept (ties: the last scored), the one a worse image replaces;
            # the position makes every key unique, so that the arrays are never compared.
            entry = (-figure, -len(self.rows), name, image, classes, prediction)
            if len(self._heap) < self.worst:
                heapq.heappush(self._heap, entry)
            else:
                heapq.heappushpop(self._heap, entry)

    def worst_images(self):
        """[(name, uint8 image [h, w, 3], int8 classes [h, w], prediction [h, w])] of the kept images, worst first
        (ties in scoring order)."""
        return [entry[2:] for entry in sorted(self._heap, reverse=True)]

    def csv_text(self):
        """eval_images.csv: a header, then name, category and image_figures of every image, in scoring order;
        an empty cell for nan."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator='\n')
        writer.writerow(['name', 'category', *(self.rows[0][2] if self.rows else ())])
        for name, category, figures in self.rows:
            writer.writerow([name, category, *('' if isinstance(value, float) and not np.isfinite(value)
                                               else value for value in figures.values())])
        return text.getvalue()


def gallery_picture(image, classes, prediction, layout):
    """uint8 [h, 3 w, 3]: an image [h, w, 3], its truth classes [h, w] and the prediction [h, w] (road
    probability or class ids) side by side, painted as the validation overlays are (green road, or the layout's
    palette; ignored pixels of the truth left as they are in the image); scaled down to GALLERY_WIDTH if wider."""
    if is_road(layout.classes):
        painted = overlay(image, classes == metrics.ROAD), overlay(image, prediction)
    else:
        painted = class_overlay(image, classes, layout.palette), class_overlay(image, prediction, layout.palette)
    picture = np.concatenate([image, *painted], axis=1)
    height, width = picture.shape[:2]
    if width > GALLERY_WIDTH:
        picture = resize_image(picture, (max(1, round(height * GALLERY_WIDTH / width)), GALLERY_WIDTH))
    return picture


def write_gallery(folder, per_image, layout):
    """The worst images of per_image (an ImageFigures), one gallery_picture each, into folder as
    <rank>_<image name>.png, rank 1 the worst; the folder is replaced as a whole (never half a gallery), and
    removed when per_image keeps none (--worst 0: a previous evaluation's gallery would belong to other figures).
    Returns [folder], or [] when none is written."""
    if not per_image.worst:
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        return []
    worst = per_image.worst_images()
    digits = len(str(len(worst)))
    with files.staged_folder(folder, replace=True) as staging:
        for rank, (name, image, classes, prediction) in enumerate(worst, 1):
            iio.imwrite(os.path.join(staging, f'{rank:0{digits}d}_{os.path.splitext(name)[0]}.png'),
                        gallery_picture(image, classes, prediction, layout))
    return [folder]
