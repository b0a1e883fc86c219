"""Which arithmetic this machine runs fast: the one check for bfloat16/float16 hardware, and the Session configs
that use it (Grappler's auto mixed precision)."""
import os
import platform

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from fcn8s.errors import UserError

BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
# TensorFlow's switch for its best-fit-with-coalescing allocator (the one it uses on GPUs) on the CPU.
BFC_SWITCH = 'TF_CPU_ALLOCATOR_USE_BFC'


def mixed_precision():
    """(the reduced precision this machine runs fast: 'bf16', 'fp16' or None, why)."""
    if tf.config.list_physical_devices('GPU'):
        return 'fp16', 'GPU: float16 auto mixed precision'
    try:
        with open('/proc/cpuinfo') as f:
            flags = set(f.read().split())
    except OSError:
        return None, 'cannot read /proc/cpuinfo to tell whether this CPU has AVX512_BF16 or AMX'
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if found:
        return 'bf16', f'CPU with {" and ".join(found).upper()}: oneDNN bfloat16 auto mixed precision'
    return None, 'this CPU has neither AVX512_BF16 nor AMX (bfloat16 would be emulated, slower than fp32)'


def require_mixed_precision(flag, allowed=('bf16', 'fp16')):
    """The reduced precision behind `flag` (e.g. '--precision bf16') on this machine, if it is one of allowed
    ('fp16' means a GPU); UserError where it would not be faster than fp32."""
    reduced, why = mixed_precision()
    if reduced not in allowed:
        where = 'CPUs with AVX512_BF16 or AMX' + (' (or a GPU, in float16)' if 'fp16' in allowed else '')
        raise UserError(f'{flag} runs on {where} only: {why}')
    return reduced


def choose(requested):
    """(precision 'fp32' or 'bf16', why) for --precision requested: 'auto' is bf16 where the CPU runs it fast
    (AVX512_BF16 or AMX) and fp32 elsewhere, GPUs included (float16 would need loss scaling in training, which
    this project does not do); 'bf16' where the CPU cannot is a UserError."""
    if requested == 'fp32':
        return 'fp32', '--precision fp32'
    if requested == 'bf16':
        require_mixed_precision('--precision bf16', allowed=('bf16',))
    reduced, why = mixed_precision()
    if reduced == 'bf16':
        return 'bf16', why
    if reduced == 'fp16':
        return 'fp32', 'GPU: fp32 (float16 mixed precision would need loss scaling, which this project does not do)'
    return 'fp32', why


def training_config(arithmetic):
    """Session config of a training (or its validation) graph at arithmetic 'fp32' or 'bf16': TensorFlow's
    defaults for fp32, Grappler's oneDNN auto mixed precision for bf16 (weights and updates stay fp32)."""
    return None if arithmetic == 'fp32' else session_config(arithmetic, fold_constants=False)


def session_config(precision=None, fold_constants=True):
    """ConfigProto for Grappler: aggressive constant folding (for inference graphs) and, for 'bf16' / 'fp16',
    auto mixed precision."""
    config = tf.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    if fold_constants:  # also the shapes that are static once the input size is fixed, and so the dropout masks
        rewrite.constant_folding = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    if precision == 'bf16':
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif precision == 'fp16':
        rewrite.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    return config


def reuse_cpu_memory():
    """Have TensorFlow keep the CPU memory its tensors free and hand it out again (its BFC allocator), unless the
    user set TF_CPU_ALLOCATOR_USE_BFC. By default every large tensor is fresh memory from the system: a training
    step's gradients (fc6's alone is 411 MB) are faulted in page by page at every step, a sizeable share of an
    fp32 step on a CPU (docs/measurements.md). TensorFlow reads the switch when its first Session
    makes the CPU allocator: call this before."""
    os.environ.setdefault(BFC_SWITCH, 'true')


def cores():
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def machine():
    """This machine in a line: CPU model and the cores this process may use, and GPUs if any."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        pass
    gpus = tf.config.list_physical_devices('GPU')
    return f'{name}, {cores()} cores' + (f', {len(gpus)} GPU(s)' if gpus else '')
