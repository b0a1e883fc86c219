"""Files written safely: atomically (never half a file), JSON without NaN, and a full or read-only disk reported
as the user's problem, naming the folder."""
import contextlib
import errno
import json
import os
import shutil

import numpy as np

from fcn8s.errors import UserError

# The OSErrors that come from the user's disk, not from a bug: no space, no permission, a read-only file system.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def atomic_write(path, data):
    """Write data (bytes or str) through a temporary file renamed into place: a crash never leaves half a file."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


STAGING_MARK = '.staging'  # marks a FOLDER.partial as this project's own: only such a folder is ever deleted


@contextlib.contextmanager
def staged_folder(path, replace=False):
    """Yield path.partial, a new folder to fill; when the block ends it becomes path (replacing an old one with
    replace; else path must not exist: FileExistsError), and when the block fails it is removed, so that a
    crash never leaves half a folder under path. A path.partial this project did not make is never deleted
    (FileExistsError); one left by a killed run of ours is made anew."""
    if os.path.exists(path) and not replace:
        raise FileExistsError(f'{path} already exists')
    staging = path.rstrip(os.sep) + '.partial'
    mark = os.path.join(staging, STAGING_MARK)
    if os.path.exists(staging):
        if not os.path.isfile(mark):
            raise FileExistsError(f'{staging} already exists and is not a folder this project began')
        shutil.rmtree(staging)
    os.makedirs(staging)
    open(mark, 'w').close()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.remove(mark)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(staging, path)


def finite_or_none(value):
    """JSON has no NaN: a non-finite figure (no road in the split, a diverged loss) is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path, data):
    atomic_write(path, json.dumps(finite_or_none(data), indent=2, allow_nan=False))


def free_bytes(path):
    """Free space on the file system that holds path (or, if it does not exist yet, its nearest parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def size_text(n):
    """Bytes as a reader wants them: '3.4 MB', '2.61 GB'."""
    return f'{n / 1e9:.2f} GB' if n >= 1e9 else f'{n / 1e6:.1f} MB'


def is_disk_error(error):
    return isinstance(error, OSError) and error.errno in DISK_ERRNOS


@contextlib.contextmanager
def writing(folder, what='files'):
    """Turn a full, read-only or forbidden disk while writing `what` into `folder` into a UserError naming the
    folder (and the free space); any other OSError is a bug and keeps its traceback."""
    try:
        yield
    except OSError as e:
        if not is_disk_error(e):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f'no space left on the disk of {folder} while writing {what} '
                            f'({size_text(free_bytes(folder))} free): free some space and try again') from None
        raise UserError(f'cannot write {what} into {folder}: {e.strerror}') from None
