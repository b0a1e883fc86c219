"""`main.py serve`: a trained model behind HTTP (FastAPI on uvicorn): `POST /v1/segment` answers an uploaded PNG or
JPEG with a PNG of its size (the overlay, the mask in the run's class colours, or a road model's probability),
`GET /v1/model` describes the model, `GET /healthz` says it answers, `/` is a page to try it, `/openapi.json` the
API's description.

One thread runs the model (Batcher): requests that arrive together run as one batch, as TensorFlow Serving's
batching does. Decoding, resizing and painting run in a pool of threads, never in the event loop, so a slow client or
a large image holds no one else up. Uploads are checked before they cost memory: the body's size as it arrives,
the pixel count from the image's header before it is decoded.
"""
import asyncio
import concurrent.futures
import contextlib
import hmac
import importlib.resources
import io
import queue
import signal
import socket
import threading
import time
import warnings
from typing import Literal

import fastapi
import numpy as np
import uvicorn
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from fcn8s import infer
from fcn8s.errors import UserError, warn
from fcn8s.images import CONVERTIBLE_MODES, class_overlay, overlay
from fcn8s.metrics import confidence, is_road
from fcn8s.outputs import FLIP_SAID, classes_at, flipped, model_input, road_at
from fcn8s.precision import cores

FORMATS = ('PNG', 'JPEG')  # what an upload may be
OUTPUTS = Literal['overlay', 'mask', 'probability']
LOOPBACK = ('127.0.0.1', 'localhost', '::1')
UPLOAD_SECONDS = 60  # a body must arrive within this: a client that stalls is answered 408, not waited for
STOP_SECONDS = 30  # at SIGTERM or Ctrl-C, requests in flight get this long to finish
# Connections at once; more are answered 503 at once: each may hold a body of up to the size limit in memory.
MAX_CONNECTIONS = 64
PNG_LEVEL = 1  # zlib level of the answers: encoding time is the server's, a few more bytes the network's
PAGE = 'serving_page.html'  # beside this module: the page at /, with no assets from elsewhere
# The page's own script and styles only: a browser loads nothing from elsewhere for it.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
               "connect-src 'self'")
UPLOAD_BODY = {'required': True, 'description': 'the image: PNG or JPEG bytes, or a multipart form with the image in '
                                                'a file field "image"',
               'content': {**{kind: {'schema': {'type': 'string', 'format': 'binary'}}
                              for kind in ('image/png', 'image/jpeg')},
                           'multipart/form-data': {'schema': {'type': 'object', 'required': ['image'], 'properties': {
                               'image': {'type': 'string', 'format': 'binary'}}}}}}
ERROR_BODY = {'content': {'application/json': {'schema': {
    'type': 'object', 'properties': {'error': {'type': 'string'}}, 'required': ['error']}}}}
REFUSALS = {400: 'empty, damaged or cut short, or no field "image" in a form', 401: 'no or a wrong API key',
            408: f'the body did not arrive within {UPLOAD_SECONDS} s', 413: 'over the size or the pixel limit',
            415: 'not a PNG or JPEG image, or not 8-bit', 422: 'an unknown output, or probability of a '
                                                               'scene-parsing model'}


class Refused(Exception):
    """A request answered with a 4xx (status) and a JSON {"error": message}: what was wrong, never a traceback."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Batcher:
    """The one thread that runs the model. Images submitted within wait seconds of the first of a batch (up to
    max_batch of them) run as one call of predict (float32 [N, H, W, 3] -> N outputs), padded with copies of the
    last image to the smallest of sizes (the batch sizes the model takes) that holds them, as infer_video pads."""

    def __init__(self, predict, sizes, max_batch, wait):
        self._predict, self._sizes, self._max, self._wait = predict, sorted(sizes), max_batch, wait
        self._queue, self._calls = queue.Queue(), {}
        self._thread = threading.Thread(target=self._work, name='model')
        self._thread.start()

    def submit(self, image):
        """concurrent.futures.Future of (the model's output for one float32 [H, W, 3] image, flat; the seconds of
        the model call; the number of images in that call)."""
        future = concurrent.futures.Future()
        self._queue.put((image, future))
        return future

    def alive(self):
        """Whether the model's thread runs."""
        return self._thread.is_alive()

    def calls(self):
        """{images in a call: how many calls had that many}, so far."""
        return dict(self._calls)

    def close(self):
        """Stop the thread once what was submitted has run."""
        self._queue.put(None)
        self._thread.join()

    def _work(self):
        while True:
            group = self._gather()
            if group is None:
                return
            if group:
                self._run(group)

    def _gather(self):
        """The next batch [(image, future)], waiting at most wait seconds after its first image for more; None at
        close. Futures cancelled meanwhile (their client gone) are dropped."""
        first = self._queue.get()
        if first is None:
            return None
        group, deadline = [first], time.monotonic() + self._wait
        while len(group) < self._max:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close after this batch
                break
            group.append(item)
        return [(image, future) for image, future in group if future.set_running_or_notify_cancel()]

    def _run(self, group):
        """One model call for group [(image, future)]; a failure is every future's exception."""
        size = next((s for s in self._sizes if s >= len(group)), self._sizes[-1])
        images = np.stack([image for image, _ in group] + [group[-1][0]] * (size - len(group)))
        start = time.perf_counter()
        try:
            outputs = infer.per_image(self._predict(images), size)
        except Exception as e:  # the model's own error goes to its requests: the server goes on
            for _, future in group:
                future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        self._calls[len(group)] = self._calls.get(len(group), 0) + 1
        for (_, future), output in zip(group, outputs):
            future.set_result((output, seconds, len(group)))


def decode_upload(body, max_pixels):
    """uint8 [h, w, 3] RGB of an uploaded image's bytes; Refused for an empty body, anything but an 8-bit PNG or JPEG,
    more than max_pixels pixels (from the header: refused before decoding) or an image damaged or cut short."""
    if not body:
        raise Refused(400, 'the body is empty: send the bytes of a PNG or JPEG image, or a multipart form with the '
                           'image in a file field "image"')
    try:
        picture = Image.open(io.BytesIO(body), formats=FORMATS)
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours: its header claims even more
        raise Refused(413, f'the image\'s header claims over {max_pixels} pixels, the limit') from None
    except Exception:  # Pillow raises many types for what is not an image of FORMATS: the same to the client
        raise Refused(415, f'not a PNG or JPEG image (the body begins {body[:12]!r})') from None
    width, height = picture.size
    if width * height > max_pixels:
        raise Refused(413, f'the image\'s header claims {width}x{height} pixels, over the limit of {max_pixels} '
                           '(the server\'s --max-megapixels)')
    if picture.mode not in CONVERTIBLE_MODES:
        raise Refused(415, f'a {picture.format} of mode {picture.mode}: send an 8-bit RGB or grey image')
    try:
        return np.asarray(picture.convert('RGB'))
    except Exception as e:  # as above: a truncated or corrupt file raises OSError, SyntaxError, ValueError...
        raise Refused(400, f'the {picture.format} is damaged or cut short ({type(e).__name__}: {e})') from None


def model_inputs(body, max_pixels, image_shape):
    """(uint8 [h, w, 3] image of an upload (decode_upload), float32 [H, W, 3] the model's input of it)."""
    image = decode_upload(body, max_pixels)
    return image, model_input(image, image_shape)


def answer_picture(image, output, kind, classes, image_shape):
    """uint8 picture of an image [h, w, 3] from the model's output for it at image_shape (H, W): kind 'overlay'
    (road green, or each class in its colour) [h, w, 3]; 'mask' [h, w, 3] each pixel its class's colour (a road
    model: road where the probability exceeds 0.5); 'probability' [h, w] a road model's, x 255."""
    names, palette, _ = classes
    if is_road(names):
        probability = road_at(output, image_shape, image.shape[:2])
        if kind == 'probability':
            return confidence(probability)
        predicted = (probability > 0.5).view(np.uint8)
        if kind == 'overlay':
            return overlay(image, probability)
    else:
        predicted = classes_at(output, image_shape, len(names), image.shape[:2])
        if kind == 'overlay':
            return class_overlay(image, predicted, palette)
    return np.asarray(palette, np.uint8)[predicted]


def png_bytes(picture):
    """The PNG file (bytes) of a uint8 picture [h, w] or [h, w, 3]."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, 'PNG', compress_level=PNG_LEVEL)
    return buffer.getvalue()


async def read_upload(request, max_bytes):
    """The image bytes of a request: its body, or the file field "image" of a multipart form; Refused (413) as soon
    as the body is over max_bytes (by its Content-Length, else as it arrives), 408 when it stalls."""
    too_large = f'the body is over the limit of {max_bytes} bytes (the server\'s --max-upload-mb)'
    declared = request.headers.get('content-length', '')
    if declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, too_large)  # before reading: a client that waits for 100-continue never sends it
    chunks, size = [], 0
    try:
        async with asyncio.timeout(UPLOAD_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise Refused(413, too_large)
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f'the body did not arrive within {UPLOAD_SECONDS} s') from None
    except ClientDisconnect:
        raise Refused(400, 'the client went away before sending its body') from None
    body = b''.join(chunks)
    if not request.headers.get('content-type', '').startswith('multipart/form-data'):
        return body
    return await form_image(request.scope, body)


async def form_image(scope, body):
    """The bytes of the file field "image" of a multipart form body (the request of scope's, already read)."""
    async def replay():
        return {'type': 'http.request', 'body': body, 'more_body': False}
    async with Request(scope, replay).form(max_files=1, max_fields=8) as form:
        field = form.get('image')
        if isinstance(field, str) or field is None:
            raise Refused(400, 'a multipart form needs the image in a file field named "image"')
        return await field.read()


def error_handlers(app):
    """Every refusal as JSON {"error": what was wrong}: the upload's checks, the query's, and Starlette's own
    (404 of an unknown path, 405 of a wrong method, 400 of a malformed form)."""
    @app.exception_handler(Refused)
    async def refused(_, e):
        return JSONResponse({'error': e.message}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e):
        said = '; '.join(f'{error["loc"][-1]}: {error["msg"]}' for error in e.errors())
        return JSONResponse({'error': said}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(_, e):
        return JSONResponse({'error': e.detail}, e.status_code, headers=e.headers)


def key_check(api_key):
    """A FastAPI dependency: Refused (401) unless the request says `Authorization: Bearer API_KEY` (none without
    api_key)."""
    def check(request: Request):
        said = request.headers.get('authorization', '')
        if api_key and not hmac.compare_digest(said.encode(), f'Bearer {api_key}'.encode()):
            raise Refused(401, 'this server needs its API key: send the header "Authorization: Bearer KEY"',
                          {'WWW-Authenticate': 'Bearer'})
    return fastapi.Depends(check)


def create_app(batcher, pool, model, limits, api_key=None):
    """The FastAPI app of a model: model {'image_shape': (H, W), 'classes': (names, palette, encode), 'info': what
    GET /v1/model says}; its predictions come from batcher (Batcher), its decoding and painting run in pool (a
    concurrent.futures executor); limits (the largest body in bytes, the most pixels of an image); api_key: the
    key /v1/ needs, or None."""
    image_shape, classes, (max_bytes, max_pixels) = model['image_shape'], model['classes'], limits
    road = is_road(classes[0])
    app = fastapi.FastAPI(title='FCN-8s segmentation', version='1', docs_url=None, redoc_url=None,
                          description='Segment an image with a trained FCN-8s model (docs/serving.md).')
    error_handlers(app)
    secured = [key_check(api_key)]
    page = importlib.resources.files('fcn8s').joinpath(PAGE).read_text()
    refusals = {status: {**ERROR_BODY, 'description': why} for status, why in REFUSALS.items()}

    @app.get('/', include_in_schema=False)
    async def try_it():
        return HTMLResponse(page, headers={'Content-Security-Policy': PAGE_POLICY})

    @app.get('/healthz', summary='200 while the model answers', responses={503: ERROR_BODY})
    async def healthz():
        if not batcher.alive():
            return JSONResponse({'error': 'the model\'s thread has stopped'}, 503)
        return {'status': 'ok'}

    @app.get('/v1/model', summary='the model: its variant and precision, classes and colours, input size',
             dependencies=secured, responses={401: refusals[401]})
    async def describe():
        return {**model['info'], 'calls_by_batch': batcher.calls()}

    @app.post('/v1/segment', summary='a PNG of the image\'s size: its overlay, mask or road probability',
              dependencies=secured, response_class=Response, openapi_extra={'requestBody': UPLOAD_BODY},
              responses={200: {'content': {'image/png': {}}, 'description': 'the PNG; its Server-Timing header '
                                                                           'says the model\'s and the total time'},
                         **refusals})
    async def segment(request: Request, output: OUTPUTS = fastapi.Query(
            'overlay', description='overlay: the image with its segmentation; mask: each pixel its class\'s '
                                   'colour; probability: a road model\'s road probability as 8-bit grey')):
        start = time.perf_counter()
        if output == 'probability' and not road:
            raise Refused(422, f'output=probability is a road model\'s; this model segments {len(classes[0])} '
                               'classes: ask for overlay or mask')
        body = await read_upload(request, max_bytes)
        loop = asyncio.get_running_loop()
        image, fed = await loop.run_in_executor(pool, model_inputs, body, max_pixels, image_shape)
        result, seconds, batch = await asyncio.wrap_future(batcher.submit(fed))
        png = await loop.run_in_executor(
            pool, lambda: png_bytes(answer_picture(image, result, output, classes, image_shape)))
        timing = (f'model;dur={1000 * seconds:.1f};desc="a batch of {batch}", '
                  f'total;dur={1000 * (time.perf_counter() - start):.1f}')
        return Response(png, media_type='image/png', headers={'Server-Timing': timing})
    return app


class Server(uvicorn.Server):
    """uvicorn's server, ending normally at SIGTERM or Ctrl-C once the requests in flight are answered (uvicorn's
    own raises the signal again once stopped: the process would end by it, not with exit code 0). A second Ctrl-C
    stops at once."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def read_api_key(path):
    """The API key in the file at path (its first line), or None without a path; UserError for no key there."""
    if path is None:
        return None
    try:
        with open(path) as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'--api-key-file {path}: cannot be read ({type(e).__name__}: {e})') from None
    if not key or not key.isprintable() or not key.isascii() or ' ' in key:
        raise UserError(f'--api-key-file {path}: its first line must be the key: printable ASCII, no spaces')
    return key


def bound_socket(host, port):
    """A TCP socket bound to host and port, not yet listening (connections are refused until the model is
    ready); UserError for an address this machine cannot listen on or a port in use."""
    try:
        # With getaddrinfo's protocol (TCP, not 0), asyncio turns Nagle's algorithm off on each connection: else an
        # answer's second write waits for the client's delayed acknowledgement on a kept-alive connection.
        family, kind, protocol, _, _ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
    except OSError as e:
        raise UserError(f'--host {host} --port {port}: cannot listen there ({e.strerror or e})') from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f'--host {host} --port {port}: cannot listen there ({e.strerror or e})') from None
    return sock


def say_where(sock, host, api_key):
    """Tell the user where the server listens and who can reach it; a framed warning for every network interface
    without an API key."""
    port = sock.getsockname()[1]
    url = f'http://{f"[{host}]" if ":" in host else host}:{port}/'
    if host in LOOPBACK:
        print(f'serving on {url} (this machine only; --host 0.0.0.0 serves other machines): the page at /, the '
              'API at /v1/segment, described at /openapi.json. Ctrl-C or SIGTERM stops it.', flush=True)
        return
    print(f'serving on {url} to other machines too (--host {host}): the page at /, the API at /v1/segment, '
          f'described at /openapi.json{", with the API key of --api-key-file" if api_key else ""}. Ctrl-C or '
          'SIGTERM stops it.', flush=True)
    if not api_key:
        warn(f'warning: --host {host} without --api-key-file: anyone who can reach this machine can use the model. '
             'Give --api-key-file, or put the server behind a reverse proxy that checks who calls '
             '(docs/serving.md).')


def model_info(args, description, image_shape, classes, sizes, max_batch, limits):
    """What GET /v1/model says of the model being served."""
    names, palette, _ = classes
    return {'model': description, 'precision': args.precision, 'runtime': args.runtime, 'tta': args.tta,
            'input_size': list(image_shape), 'kind': 'road' if is_road(names) else 'scene parsing',
            'classes': [{'name': name, 'colour': [int(c) for c in colour]} for name, colour in zip(names, palette)],
            'batch_sizes': list(sizes), 'max_batch': max_batch, 'batch_wait_ms': args.batch_wait_ms,
            'limits': {'max_upload_bytes': limits[0], 'max_pixels': limits[1]}}


def serve_command(args):
    """`main.py serve` (args: command_line.serve_parser's): the model of --model behind HTTP until SIGTERM or
    Ctrl-C, which let the requests in flight finish."""
    api_key = read_api_key(args.api_key_file)
    sock = bound_socket(args.host, args.port)  # before the model loads: a port in use is said at once
    with contextlib.closing(sock):
        run_server(args, api_key, sock)
    print('stopped', flush=True)


def run_server(args, api_key, sock):
    """The model of --model loaded and served on the bound sock until the server stops."""
    predictor, sizes, classes, description = infer.ready_model(args)
    if args.tta == 'flip':
        predictor = flipped(predictor)
        print(f'{FLIP_SAID}: twice the model\'s time', flush=True)
    max_batch = args.max_batch or max(sizes)
    if max_batch > max(sizes):
        raise UserError(f'--max-batch {max_batch}: this model takes batches of {", ".join(map(str, sizes))} only')
    padded = min(s for s in sizes if s >= max_batch)
    if padded > 1:  # a runtime may prepare itself anew for a new batch size: not at a client's first batch
        predictor[0](np.zeros((padded, *predictor[1], 3), np.float32))
    limits = (args.max_upload_mb * 2 ** 20, int(args.max_megapixels * 1e6))
    # Pillow warns of images over its own pixel limit when it opens them; the server's lower one refuses them.
    warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)
    model = {'image_shape': predictor[1], 'classes': classes,
             'info': model_info(args, description, predictor[1], classes, sizes, max_batch, limits)}
    batcher = Batcher(predictor[0], sizes, max_batch, args.batch_wait_ms / 1000)
    try:
        with concurrent.futures.ThreadPoolExecutor(cores(), thread_name_prefix='pictures') as pool:
            config = uvicorn.Config(create_app(batcher, pool, model, limits, api_key), host=args.host,
                                    port=sock.getsockname()[1], timeout_graceful_shutdown=STOP_SECONDS,
                                    limit_concurrency=MAX_CONNECTIONS, log_level='info')
            sock.listen(config.backlog)  # from here, connections wait for the server rather than being refused
            say_where(sock, args.host, api_key)
            Server(config).run(sockets=[sock])
    finally:
        batcher.close()
