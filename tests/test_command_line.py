"""fcn8s/command_line.py: flags refused with their reason, a help text for every option of every command, `--help`
before TensorFlow is imported, and a terminal without TensorFlow's start-up lines."""
import argparse
import os
import re
import subprocess
import sys

import pytest

import benchmark
import main
from fcn8s import command_line
from tests.support import HERE, run_main


def test_an_image_shape_not_divisible_by_32_is_refused(tmp_path):
    result = run_main('--image-shape', '100', '300', '--runs-dir', str(tmp_path))
    assert result.returncode == 2 and 'multiples of 32' in result.stderr and 'Traceback' not in result.stderr


# What TensorFlow prints as it starts: absl's and its C++ log lines, CUDA stubs, CPU-feature and oneDNN notices, its
# Python deprecation warnings.
TENSORFLOW_NOISE = re.compile(r'^[IWEF]\d{4} |absl::|cuda|cpu_feature_guard|rebuild TensorFlow|oneDNN custom|'
                              r'WARNING:tensorflow', re.M)


# Runs a script as `python SCRIPT ARGS...` would, then says on stderr whether TensorFlow was imported.
RUN_AND_TELL = ('import runpy, sys\n'
                'sys.argv = sys.argv[1:]\n'
                'try:\n'
                '    runpy.run_path(sys.argv[0], run_name="__main__")\n'
                'except SystemExit as stop:\n'
                '    code = stop.code\n'
                'print("tensorflow imported:", "tensorflow" in sys.modules, file=sys.stderr)\n'
                'sys.exit(code)\n')


@pytest.mark.parametrize('command', [['main.py'], *[['main.py', name] for name in command_line.COMMANDS],
                                     ['benchmark.py']])
def test_help_answers_before_tensorflow_is_imported_without_a_tensorflow_line(command):
    result = subprocess.run([sys.executable, '-c', RUN_AND_TELL, os.path.join(HERE, command[0]), *command[1:],
                             '--help'], capture_output=True, text=True, cwd=HERE, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'})
    assert result.returncode == 0 and result.stdout.startswith('usage: '), result.stderr
    assert result.stderr == 'tensorflow imported: False\n', result.stderr


def test_a_training_run_shows_no_tensorflow_start_up_lines(small_dataset, thin_vgg, tmp_path):
    user_env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}  # as a user's terminal has it
    result = run_main('--dataset', small_dataset, '--vgg-dir', thin_vgg, '--epochs', '1', '--batch-size', '4',
                      '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download', '--precision', 'fp32',
                      '--runs-dir', str(tmp_path), env=user_env)
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert 'dataset ' in said and 'validation scores' in said  # the project's own lines are there
    assert not TENSORFLOW_NOISE.search(said), TENSORFLOW_NOISE.search(said).group(0)
    shown = run_main('--dataset', str(tmp_path / 'nowhere'), '--runs-dir', str(tmp_path),
                     env={**user_env, 'TF_CPP_MIN_LOG_LEVEL': '0'})
    assert TENSORFLOW_NOISE.search(shown.stderr)  # the user's own TF_CPP_MIN_LOG_LEVEL wins


@pytest.mark.parametrize('flags', [['--seed', '-1'], ['--val-fraction', '1'], ['--epochs', '0'],
                                   ['--keep-prob', '0']])
def test_out_of_range_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command_line.parse_args(flags)
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


COMMAND_PARSERS = {'main.py': command_line.train_parser, 'benchmark.py': benchmark.benchmark_parser,
                   **{f'main.py {name}': parser for name, parser in command_line.COMMANDS.items()}}


@pytest.mark.parametrize('command', COMMAND_PARSERS)
def test_every_option_of_every_command_has_a_help_text(command):
    parser = COMMAND_PARSERS[command]()
    options = [action for action in parser._actions if action.option_strings and action.dest != 'help']
    assert options
    missing = [action.option_strings[0] for action in options
               if not action.help or not action.help.strip() or action.help == argparse.SUPPRESS]
    assert not missing, f'{command}: options without a help text: {missing}'
    text = parser.format_help()
    assert all(action.option_strings[0] in text for action in options)


@pytest.mark.parametrize('command', [[], ['evaluate'], ['optimize'], ['infer'], ['synthetic']])
def test_help_of_each_command_prints_and_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(command + ['--help'])
    assert exit_info.value.code == 0
    assert ('--checkpoint' if command[:1] in (['evaluate'], ['optimize']) else '--') in capsys.readouterr().out
