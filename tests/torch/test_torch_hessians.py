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
    (nn.Conv2d(6, 4, 1, stride=2, groups=2, bias=False), (5, 6, 9, 8)),  # pointwise: no im2col
    (nn.Conv1d(4, 3, 1, bias=False), (6, 4, 11)),
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


class _Padded(nn.Module):
    """(n, 2, L) token ids and attention mask -> mean of a Linear layer's outputs over the real tokens; marks its
    padding positions as SentenceOutputs does."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 6)
        self.layer = nn.Linear(6, 3)

    def forward(self, tokens):
        mask = tokens[:, 1].unsqueeze(-1).float()
        return ((self.layer(self.table(tokens[:, 0])) * mask).sum(1) / mask.sum(1)).unsqueeze(1)

    @staticmethod
    def position_mask(tokens):
        return tokens[:, 1].bool()


def test_padding_positions_are_left_out_of_input_statistics_and_bias_correction():
    from weightzip.torch.bias_correction import correct_biases
    from weightzip.torch.calibration import input_second_moments

    torch.manual_seed(0)
    model = _Padded().eval()
    ids = torch.randint(1, 10, (8, 5))
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 3, 2, 4, 1, 5, 2, 3])[:, None]).long()
    ids[mask == 0] = 0  # padding token: its embedding row is far from the others
    with torch.no_grad():
        model.table.weight[0] = 50.0
    tokens = torch.stack([ids, mask], dim=1)
    batches = [tokens[:4], tokens[4:]]
    targets = find_targets(model)
    real = model.table(ids)[mask.bool()].detach().double()  # (real tokens, 6): the layer's counted inputs
    hessian = input_hessians(model, batches, targets)["layer"]
    assert hessian.samples == int(mask.sum())
    np.testing.assert_allclose(hessian.matrix[0], (real.T @ real / len(real)).numpy(), rtol=1e-5)
    moments = input_second_moments(model, batches, targets)["layer"]
    np.testing.assert_allclose(moments, (real ** 2).mean(0).numpy(), rtol=1e-6)
    # bias correction restores the mean over real tokens (padding's huge outputs would swamp it)
    shifted = _Padded().eval()
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        shifted.layer.weight.add_(0.05)
    corrected, _ = correct_biases(model, shifted, targets, batches)
    assert corrected == ["layer"]
    with torch.no_grad():
        before = model.layer(model.table(ids))[mask.bool()].mean(0)
        after = shifted.layer(shifted.table(ids))[mask.bool()].mean(0)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_hessian_pass_hands_back_the_models_outputs():
    """The float model's outputs on the batches come with the Hessians (post-training takes its fit reference
    from that pass): the values outputs_of gives, batch by batch."""
    from weightzip.torch.calibration import outputs_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.Flatten(),
                          nn.Linear(6 * 25, 4)).eval()
    inputs = torch.randn(7, 3, 5, 5)
    batches = [inputs[:4], inputs[4:]]
    outputs = []
    input_hessians(model, batches, find_targets(model), outputs=outputs)
    assert [len(o) for o in outputs] == [4, 3]
    assert np.array_equal(np.concatenate(outputs), outputs_of(model, batches))


def test_fisher_pass_records_the_same_hessians_fisher_and_outputs():
    """fisher_and_input_hessians: one pass per batch gives what fisher_diagonal and input_hessians give apart,
    and the float model's outputs (post-training measures both on the fit inputs in that one pass)."""
    from weightzip.torch.calibration import fisher_and_input_hessians, fisher_diagonal, outputs_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=6, padding=1),
                          nn.Flatten(), nn.Linear(6 * 25, 4)).eval()
    inputs = torch.randn(7, 3, 5, 5)
    batches = [inputs[:4], inputs[4:]]
    targets = find_targets(model)
    outputs = []
    fisher, hessians = fisher_and_input_hessians(model, batches, targets, seed=3, outputs=outputs)
    alone_fisher = fisher_diagonal(model, batches, targets, seed=3)
    alone_hessians = input_hessians(model, batches, targets)
    assert fisher.keys() == alone_fisher.keys() and hessians.keys() == alone_hessians.keys() == {"0", "2", "4"}
    for name in fisher:
        np.testing.assert_allclose(fisher[name], alone_fisher[name], rtol=1e-6)
    for name in hessians:
        np.testing.assert_allclose(hessians[name].matrix, alone_hessians[name].matrix, rtol=1e-6, atol=1e-9)
        assert hessians[name].samples == alone_hessians[name].samples
    np.testing.assert_allclose(np.concatenate(outputs), outputs_of(model, batches), rtol=1e-6, atol=1e-7)
    assert not any(module._forward_hooks for module in model.modules())  # hooks removed after the pass
