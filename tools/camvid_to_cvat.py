"""Write a CamVid folder (SegNet's layout) as a CVAT "Segmentation mask 1.1" export: RGB masks in CamVid's
colours, CamVid's unlabelled pixels as CVAT's background (0, 0, 0), its train and val splits as CVAT subsets.

    python tools/camvid_to_cvat.py CAMVID_DIR OUTPUT_DIR

The export then trains as any annotation tool's would (`python main.py --dataset OUTPUT_DIR`): the check that
nothing is lost to the layout (docs/measurements.md), and an example of writing another dataset for CVAT."""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from fcn8s import camvid, files, voc  # noqa: E402
from fcn8s.errors import UserError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('camvid', metavar='CAMVID_DIR', help='a CamVid folder: train/, trainannot/, val/, valannot/')
    parser.add_argument('output', metavar='OUTPUT_DIR', help='the export to create; it must not exist')
    args = parser.parse_args(argv)
    try:
        if os.path.exists(args.output):
            raise UserError(f'{args.output} exists: give a new folder')
        names, palette, items = voc.layout_export(camvid.open_layout(args.camvid))
        with files.staged_folder(args.output) as staging:
            count = voc.write_export(staging, items, names, palette, rgb=True)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'{count} masks written to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
