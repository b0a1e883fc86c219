"""Downloads and archives: resumable HTTP downloads with a progress bar, zip checks (integrity, expected files, no
member outside the target) and extraction that never writes into a folder of the user's."""
import hashlib
import http.client
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from tqdm import tqdm

from fcn8s.errors import UserError

DOWNLOAD_TIMEOUT_S = 15
DOWNLOAD_ATTEMPTS = 5
EXTRACT_PREFIX = '.extract-'


class DownloadCutOff(OSError):
    """The server closed the connection before the whole body arrived."""


def _http_reason(error):
    if isinstance(error, urllib.error.HTTPError):
        return f'HTTP {error.code} {error.reason}'
    return str(getattr(error, 'reason', None) or error)


def _fetch_once(url, part):
    """One HTTP request appending to `part` from where it ends (HTTP Range), or rewriting it when the server
    ignores the range. Returns the file's size; raises DownloadCutOff when the body ends early."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={offset}-'} if offset else {})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        resumed = offset and response.status == 206 and \
            (response.headers.get('Content-Range') or '').startswith(f'bytes {offset}-')
        if response.status == 206 and not resumed:  # some other range: only a fresh start is safe
            os.remove(part)
            return _fetch_once(url, part)
        offset = offset if resumed else 0
        length = response.headers.get('Content-Length')
        total = offset + int(length) if length else None
        with open(part, 'ab' if resumed else 'wb') as out, \
                tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part)[:-len('.part')]) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b''):
                out.write(chunk)
                bar.update(len(chunk))
            size = out.tell()
    if total is not None and size < total:  # http.client does not raise on a body cut short
        raise DownloadCutOff(f'the connection closed after {size} of {total} bytes')
    return size


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, checksum=None):
    """Fetch url into path with a progress bar (size, speed), resuming a `.part` file left by an earlier
    attempt, and rename it to path only when complete (and matching checksum=(algorithm, hex) if given).

    A connection that drops is resumed up to DOWNLOAD_ATTEMPTS times while each attempt makes progress. Any
    failure is a UserError naming the URL and the error; the `.part` file of a cut-off download is kept for the
    next run to resume, a corrupt one is removed.
    """
    part = path + '.part'
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        before = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            _fetch_once(url, part)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and os.path.exists(part):  # nothing after our .part's end
                if (e.headers.get('Content-Range') or '') == f'bytes */{os.path.getsize(part)}':
                    break  # complete: an earlier run stopped between the last byte and the rename
                os.remove(part)  # longer than the file: start again
                continue
            raise UserError(f'could not download {url}: {_http_reason(e)}') from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            after = os.path.getsize(part) if os.path.exists(part) else 0
            if after <= before or attempt == DOWNLOAD_ATTEMPTS:
                kept = f'; {after} bytes kept in {part}, the next run resumes from there' if after else ''
                raise UserError(f'could not download {url}: {_http_reason(e)}{kept}') from None
            tqdm.write(f'download interrupted ({_http_reason(e)}); resuming at byte {after} '
                       f'(attempt {attempt + 1} of {DOWNLOAD_ATTEMPTS})')
    else:
        raise UserError(f'could not download {url}: the server refused to resume ({DOWNLOAD_ATTEMPTS} attempts)')
    if checksum is not None:
        algorithm, expected = checksum
        actual = file_digest(part, algorithm)
        if actual != expected:
            os.remove(part)
            raise UserError(f'{url} arrived with {algorithm} {actual}, expected {expected}: the download was '
                            'corrupt and has been removed; run again to retry')
    os.replace(part, path)
    return path


def _unsafe_member(info):
    """Why the zip member would land outside the extraction folder (or be a link), or None."""
    name = info.filename
    if name.startswith(('/', '\\')) or re.match(r'^[A-Za-z]:', name):
        return 'an absolute path'
    if '..' in re.split(r'[/\\]', name):
        return 'a path with ".."'
    if stat.S_ISLNK(info.external_attr >> 16):
        return 'a symbolic link'
    return None


def check_zip(zip_path, required=()):
    """Check that zip_path is an intact zip holding every name in `required` (a trailing / means a folder with
    files in it) and no member that would land outside the target folder; UserError naming the problem."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for info in members:
                reason = _unsafe_member(info)
                if reason is not None:
                    raise UserError(f'{zip_path} holds {info.filename!r}, {reason}: refusing to extract it')
            names = {info.filename for info in members}
            holds = lambda r: any(n.startswith(r) and n != r for n in names) if r.endswith('/') else r in names
            missing = [r for r in required if not holds(r)]
            if missing:
                raise UserError(f'{zip_path} does not hold {", ".join(missing)}: it is not the expected archive')
            try:
                bad = archive.testzip()
            except (zlib.error, RuntimeError, NotImplementedError) as e:  # broken, encrypted, exotic member
                raise UserError(f'{zip_path} is corrupt or unreadable ({e.__class__.__name__}: {e})') from None
            if bad is not None:
                raise UserError(f'{zip_path} is corrupt (CRC error in {bad})')
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise UserError(f'{zip_path} is not a valid zip file ({e})') from None


def extract_zip(zip_path, target_dir, required):
    """Check zip_path (check_zip), extract the top-level folders of `required` into a temporary folder inside
    target_dir and move them into target_dir only when all are extracted; return the folders moved. A folder
    that already exists in target_dir is never overwritten (an empty one is replaced); nothing else of the
    archive is extracted."""
    check_zip(zip_path, required)
    wanted = sorted({name.split('/')[0] for name in required})
    os.makedirs(target_dir, exist_ok=True)
    for stale in os.listdir(target_dir):  # ours, left by a run that was killed while extracting
        if stale.startswith(EXTRACT_PREFIX):
            shutil.rmtree(os.path.join(target_dir, stale), ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive, \
            tempfile.TemporaryDirectory(dir=target_dir, prefix=EXTRACT_PREFIX) as tmp:
        members = [info for info in archive.infolist() if info.filename.split('/')[0] in wanted]
        for info in tqdm(members, desc=f'extracting {os.path.basename(zip_path)}', unit='file', leave=False):
            archive.extract(info, tmp)
        moved = []
        for entry in wanted:
            dest = os.path.join(target_dir, entry)
            if os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest):
                os.rmdir(dest)
            if not os.path.lexists(dest):
                os.rename(os.path.join(tmp, entry), dest)
                moved.append(entry)
        return moved


def fetch_and_extract(url, data_dir, instructions, required):
    """Download url into data_dir (unless its zip is already there), check it and extract it into data_dir.

    A zip downloaded by this call that fails its checks is removed; one that was already there is left alone.
    """
    os.makedirs(data_dir, exist_ok=True)
    zip_path = os.path.join(data_dir, os.path.basename(urllib.parse.urlsplit(url).path) or 'download.zip')
    downloaded = not os.path.exists(zip_path)
    try:
        if downloaded:
            download(url, zip_path)
        extract_zip(zip_path, data_dir, required)
    except UserError as e:
        if downloaded and os.path.exists(zip_path):
            os.remove(zip_path)
            raise UserError(f'{e}; the downloaded file was removed\n  {instructions}') from None
        advice = '' if downloaded else f'; delete {zip_path} to download it again'
        raise UserError(f'{e}{advice}\n  {instructions}') from None
    return zip_path


def download_folder(url, data_dir, name, what, contents, is_complete, instructions):
    """data_dir/name, made complete (is_complete) from the zip at url, whose members name/<contents> it checks."""
    folder = os.path.join(data_dir, name)
    if not is_complete(folder):
        refuse_incomplete(folder, what, contents)
        zip_path = fetch_and_extract(url, data_dir, instructions, [f'{name}/{c}' for c in contents])
        if not is_complete(folder):
            raise UserError(f'extracting {zip_path} did not give {folder} all of {", ".join(contents)}')
    return folder


def refuse_incomplete(folder, what, contents):
    """A folder that exists but lacks what a download would put there is the user's: never write into it."""
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UserError(f'{folder} exists but does not hold {what} (expected {", ".join(contents)}); it was left '
                        'untouched: complete it, or move it away so that it can be downloaded again')
