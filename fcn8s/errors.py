"""What the user is told: a UserError is reported as one `error:` line, never as a traceback."""
import importlib
import sys


class UserError(Exception):
    """A problem with the user's data, weights, flags or disk: reported as a message, never as a traceback."""


def warn(message):
    """A message framed so that it stands out of the progress output: a fallback the user should know about."""
    bar = '=' * 78
    print(f'\n{bar}\n{message}\n{bar}\n', file=sys.stderr, flush=True)


class LossDiverged(UserError):
    """The training loss became NaN, infinite or blew up: training stops, naming the step."""


class FirstStepFailed(UserError):
    """TensorFlow could not run a run's first training step (a kernel it lacks for these types or this device):
    the caller says which arithmetic was asked for and what to try."""


def require(module, purpose):
    """Import module (a package of requirements.txt) for purpose; a UserError that says how to install it if it
    is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f'{purpose} needs the Python package {module.split(".")[0]}, which cannot be imported '
                        f'({e}): pip install -r requirements.txt') from None
