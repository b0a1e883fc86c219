"""benchmark.py's arithmetic on hand-made figures (its measurements themselves take minutes: they are run by hand)."""
import pytest

import benchmark


def test_fixed_step_cost_comes_from_batch_1_and_the_training_batch():
    """A step of 2.0 s at batch 1 and 5.0 s at batch 4 (1.25 s per image): each extra image costs (5 - 2) / 3 =
    1.0 s, so 1.0 s of the step does not depend on the batch."""
    assert benchmark.TRAIN_BATCH == 4
    rows = [{'case': 'training step', 'precision': 'fp32', 'shape': [160, 576], 'batch': 1, 's_per_image': 2.0},
            {'case': 'training step', 'precision': 'fp32', 'shape': [160, 576], 'batch': 4, 's_per_image': 1.25},
            {'case': 'forward', 'precision': 'fp32', 'shape': [160, 576], 'batch': 1, 's_per_image': 0.4},
            {'case': 'training step', 'precision': 'bf16', 'shape': [160, 576], 'batch': 1, 's_per_image': 1.0}]
    assert benchmark.fixed_step_costs(rows) == {('fp32', '160x576'): pytest.approx(1.0)}  # bf16 lacks batch 4


@pytest.mark.parametrize('node, phase', [('gradients/fc6/MatMul_grad/MatMul_1', 'backward'),
                                         ('train_op/update_fc6/weights/ResourceApplyAdam', 'Adam update'),
                                         ('beta1_power/read', 'Adam update'), ('fc6/MatMul', 'forward and loss'),
                                         ('cross_entropy_loss', 'forward and loss')])
def test_each_op_of_a_training_step_is_put_in_its_phase(node, phase):
    assert benchmark.step_phase(node) == phase
