"""fcn8s/precision.py: bf16 training where the CPU has it (refused where not), --precision auto, and TensorFlow's
CPU memory kept for reuse."""
import json
import os

import pytest
import tensorflow.compat.v1 as tf

import main
from fcn8s import precision


def bf16_training_flags(small_dataset, thin_vgg, runs_dir):
    return ['--dataset', small_dataset, '--vgg-dir', thin_vgg, '--runs-dir', runs_dir, '--epochs', '1',
            '--batch-size', '4', '--image-shape', '64', '224', '--val-fraction', '0.25', '--no-download',
            '--precision', 'bf16']


@pytest.mark.skipif(precision.mixed_precision()[0] != 'bf16', reason=precision.mixed_precision()[1])
def test_bf16_training_runs_where_the_cpu_has_it(thin_vgg, small_dataset, tmp_path):
    run_dir = main.run(bf16_training_flags(small_dataset, thin_vgg, str(tmp_path / 'runs')))
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['settings']['precision'] == 'bf16' and config['finished']
    assert config['precision']['chosen'] == 'bf16' and 'oneDNN bfloat16' in config['precision']['why']
    # evaluate scores in the precision the run validated with, so it repeats the run's own figures
    assert main.main(['evaluate', '--checkpoint', run_dir]) == 0
    evaluated = json.load(open(os.path.join(run_dir, 'eval.json')))
    best = max(json.load(open(os.path.join(run_dir, 'metrics.json')))['epochs'], key=lambda h: h['val_max_f'])
    assert evaluated['precision'] == 'bf16' and evaluated['kitti']['all'] == pytest.approx(best['val_kitti']['all'])


def test_bf16_training_is_refused_where_the_cpu_lacks_it(thin_vgg, small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, 'mixed_precision', lambda: (None, 'this CPU has neither AVX512_BF16 nor AMX'))
    assert main.main(bf16_training_flags(small_dataset, thin_vgg, str(tmp_path / 'runs'))) == 2
    assert 'this CPU has neither AVX512_BF16 nor AMX' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'runs')  # refused before a run folder is made


@pytest.mark.parametrize('found, chosen', [(('bf16', 'CPU with AMX_BF16: oneDNN bfloat16'), 'bf16'),
                                           ((None, 'this CPU has neither AVX512_BF16 nor AMX'), 'fp32'),
                                           (('fp16', 'GPU: float16 auto mixed precision'), 'fp32')])
def test_precision_auto_is_bf16_where_the_cpu_has_it_and_fp32_elsewhere(monkeypatch, found, chosen):
    monkeypatch.setattr(precision, 'mixed_precision', lambda: found)
    arithmetic, why = precision.choose('auto')
    assert arithmetic == chosen and why
    assert ('loss scaling' in why) == (found[0] == 'fp16')  # a GPU trains in fp32, and says why
    assert precision.choose('fp32') == ('fp32', '--precision fp32')
    assert precision.training_config('fp32') is None
    if chosen == 'bf16':
        assert precision.training_config('bf16').graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16


@pytest.mark.parametrize('given, used', [(None, 'true'), ('false', 'false')])
def test_tensorflow_keeps_and_reuses_cpu_memory_unless_the_user_said_otherwise(small_dataset, tmp_path, monkeypatch,
                                                                             given, used):
    if given is None:
        monkeypatch.delenv(precision.BFC_SWITCH, raising=False)
    else:
        monkeypatch.setenv(precision.BFC_SWITCH, given)
    switch_at_first_session = []

    def first_session(*args, **kwargs):
        switch_at_first_session.append(os.environ.get(precision.BFC_SWITCH))
        raise InterruptedError  # enough: what matters is before

    monkeypatch.setattr(tf, 'Session', first_session)
    with pytest.raises(InterruptedError):
        main.main(['--dataset', small_dataset, '--vgg-init', 'random', '--runs-dir', str(tmp_path), '--val-fraction',
                   '0.25'])
    assert switch_at_first_session == [used]
