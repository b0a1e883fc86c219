"""fcn8s/downloads.py through a loopback HTTP server: resuming, checks, safe extraction, never writing into a folder
of the user's."""
import io
import os
import zipfile

import pytest
import tensorflow.compat.v1 as tf

import helper
import main
from fcn8s import downloads, kitti, weights
from fcn8s.errors import UserError
from tests.support import FileServer, make_zip, snapshot, vgg_zip, zipfile_members


def test_vgg_download_from_a_loopback_server(thin_vgg, tmp_path):
    data_dir = str(tmp_path / 'data')
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(data_dir, url=server.url + '/vgg.zip')
        assert weights.vgg_is_complete(vgg_dir)
        with tf.Session() as sess:
            main.load_vgg(sess, vgg_dir)
        before = snapshot(data_dir)
        assert helper.maybe_download_pretrained_vgg(data_dir, url=server.url + '/vgg.zip') == vgg_dir
        assert len(server.requests) == 1 and snapshot(data_dir) == before  # the second run does nothing
    assert sorted(os.listdir(data_dir)) == ['vgg', 'vgg.zip']  # no .part, no temporary folder left


def test_a_download_cut_off_midway_resumes_where_it_stopped(thin_vgg, tmp_path):
    body = vgg_zip(thin_vgg)
    with FileServer({'/vgg.zip': body}, cut={'/vgg.zip': len(body) // 2}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert server.requests == [('/vgg.zip', None), ('/vgg.zip', f'bytes={len(body) // 2}-')]
    assert (tmp_path / 'vgg.zip').read_bytes() == body and weights.vgg_is_complete(vgg_dir)


def test_a_server_ignoring_range_restarts_the_download_cleanly(tmp_path):
    body = bytes(range(256)) * 400
    (tmp_path / 'file.bin.part').write_bytes(b'stale bytes of an older attempt')
    with FileServer({'/file.bin': body}, ranges=False) as server:
        downloads.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert (tmp_path / 'file.bin').read_bytes() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_run_that_fails_midway_leaves_its_part_file_for_the_next_run_to_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, 'DOWNLOAD_ATTEMPTS', 1)
    body = bytes(range(250)) * 4
    with FileServer({'/file.bin': body}, cut={'/file.bin': 300}) as server:
        with pytest.raises(UserError, match='300 bytes kept in .*file.bin.part, the next run resumes'):
            downloads.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
        assert (tmp_path / 'file.bin.part').read_bytes() == body[:300]
        path = downloads.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert server.requests[-1] == ('/file.bin', 'bytes=300-')
    assert open(path, 'rb').read() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_complete_part_file_is_not_fetched_again(tmp_path):
    body = bytes(range(200))
    (tmp_path / 'file.bin.part').write_bytes(body)  # a run stopped between the last byte and the rename
    with FileServer({'/file.bin': body}) as server:
        downloads.download(server.url + '/file.bin', str(tmp_path / 'file.bin'))
    assert (tmp_path / 'file.bin').read_bytes() == body and os.listdir(tmp_path) == ['file.bin']


def test_a_checksum_mismatch_is_refused_and_removed(tmp_path):
    with FileServer({'/weights.h5': b'not the weights'}) as server:
        with pytest.raises(UserError, match='expected 0123'):
            downloads.download(server.url + '/weights.h5', str(tmp_path / 'weights.h5'), ('md5', '0123'))
    assert os.listdir(tmp_path) == []


def test_a_corrupt_download_is_removed_and_nothing_is_extracted(thin_vgg, tmp_path):
    body = bytearray(vgg_zip(thin_vgg))
    middle = body.index(b'saved_model.pb') + 200  # inside saved_model.pb's compressed data: a CRC error
    body[middle:middle + 16] = bytes(16)
    with FileServer({'/vgg.zip': bytes(body)}) as server:
        with pytest.raises(UserError, match=r'(?s)corrupt.*removed.*unzip it in'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []


def test_a_corrupt_compressed_download_is_an_error_not_a_crash(thin_vgg, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for path, data in snapshot(thin_vgg).items():
            archive.writestr(os.path.join('vgg', path), data)
    body = bytearray(buffer.getvalue())
    start = body.index(b'vgg/variables/variables.data') + 100  # inside that member's deflate stream
    body[start:start + 30] = bytes(range(30))
    with FileServer({'/vgg.zip': bytes(body)}) as server:
        with pytest.raises(UserError, match=r'(?s)vgg.zip is corrupt.*removed'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []


def test_an_empty_target_folder_is_filled(thin_vgg, tmp_path):
    (tmp_path / 'vgg').mkdir()
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        vgg_dir = helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert weights.vgg_is_complete(vgg_dir)


def test_a_corrupt_zip_of_the_user_is_reported_not_deleted(tmp_path):
    (tmp_path / 'vgg.zip').write_bytes(b'PK\x03\x04 this is not a zip')
    with pytest.raises(UserError, match=r'not a valid zip.*delete .*vgg.zip to download it again'):
        helper.maybe_download_pretrained_vgg(str(tmp_path), url='http://127.0.0.1:9/vgg.zip')
    assert os.listdir(tmp_path) == ['vgg.zip']


@pytest.mark.parametrize('member, reason', [('vgg/../../escaped.txt', 'a path with ".."'),
                                            ('vgg\\..\\..\\escaped.txt', 'a path with ".."'),
                                            ('/tmp/escaped.txt', 'an absolute path'),
                                            ('C:escaped.txt', 'an absolute path'),
                                            ('vgg/escaped@link', 'a symbolic link')])
def test_archive_members_outside_the_target_are_refused(thin_vgg, tmp_path, member, reason):
    data_dir = tmp_path / 'a' / 'data'
    members = zipfile_members(vgg_zip(thin_vgg))
    members[member] = b'/etc/passwd' if member.endswith('@link') else b'outside'
    with FileServer({'/vgg.zip': make_zip(members)}) as server:
        with pytest.raises(UserError) as error:
            helper.maybe_download_pretrained_vgg(str(data_dir), url=server.url + '/vgg.zip')
    assert f"{member.replace('@link', '')!r}, {reason}: refusing to extract it" in str(error.value)
    assert [os.path.relpath(os.path.join(r, f), tmp_path) for r, _, fs in os.walk(tmp_path) for f in fs] == []


def test_an_archive_without_the_expected_files_is_refused(tmp_path):
    with FileServer({'/data_road.zip': make_zip({'data_road/training/image_2/um_000000.png': b'x'})}) as server:
        with pytest.raises(UserError, match='does not hold data_road/training/gt_image_2/'):
            kitti.maybe_download_kitti(str(tmp_path), url=server.url + '/data_road.zip')
    assert os.listdir(tmp_path) == []


def test_a_kitti_download_lands_in_data_road(small_dataset, tmp_path):
    members = {os.path.join('data_road', path): data for path, data in snapshot(small_dataset).items()}
    with FileServer({'/data_road.zip': make_zip(members)}) as server:
        road_dir = kitti.maybe_download_kitti(str(tmp_path), url=server.url + '/data_road.zip')
    assert snapshot(road_dir) == snapshot(small_dataset)


def test_an_incomplete_folder_of_the_user_is_never_written_into(thin_vgg, tmp_path):
    (tmp_path / 'vgg').mkdir()
    (tmp_path / 'vgg' / 'notes.txt').write_text('mine')
    with FileServer({'/vgg.zip': vgg_zip(thin_vgg)}) as server:
        with pytest.raises(UserError, match='exists but does not hold a VGG16 SavedModel.*untouched'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
        assert server.requests == []
    assert snapshot(tmp_path) == {'vgg/notes.txt': b'mine'}


def test_a_failed_download_says_what_to_do_and_leaves_no_file(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(UserError, match=r'(?s)/vgg.zip: HTTP 404.*unzip it in'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=server.url + '/vgg.zip')
    assert os.listdir(tmp_path) == []
