"""Scoring a road model on labelled images, KITTI style: the one scoring loop behind validation during training,
`main.py evaluate` (this module's command) and the accuracy columns of `main.py optimize`."""
import argparse
import os

import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

import batches
import files
import helper
import kitti
import metrics
import plots
import precision
import run_folder
from errors import UserError
from images import overlay, resize_image, resize_nearest, resize_probability

# Validation images per forward pass; a forward pass needs far less memory than a training step of the same
# batch, so this fits wherever training fits. At 96x320 on 2 cores of an AMD EPYC (Zen 4), bf16: 108 ms per image
# one at a time, 66 ms eight at a time, 79 ms for the frozen graph (python benchmark.py --profile prints it).
VALIDATION_BATCH = 8


def load_examples(pairs):
    """[(name, uint8 image [h, w, 3], int8 classes [h, w])] of (image path, label path) pairs, read and checked."""
    return [(os.path.basename(image), *kitti.load_pair(image, label))
            for image, label in tqdm(pairs, desc='loading', leave=False)]


def network_batches(examples, image_shape, batch_size):
    """[(uint8 images [b, H, W, 3], int8 class ids [b, H, W])] of examples, in order, at the network's input size,
    batch_size at a time (kept compact: they are made once and fed every epoch)."""
    images = [resize_image(image, image_shape) for _, image, _ in examples]
    classes = [resize_nearest(labels, image_shape) for _, _, labels in examples]
    return [(np.stack(images[i:i + batch_size]), np.stack(classes[i:i + batch_size]))
            for i in range(0, len(examples), batch_size)]


def score_examples(run_model, examples, net_batches, image_shape, desc='scoring'):
    """Run a model over examples and pool its KITTI counts per category: the project's one scoring loop.

    run_model(images [b, H, W, 3], labels [b, H, W, 2]) -> (road probability, b*H*W values; the mean loss over
    the batch's valid pixels, or None), for the network_batches of examples at image_shape (H, W). Each
    probability is scored at its image's own size (resized back bilinearly). Returns {'hists': {category:
    [2, LEVELS] counts}, 'loss': the mean loss over all valid pixels or None, 'overlays': {name: overlay} of the
    first image of each category}.
    """
    hists, loss_sum, valid, overlays = {}, 0.0, 0, {}
    position = iter(examples)
    for net_images, net_classes in tqdm(net_batches, desc=desc, leave=False):
        probs, loss = run_model(net_images.astype(np.float32), batches.one_hot(net_classes))
        if loss is not None:
            pixels = int((net_classes >= 0).sum())  # the loss is a mean over these
            loss_sum, valid = loss_sum + float(loss) * pixels, valid + pixels
        for prob in np.reshape(probs, (len(net_images), *image_shape)):
            name, image, classes = next(position)
            prob = resize_probability(prob, image.shape[:2])
            category = kitti.category(name)
            hists[category] = hists.get(category, 0) + metrics.fast_hist(classes, metrics.confidence(prob),
                                                                         metrics.NUM_CLASSES, metrics.LEVELS)
            if not any(kitti.category(n) == category for n in overlays):
                overlays[name] = overlay(image, prob)
    return {'hists': hists, 'loss': loss_sum / max(valid, 1) if valid else None, 'overlays': overlays}


def validation_record(scores):
    """The figures of a score_examples result as a metrics.json record: val_loss, the headline figures of the
    pooled counts, the KITTI table per category (val_kitti) and the counts behind every curve (val_counts)."""
    table = metrics.kitti_table(scores['hists'])
    counts = {category: hist.tolist() for category, hist in sorted(scores['hists'].items())}
    counts['all'] = sum(scores['hists'].values()).tolist()
    return {'val_loss': scores['loss'], 'val_iou_at_0.5': table['all']['iou_at_0.5'],
            'val_max_f': table['all']['max_f'], 'val_road_recall': table['all']['recall_at_0.5'],
            'val_non_road_as_road': table['all']['fpr_at_0.5'], 'val_kitti': table, 'val_counts': counts}


def make_validate_fn(sess, net, examples, image_shape):
    """validate_fn for train_nn on examples [(name, uint8 image [h, w, 3], int8 classes [h, w])]: () ->
    (validation_record, overlays {name: uint8 image} of one image per category).

    net holds build_fcn's tensors. The loss is taken at the network's input size (the mean over all valid pixels),
    the KITTI counts at each image's own size. VALIDATION_BATCH images go through the network at once: the
    weights' conversion for oneDNN (and to bfloat16) is then paid once per batch, not once per image.
    """
    road_prob = helper.road_probability(net['logits'])
    net_batches = network_batches(examples, image_shape, VALIDATION_BATCH)  # once: the same images every epoch

    def run_model(image, labels):
        return sess.run([road_prob, net['cross_entropy_loss']],
                        {net['input_image']: image, net['correct_label']: labels, net['keep_prob']: 1.0})

    def validate_fn():
        scores = score_examples(run_model, examples, net_batches, image_shape, desc='validation')
        return validation_record(scores), scores['overlays']

    return validate_fn


def predictor_table(predictor, examples, desc='scoring'):
    """KITTI table (metrics.kitti_table) of an inference.py predictor (predict, (H, W)) on examples."""
    predict, image_shape = predictor
    scores = score_examples(lambda images, _: (predict(images), None), examples,
                            network_batches(examples, image_shape, 1), image_shape, desc)
    return metrics.kitti_table(scores['hists'])


def format_kitti_table(table):
    """KITTI scores per category as a text table, in percent like the benchmark's."""
    columns = ('max_f', 'ap', 'precision', 'recall', 'fpr', 'fnr', 'iou', 'iou_at_0.5')
    lines = [f'{"":8}' + ''.join(f'{c:>11}' for c in ('MaxF', 'AP', 'PRE', 'REC', 'FPR', 'FNR', 'IoU', 'IoU@0.5'))
             + '  threshold  Udacity bar']
    for category, scores in table.items():
        lines.append(f'{category:8}' + ''.join(f'{100 * scores[c]:11.2f}' for c in columns)
                     + f'{scores["threshold"]:11.3f}  ' + ('pass' if scores['udacity_pass'] else 'fail'))
    return '\n'.join(lines)


def evaluate_parser():
    parser = argparse.ArgumentParser(
        prog='main.py evaluate',
        description='Score a trained run (its best checkpoint by validation MaxF) with the KITTI road metrics, '
                    'per category and pooled, at each image\'s original resolution; print a table and write '
                    'RUN_DIR/eval.json and RUN_DIR/eval_precision_recall.png.')
    parser.add_argument('--checkpoint', metavar='RUN_DIR', required=True, help='a run folder of main.py')
    parser.add_argument('--dataset', metavar='DIR',
                        help='score every image of DIR/training (KITTI layout, with ground truth) instead of the '
                             'run\'s validation split')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'),
                        help='arithmetic of the network: auto = bf16 on CPUs with AVX512_BF16 or AMX, else fp32 '
                             '[default: the precision the run validated with, so that its figures are repeated; '
                             'auto where this machine lacks it]')
    return parser


def evaluate_command(argv, build_fcn):
    """`main.py evaluate`: KITTI scores of a run's best checkpoint, printed and written to eval.json.
    build_fcn(sess, vgg_dir, seed) -> tensors by name is main's graph builder."""
    args = evaluate_parser().parse_args(argv)
    config = run_folder.read_config(args.checkpoint, '--checkpoint')
    best = tf.train.latest_checkpoint(os.path.join(args.checkpoint, run_folder.BEST_CHECKPOINT))
    if best is None:
        raise UserError(f'{args.checkpoint}: no best checkpoint yet (one is saved after the first epoch)')
    if args.dataset:
        if not os.path.isdir(os.path.join(args.dataset, 'training')):
            raise UserError(f'--dataset {args.dataset}: no training/ folder (image_2 and gt_image_2) there')
        pairs = kitti.training_pairs(os.path.join(args.dataset, 'training'))
    else:
        pairs = kitti.training_pairs(os.path.join(config['data']['dataset'], 'training'), config['data']['val_names'])
    examples = load_examples(pairs)
    if not examples:
        raise UserError(f'{args.checkpoint}: no images to evaluate')
    image_shape = tuple(config['settings']['image_shape'])
    ran = config.get('precision', {}).get('chosen', 'fp32')  # runs older than --precision auto ran fp32
    if args.precision:
        arithmetic, why = precision.choose(args.precision)
    elif ran == 'bf16' and precision.mixed_precision()[0] != 'bf16':
        arithmetic, why = precision.choose('auto')
    else:
        arithmetic, why = ran, 'the precision the run validated with'
    print(f'precision {arithmetic} ({why})', flush=True)
    with tf.Graph().as_default(), tf.Session(config=precision.training_config(arithmetic)) as sess:
        net = build_fcn(sess, config['weights']['vgg_dir'], config['settings']['seed'])
        tf.train.Saver(tf.trainable_variables()).restore(sess, best)
        validate_fn = make_validate_fn(sess, net, examples, image_shape)
        sess.graph.finalize()
        record, _ = validate_fn()
    print(f'{best} on {len(examples)} images of {args.dataset or "the validation split"}, KITTI road scores '
          f'(perspective view, %):\n' + format_kitti_table(record['val_kitti']))
    path = os.path.join(args.checkpoint, 'eval.json')
    plot = os.path.join(args.checkpoint, 'eval_precision_recall.png')
    with files.writing(args.checkpoint, 'the evaluation'):
        files.write_json(path, {'checkpoint': best, 'dataset': args.dataset or config['data']['dataset'],
                                'precision': arithmetic,
                                'images': [name for name, _, _ in examples], 'loss': record['val_loss'],
                                'kitti': record['val_kitti'], 'counts': record['val_counts']})
        plots.plot_precision_recall(record['val_counts'], plot, f'{os.path.basename(best)}, {len(examples)} images')
    print(f'written to {path} and {plot}')
