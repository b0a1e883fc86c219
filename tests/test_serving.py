"""Tests of fcn8s/serving.py: the batcher and the upload checks in this process; `main.py serve` itself in a
subprocess on a free loopback port (the API, bad uploads, a slow client, 16 clients at once, the API key, a clean
stop at SIGTERM), and its page in headless Chromium where Chromium and its driver are installed."""
import concurrent.futures
import io
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import main
from fcn8s import serving
from fcn8s.images import read_rgb
from fcn8s.layout import ROAD_PALETTE
from tests.support import HERE, KITTI_SAMPLES

START_SECONDS = 120  # a server loads TensorFlow and the model before it listens
CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--window-size=1280,900')


class Server:
    """`python main.py serve --port 0 FLAGS` in a subprocess: its URL once it answers /healthz, its output lines
    (read as they come, so that its pipes never fill), stop() by SIGTERM (killed if it does not end)."""

    def __init__(self, *flags):
        self.process = subprocess.Popen([sys.executable, os.path.join(HERE, 'main.py'), 'serve', '--port', '0',
                                         *flags], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines, found = [], queue.Queue()
        for pipe in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._read, args=(pipe, found), daemon=True).start()
        try:
            self.url = found.get(timeout=START_SECONDS)
        except queue.Empty:
            self.stop()
            raise AssertionError('the server did not start:\n' + self.log()) from None
        assert httpx.get(self.url + '/healthz', timeout=10).status_code == 200

    def _read(self, pipe, found):
        for line in pipe:
            self.lines.append(line)
            said = re.search(r'serving on (http://127\.0\.0\.1:\d+)/', line)
            if said:
                found.put(said.group(1))

    def log(self):
        return ''.join(self.lines)

    def rss_mb(self):
        with open(f'/proc/{self.process.pid}/status') as f:
            return int(re.search(r'VmRSS:\s+(\d+) kB', f.read()).group(1)) / 1024

    def stop(self, timeout=60):
        """The exit code after SIGTERM (None if it had to be killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None


@pytest.fixture(scope='module')
def server(optimized_run):
    """The thin model's ONNX variant (batches of 1 or 4) served, with a 1 MiB upload limit."""
    served = Server('--model', optimized_run, '--runtime', 'onnxruntime', '--precision', 'fp32', '--max-upload-mb',
                    '1', '--batch-wait-ms', '20')
    yield served
    assert served.stop() == 0
    assert 'Traceback' not in served.log()


@pytest.fixture(scope='module')
def road_image(small_dataset):
    """(PNG bytes of a generated road scene, its pixels)."""
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    path = os.path.join(test_dir, sorted(os.listdir(test_dir))[0])
    with open(path, 'rb') as f:
        return f.read(), read_rgb(path)


def png_of(body):
    """The pixels of a PNG answer."""
    return np.asarray(Image.open(io.BytesIO(body)))


def claimed_png(width, height):
    """A PNG whose header claims width x height pixels, with almost no pixel data."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(
        b'IEND', b'')


def started_upload(url, path, body, sent, headers=''):
    """A socket of a POST to url + path (with headers: lines ending in CRLF) whose body of len(body) bytes is sent
    only up to `sent`: a slow client."""
    host, port = url[len('http://'):].split(':')
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(f'POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: '
                       f'{len(body)}\r\nConnection: close\r\n{headers}\r\n'.encode() + body[:sent])
    return connection


def finished_upload(connection, rest):
    """The status code of a started_upload once the rest of its body is sent."""
    connection.sendall(rest)
    answer = b''
    while chunk := connection.recv(65536):
        answer += chunk
    connection.close()
    return int(answer.split(b' ', 2)[1])


# ------------------------------------------------------------------------------------------------ in this process

def test_requests_that_arrive_together_run_as_one_padded_batch():
    shapes = []

    def predict(batch):
        shapes.append(batch.shape)
        return batch[..., 0] * 2

    batcher = serving.Batcher(predict, (1, 4), max_batch=4, wait=0.2)
    try:
        images = [np.full((2, 3, 3), i, np.float32) for i in range(3)]
        answers = [future.result(10) for future in [batcher.submit(image) for image in images]]
        alone = batcher.submit(images[0]).result(10)
    finally:
        batcher.close()
    assert shapes == [(4, 2, 3, 3), (1, 2, 3, 3)]  # three together, padded to a batch size the model takes
    for image, (output, seconds, count) in zip(images, answers):
        np.testing.assert_array_equal(output, (image[..., 0] * 2).ravel())
        assert seconds >= 0 and count == 3
    assert alone[2] == 1 and batcher.calls() == {3: 1, 1: 1}


def test_a_failing_model_call_fails_its_requests_only():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError('out of memory')
        return batch

    batcher = serving.Batcher(predict, (1,), max_batch=1, wait=0.005)
    try:
        with pytest.raises(RuntimeError, match='out of memory'):
            batcher.submit(np.zeros((2, 2, 3), np.float32)).result(10)
        assert batcher.submit(np.ones((2, 2, 3), np.float32)).result(10)[0].shape == (12,)
        assert batcher.alive()
    finally:
        batcher.close()
    assert not batcher.alive()


@pytest.mark.parametrize('body, status, said', [
    (b'', 400, 'empty'),
    (b'{"image": "road.png"}', 415, 'not a PNG or JPEG'),
    (claimed_png(30000, 30000), 413, 'over'),
    (claimed_png(6000, 5000), 413, '6000x5000 pixels, over the limit of 25000000'),
    ('gif', 415, 'not a PNG or JPEG'),
    ('truncated', 400, 'damaged or cut short'),
    ('16-bit', 415, 'mode I;16'),
])
def test_uploads_that_are_no_usable_image_are_refused_saying_why(body, status, said, road_image):
    if isinstance(body, str):
        buffer = io.BytesIO()
        picture = {'gif': Image.new('RGB', (8, 8)), '16-bit': Image.new('I;16', (8, 8))}.get(body)
        if picture is None:
            body = road_image[0][:len(road_image[0]) // 2]
        else:
            picture.save(buffer, 'GIF' if body == 'gif' else 'PNG')
            body = buffer.getvalue()
    with pytest.raises(serving.Refused, match=said) as refused:
        serving.decode_upload(body, 25_000_000)
    assert refused.value.status == status


def test_the_answers_are_the_overlay_the_class_colours_or_the_road_probability():
    image = np.full((6, 10, 3), 100, np.uint8)
    road = np.zeros((2, 4), np.float32)
    road[1] = 0.9  # the lower half is road
    classes = (('non-road', 'road'), ROAD_PALETTE, None)
    mask = serving.answer_picture(image, road, 'mask', classes, (2, 4))
    assert mask.shape == (6, 10, 3) and (mask[-1] == ROAD_PALETTE[1]).all() and (mask[0] == ROAD_PALETTE[0]).all()
    probability = serving.answer_picture(image, road, 'probability', classes, (2, 4))
    assert probability.dtype == np.uint8 and probability.shape == (6, 10) and probability[-1, 0] == 230
    assert (serving.answer_picture(image, road, 'overlay', classes, (2, 4))[-1] != image[-1]).any()
    scene = np.zeros((2, 4, 3), np.float32)
    scene[..., 2] = 1  # every pixel the third class
    palette = ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    coloured = serving.answer_picture(image, scene, 'mask', (('a', 'b', 'c'), palette, None), (2, 4))
    assert (coloured == (7, 8, 9)).all()


def test_other_machines_are_served_only_when_asked_and_without_a_key_with_a_warning(capsys):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        serving.say_where(sock, '127.0.0.1', None)
        assert 'this machine only' in capsys.readouterr().out
        serving.say_where(sock, '0.0.0.0', None)  # only said: this socket stays on loopback
        said = capsys.readouterr()
        assert 'to other machines too' in said.out and 'without --api-key-file' in said.err
        serving.say_where(sock, '0.0.0.0', 'key')
        assert 'warning' not in capsys.readouterr().err


def test_serve_refuses_a_missing_key_file_and_a_port_in_use(thin_run, tmp_path, capsys):
    assert main.main(['serve', '--model', thin_run, '--api-key-file', str(tmp_path / 'none')]) == 2
    assert 'cannot be read' in capsys.readouterr().err
    (tmp_path / 'empty').write_text('\n')
    assert main.main(['serve', '--model', thin_run, '--api-key-file', str(tmp_path / 'empty')]) == 2
    assert 'first line must be the key' in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main.main(['serve', '--model', thin_run, '--port', port]) == 2
    assert f'--port {port}: cannot listen there' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the server

def test_the_api_answers_pngs_of_the_images_size_and_describes_itself(server, road_image):
    body, pixels = road_image
    model = httpx.get(server.url + '/v1/model').json()
    assert model['kind'] == 'road' and model['input_size'] == [64, 224] and model['batch_sizes'] == [1, 4]
    assert [c['name'] for c in model['classes']] == ['non-road', 'road'] and 'model.onnx' in model['model']
    answers = {}
    for output in ('overlay', 'mask', 'probability'):
        answer = httpx.post(f'{server.url}/v1/segment?output={output}', content=body)
        assert answer.status_code == 200 and answer.headers['content-type'] == 'image/png'
        assert 'model;dur=' in answer.headers['server-timing']
        answers[output] = png_of(answer.content)
        assert answers[output].shape[:2] == pixels.shape[:2]
    assert (answers['overlay'] != pixels).any() or (answers['probability'] <= 127).all()
    road = (answers['mask'] == ROAD_PALETTE[1]).all(-1)
    assert road.sum() + (answers['mask'] == ROAD_PALETTE[0]).all(-1).sum() == road.size
    np.testing.assert_array_equal(road, answers['probability'] > 127)
    as_form = httpx.post(server.url + '/v1/segment', files={'image': ('scene.png', body, 'image/png')})
    np.testing.assert_array_equal(png_of(as_form.content), answers['overlay'])
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, 'JPEG')
    assert png_of(httpx.post(server.url + '/v1/segment', content=jpeg.getvalue()).content).shape == pixels.shape
    schema = httpx.get(server.url + '/openapi.json').json()
    segment = schema['paths']['/v1/segment']['post']
    assert set(segment['requestBody']['content']) == {'image/png', 'image/jpeg', 'multipart/form-data'}
    assert segment['parameters'][0]['schema']['enum'] == ['overlay', 'mask', 'probability']
    with httpx.Client(base_url=server.url) as kept_alive:  # answers on a kept-alive connection wait for nothing
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            assert kept_alive.get('/healthz').status_code == 200
            seconds.append(time.perf_counter() - start)
    assert np.median(seconds) < 0.03, seconds
    page = httpx.get(server.url + '/')
    assert page.status_code == 200 and "default-src 'none'" in page.headers['content-security-policy']
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from elsewhere


@pytest.mark.skipif(not os.path.isdir(KITTI_SAMPLES), reason='the real KITTI samples are not in ../shared')
def test_a_real_road_image_gets_the_same_overlay_and_map_as_infer(server, optimized_run, tmp_path):
    image = os.path.join(KITTI_SAMPLES, 'testing', 'image_2', 'um_000003.png')
    assert main.main(['infer', '--model', optimized_run, '--runtime', 'onnxruntime', '--precision', 'fp32',
                      '--input', image, '--output', str(tmp_path), '--probabilities']) == 0
    with open(image, 'rb') as f:
        body = f.read()
    served = {output: png_of(httpx.post(f'{server.url}/v1/segment?output={output}', content=body).content)
              for output in ('overlay', 'probability')}
    np.testing.assert_array_equal(served['overlay'], iio.imread(tmp_path / 'um_000003.png'))
    np.testing.assert_array_equal(served['probability'], iio.imread(tmp_path / 'probabilities' / 'um_000003.png'))


def test_bad_uploads_get_a_4xx_at_once_and_the_next_request_is_served(server, road_image):
    body = road_image[0]

    def chunks(data):  # no Content-Length: the limit is found as the body arrives
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    too_large = bytes(2 ** 20 + 1)
    cases = {'empty': ({'content': b''}, 400), 'text': ({'content': b'road please'}, 415),
             'truncated': ({'content': body[:len(body) // 3]}, 400),
             'huge header': ({'content': claimed_png(30000, 30000)}, 413),
             'over the limit': ({'content': too_large}, 413),
             'over the limit, streamed': ({'content': chunks(too_large)}, 413),
             'unknown output': ({'content': body, 'params': {'output': 'edges'}}, 422),
             'form without image': ({'files': {'picture': ('a.png', body, 'image/png')}}, 400)}
    for name, (request, status) in cases.items():
        start = time.perf_counter()
        answer = httpx.post(server.url + '/v1/segment', timeout=10, **request)
        assert (answer.status_code, time.perf_counter() - start < 1) == (status, True), name
        assert answer.json()['error'], name
        assert httpx.post(server.url + '/v1/segment', content=body).status_code == 200, name
    assert 'Traceback' not in server.log()


def test_a_slow_client_holds_no_one_up(server, road_image):
    body = road_image[0]
    slow = started_upload(server.url, '/v1/segment', body, len(body) // 2)
    start = time.perf_counter()
    assert httpx.post(server.url + '/v1/segment', content=body).status_code == 200
    assert time.perf_counter() - start < 5
    assert finished_upload(slow, body[len(body) // 2:]) == 200


def test_sixteen_clients_at_once_all_get_answers_in_batches_and_memory_stays(server, road_image):
    body = road_image[0]

    def client(seconds):
        statuses = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                statuses.append(http.post('/v1/segment', content=body).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        warm = [s for statuses in pool.map(client, [1.5] * 16) for s in statuses]
        before = server.rss_mb()
        loaded = [s for statuses in pool.map(client, [4] * 16) for s in statuses]
    assert set(warm + loaded) == {200} and len(loaded) >= 16
    assert server.rss_mb() - before < 40, f'{before:.0f} MB after the warm-up, {server.rss_mb():.0f} MB after'
    calls = {int(n): c for n, c in httpx.get(server.url + '/v1/model').json()['calls_by_batch'].items()}
    assert max(calls) > 1, calls  # requests that arrived together ran together


def test_with_a_key_only_requests_that_carry_it_are_served_and_sigterm_lets_requests_finish(thin_run, road_image,
                                                                                          tmp_path):
    (tmp_path / 'key').write_text('s3cret-key\n')
    served = Server('--model', thin_run, '--api-key-file', str(tmp_path / 'key'))
    try:
        body, key = road_image[0], {'Authorization': 'Bearer s3cret-key'}
        assert httpx.get(served.url + '/healthz').status_code == 200
        for wrong in ({}, {'Authorization': 'Bearer guess'}):
            refused = httpx.post(served.url + '/v1/segment', content=body, headers=wrong)
            assert refused.status_code == 401 and 'API key' in refused.json()['error']
            assert httpx.get(served.url + '/v1/model', headers=wrong).status_code == 401
        assert httpx.post(served.url + '/v1/segment', content=body, headers=key).status_code == 200
        in_flight = started_upload(served.url, '/v1/segment', body, len(body) // 2,
                                   'Authorization: Bearer s3cret-key\r\n')
        time.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert served.process.poll() is None  # waiting for the request in flight
        assert finished_upload(in_flight, body[len(body) // 2:]) == 200
        assert served.process.wait(60) == 0
    finally:
        if served.process.poll() is None:
            served.stop()
    assert 'stopped' in served.log() and 'Traceback' not in served.log()


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason=f'no headless browser: {CHROMIUM} and {CHROMEDRIVER} are Debian\'s chromium and '
                           'chromium-driver (apt-get install chromium chromium-driver)')
def test_the_page_shows_the_overlay_of_a_chosen_image_in_a_browser(server, small_dataset, tmp_path):
    webdriver = pytest.importorskip('selenium.webdriver')
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    real = os.path.realpath(os.path.join(KITTI_SAMPLES, 'testing', 'image_2', 'um_000003.png'))  # as Chromium wants
    test_dir = os.path.join(small_dataset, 'testing', 'image_2')
    image = real if os.path.isfile(real) else os.path.join(test_dir, sorted(os.listdir(test_dir))[0])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}'):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        browser.set_page_load_timeout(30)
        browser.get(server.url + '/')
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#legend tr'))
        browser.find_element(By.ID, 'file').send_keys(image)
        wait.until(lambda b: b.find_element(By.ID, 'status').get_attribute('data-state') in ('done', 'error'))
        status = browser.find_element(By.ID, 'status')
        assert status.get_attribute('data-state') == 'done', status.text
        width = browser.execute_script('return document.getElementById("result").naturalWidth')
        assert width == read_rgb(image).shape[1] and ' ms in all' in status.text
        assert [row.text for row in browser.find_elements(By.CSS_SELECTOR, '#legend tr')] == ['non-road', 'road']
        browser.save_screenshot(str(tmp_path / 'page.png'))
    finally:
        browser.quit()
    assert iio.imread(tmp_path / 'page.png').shape[1] > 0
