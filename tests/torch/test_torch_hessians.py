"""Input Hessians E[x xᵀ] of torch layers: wᵀ H w equals the measured mean squared output of each output row."""

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.torch.calibration import input_hessians
from weightzip.torch.targets import find_targets


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(12, 5, bias=False), (9, 3, 12)),
    (nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2, bias=False), (5, 6, 9, 8)),
    (nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=4, bias=False), (5, 4, 7, 7)),
    (nn.Conv1d(3, 5, 4, stride=3, bias=False), (6, 3, 20)),
])
def test_hessian_gives_each_output_rows_mean_squared_output(layer, shape):
    torch.manual_seed(0)
    inputs = torch.randn(shape)
    hessian = input_hessians(layer, [inputs[:3], inputs[3:]], find_targets(layer))[""]
    weight = layer.weight.detach().double().numpy()
    assert hessian.fits(weight.shape)
    rows = hessian.as_matrix(weight).reshape(hessian.groups, -1, hessian.columns)
    predicted = np.einsum("gri,gij,grj->gr", rows, hessian.matrix, rows).ravel()
    with torch.no_grad():
        output = layer(inputs).double()
    measured = output.movedim(1 if output.ndim > 2 and not isinstance(layer, nn.Linear) else -1, 0)
    measured = (measured.reshape(measured.shape[0], -1) ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(predicted, measured, rtol=1e-4)
