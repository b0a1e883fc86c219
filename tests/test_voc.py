"""fcn8s/voc.py: VOC-style exports (CVAT's colour masks with labelmap.txt, VOC's palette masks, labelme2voc's
folder) read as a layout, trained on with their own classes, and predictions written back as an export."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import main
from fcn8s import camvid, datasets, files, voc
from fcn8s.errors import UserError
from fcn8s.metrics import IGNORE

TRAIN_FLAGS = ['--epochs', '1', '--batch-size', '4', '--image-shape', '64', '96', '--keep-prob', '1',
               '--no-download', '--precision', 'fp32']


def write_layout_export(layout, folder, rgb=True):
    """A CVAT export of a layout (voc.layout_export), written whole."""
    names, palette, items = voc.layout_export(layout)
    with files.staged_folder(folder) as staging:
        voc.write_export(staging, items, names, palette, rgb)
    return folder


@pytest.fixture(scope='session')
def small_cvat(small_camvid, tmp_path_factory):
    """The synthetic CamVid set as CVAT exports it: RGB masks, labelmap.txt, train and val lists."""
    return write_layout_export(camvid.open_layout(small_camvid), str(tmp_path_factory.mktemp('cvat') / 'export'))


def copy_of(folder, tmp_path):
    target = str(tmp_path / 'export')
    shutil.copytree(folder, target)
    return target


def first_mask(folder):
    return os.path.join(folder, 'SegmentationClass', sorted(os.listdir(os.path.join(folder, 'SegmentationClass')))[0])


def test_a_cvat_export_reads_as_the_layout_it_was_written_from(small_camvid, small_cvat):
    source, export = camvid.open_layout(small_camvid), datasets.open_layout(small_cvat)
    assert datasets.provider(small_cvat).KIND == 'voc'
    assert export.classes == ('background', *camvid.CLASSES) and export.palette[0] == (0, 0, 0)
    assert [n for n, _, _ in export.train] == [n for n, _, _ in source.train]
    assert [n for n, _, _ in export.val] == [n for n, _, _ in source.val]
    ignored = datasets.open_layout(small_cvat, 'all', 'ignore')  # background: not labelled, as CamVid's void
    assert ignored.classes == camvid.CLASSES and ignored.palette == camvid.PALETTE
    for (_, image, label), (_, image2, label2) in zip(source.train, ignored.train):
        assert (ignored.load_pair(image2, label2)[1] == source.load_pair(image, label)[1]).all()
    _, classes = export.load_pair(*export.train[0][1:])
    _, original = source.load_pair(*source.train[0][1:])
    assert (classes == np.where(original == IGNORE, 0, original + 1)).all()


def test_a_cvat_export_trains_with_its_own_classes_and_sends_predictions_back(small_cvat, thin_vgg, tmp_path,
                                                                              capsys):
    run_dir = main.run(['--dataset', small_cvat, '--vgg-dir', thin_vgg, '--runs-dir', str(tmp_path / 'runs'),
                        *TRAIN_FLAGS])
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['data']['layout'] == 'voc' and config['data']['classes'][:2] == ['background', 'Sky']
    assert config['data']['palette'][1] == list(camvid.PALETTE[0])
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0
    assert 'Bicyclist' in capsys.readouterr().out
    images = os.path.join(small_cvat, 'JPEGImages')
    out = str(tmp_path / 'prelabels')
    assert main.main(['infer', '--model', run_dir, '--input', images, '--output', out, '--probabilities']) == 0
    assert voc.read_labelmap(os.path.join(out, 'labelmap.txt')) == list(zip(config['data']['classes'],
                                                                            map(tuple, config['data']['palette'])))
    listed = open(os.path.join(out, 'ImageSets', 'Segmentation', 'default.txt')).read().split()
    assert listed == sorted(os.path.splitext(f)[0] for f in os.listdir(images))
    back = datasets.open_layout(small_cvat)  # the masks read back as the predicted class ids
    for stem in listed:
        mask = np.asarray(Image.open(os.path.join(out, 'SegmentationClass', stem + '.png')).convert('RGB'))
        _, _, lookup = voc.label_table(back.classes, back.palette, 'rgb', 'all', 'class')
        predicted = np.asarray(Image.open(os.path.join(out, 'probabilities', stem + '.png')))
        assert (voc.decode_mask(stem, mask, 'rgb', lookup) == predicted).all()


def test_voc_palette_masks_without_a_labelmap_take_vocs_classes(tmp_path):
    root = tmp_path / 'voc'
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(root / sub)
    for i, name in enumerate(('2007_000032', '2007_000033', '2008_000001')):
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(root / 'JPEGImages' / f'{name}.jpg')
        mask = np.zeros((8, 10), np.uint8)
        mask[2:5, 3:7], mask[0, 0] = 15, 255  # a person; a void pixel
        voc.write_mask(str(root / 'SegmentationClass' / f'{name}.png'), mask, voc.PALETTE)
    (root / 'ImageSets/Segmentation/train.txt').write_text('2007_000032\n2007_000033\n')
    (root / 'ImageSets/Segmentation/val.txt').write_text('2008_000001\n')
    layout = datasets.open_layout(str(root))
    assert layout.classes == voc.VOC_CLASSES and layout.palette[15] == (192, 128, 128)  # VOC's person colour
    assert [n for n, _, _ in layout.val] == ['2008_000001.jpg']
    _, classes = layout.load_pair(*layout.train[0][1:])
    assert classes[3, 4] == 15 and classes[0, 0] == IGNORE and classes[7, 9] == 0


def test_a_labelme2voc_folder_takes_its_class_names(tmp_path):
    """labelme2voc.py writes JPEGImages/, SegmentationClass/ (.npy arrays), SegmentationClassPNG/ (palette PNGs,
    255 = __ignore__) and class_names.txt (_background_ first); no list files: the frames are split by sequence."""
    root = tmp_path / 'labelme'
    for sub in ('JPEGImages', 'SegmentationClass', 'SegmentationClassPNG'):
        os.makedirs(root / sub)
    (root / 'class_names.txt').write_text('\ufeff_background_\nroad\ncar\n', encoding='utf-8')  # with a BOM
    for i in range(12):
        extension = '.JPG' if i == 3 else '.jpg'  # any case of extension
        Image.fromarray(np.full((8, 10, 3), 9 * i, np.uint8)).save(root / 'JPEGImages' / f'street_{i:04d}{extension}')
        mask = np.zeros((8, 10), np.uint8)
        mask[4:], mask[5, 5] = 1, 2
        np.save(root / 'SegmentationClass' / f'street_{i:04d}.npy', mask.astype(np.int32))
        voc.write_mask(str(root / 'SegmentationClassPNG' / f'street_{i:04d}.png'), mask, voc.colormap(3))
    layout, summary = datasets.open_training_layout(str(root), 'all', 'class', 'user')
    assert layout.classes == ('_background_', 'road', 'car') and layout.val is None
    assert layout.category('street_0007.jpg') == 'street' and '12 images' in summary
    road = datasets.open_layout(str(root), 'road')
    assert road.classes == ('non-road', 'road')
    assert (road.load_pair(*road.train[0][1:])[1] == (mask == 1)).all()  # the car counts as non-road
    without = datasets.open_layout(str(root), 'all', 'ignore')
    assert without.classes == ('road', 'car') and (without.load_pair(*without.train[0][1:])[1][:4] == IGNORE).all()


def test_a_labelmap_gets_cvats_background_unless_a_class_has_its_colour_or_name():
    assert voc.labelmap_text(('road', 'car'), ((128, 64, 128), (0, 0, 142))).splitlines()[1] == 'background:0,0,0::'
    assert voc.labelmap_text(('void', 'road'), ((0, 0, 0), (128, 64, 128))).splitlines()[1:] == [
        'void:0,0,0::', 'road:128,64,128::']


def test_labelmap_lines_that_do_not_parse_or_repeat_are_named(tmp_path):
    path = tmp_path / 'labelmap.txt'
    path.write_text('# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64\n')
    with pytest.raises(UserError, match=r'labelmap.txt, line 3: "road:128,64" is not'):
        voc.read_labelmap(str(path))
    path.write_text('background:0,0,0::\nroad:128,64,128::\nlane:128,64,128::\n')
    with pytest.raises(UserError, match=r'two classes the colour \(128, 64, 128\)'):
        voc.read_labelmap(str(path))
    path.write_text('background:0,0,0::\nroad:128,64,128::\nroad:1,2,3::\n')
    with pytest.raises(UserError, match='two classes the name road'):
        voc.read_labelmap(str(path))


def break_export(export, how):
    """Damage a copy of an export the way a user's might be."""
    mask = first_mask(export)
    pixels = np.asarray(Image.open(mask).convert('RGB')).copy()
    if how == 'unknown colour':
        pixels[:2, :3] = (1, 2, 3)
        Image.fromarray(pixels).save(mask)
    elif how == 'size':
        Image.fromarray(pixels[:-1]).save(mask)
    elif how == 'no mask':
        os.remove(mask)
    elif how == 'bad labelmap line':
        with open(os.path.join(export, 'labelmap.txt'), 'a') as f:
            f.write('lane=1,2,3\n')
    elif how == 'colour twice':
        with open(os.path.join(export, 'labelmap.txt'), 'a') as f:
            f.write('Lane:128,64,128::\n')
    elif how == 'empty list':
        open(os.path.join(export, 'ImageSets', 'Segmentation', 'train.txt'), 'w').close()
    elif how == 'no list':
        for f in os.listdir(os.path.join(export, 'ImageSets', 'Segmentation')):
            os.remove(os.path.join(export, 'ImageSets', 'Segmentation', f))
    elif how == '16-bit':
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 256).save(mask)
    elif how == 'rgba':
        Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])).save(mask)


@pytest.mark.parametrize('how, said', [
    ('unknown colour', r'has colours that labelmap.txt does not list: \(1, 2, 3\): 6 px'),
    ('size', r'is 96x63 but its image is 96x64'),
    ('no mask', r'has no mask: .* is missing'),
    ('bad labelmap line', r'labelmap.txt, line 14: "lane=1,2,3" is not'),
    ('colour twice', r'two classes the colour \(128, 64, 128\)'),
    ('empty list', r'train.txt is empty'),
    ('no list', r'holds no train.txt, default.txt or trainval.txt'),
    ('16-bit', r'is a PIL mode I;16 image: labels must be RGB or palette PNGs'),
    ('rgba', r'is a PIL mode RGBA image: labels must be RGB or palette PNGs')])
def test_each_bad_export_is_one_clear_error_and_no_run_folder(small_cvat, thin_vgg, tmp_path, capsys, how, said):
    export = copy_of(small_cvat, tmp_path)
    break_export(export, how)
    runs = tmp_path / 'runs'
    assert main.main(['--dataset', export, '--vgg-dir', thin_vgg, '--runs-dir', str(runs), *TRAIN_FLAGS]) == 2
    err = capsys.readouterr().err
    last = err.replace('\r', '\n').strip().splitlines()[-1]  # after the progress bar of the files read so far
    assert last.startswith('error: ') and err.count('error:') == 1 and 'Traceback' not in err
    assert re.search(said, last), last
    assert not runs.exists() or not os.listdir(runs)
