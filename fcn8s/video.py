"""Video files through ffmpeg (imageio-ffmpeg): frames in with their frame rate and count, H.264 mp4 out."""
import imageio
import imageio.v3 as iio
import numpy as np

from fcn8s.errors import UserError

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv')
ENCODER_PRESET = 'superfast'  # x264's speed against file size


def is_video(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def read_video(path):
    """(frames: iterator of uint8 [h, w, 3] (frames, which raises a decoding error as a UserError naming the frame),
    frames per second, the frame count the container announces or None)."""
    try:
        meta = iio.immeta(path, plugin='FFMPEG')
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f'{path} cannot be read as a video ({type(e).__name__}: {e})') from None
    fps = meta.get('fps') or 0
    if not fps > 0:
        raise UserError(f'{path}: its frame rate is unknown, so its overlay video could not keep it')
    announced = meta.get('nframes')
    if not np.isfinite(announced or np.inf):
        announced = int(round(meta.get('duration', 0) * fps)) or None
    return frames(path, iio.imiter(path, plugin='FFMPEG')), fps, announced


def frames(path, decoded):
    """The RGB frames of decoded (imageio's iterator over the video at path), an error of ffmpeg's as a UserError
    naming the frame it failed at."""
    count = 0
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except (OSError, RuntimeError, ValueError) as e:
            raise UserError(f'{path}: failed at frame {count} ({type(e).__name__}: {e})') from None
        yield frame[..., :3]
        count += 1


def video_writer(path, fps, size):
    """An H.264 mp4 writer (append_data(uint8 [h, w, 3]), close()) at fps for frames of size (h, w), kept at it."""
    # macro_block_size=1: ffmpeg would otherwise scale frames up to a multiple of 16 pixels. yuv420p (what every
    # player reads) halves the colour resolution and so needs even sizes; KITTI's 375x1242 takes yuv444p.
    pixels = 'yuv420p' if size[0] % 2 == 0 and size[1] % 2 == 0 else 'yuv444p'
    # x264's default preset (medium) costs several times superfast's CPU per frame, taken from the cores the model
    # needs; superfast pays with a somewhat larger file and a slightly lower PSNR (docs/measurements.md).
    return imageio.v2.get_writer(path, format='FFMPEG', mode='I', fps=fps, codec='libx264', macro_block_size=1,
                                 pixelformat=pixels, ffmpeg_params=['-preset', ENCODER_PRESET])
