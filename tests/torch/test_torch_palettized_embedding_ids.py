"""An out-of-range id given to a palettized embedding is a one-line weightzip error naming the id range."""

import pytest
import torch
from torch import nn

from weightzip.core.errors import IndexOutOfRangeError, WeightzipError
from weightzip.torch import cluster_weights, palettize, strip_clustering


@pytest.fixture(scope="module")
def embedding():
    torch.manual_seed(0)
    return palettize(strip_clustering(cluster_weights(nn.Sequential(nn.Embedding(30, 8)), 4))).eval()[0]


@pytest.mark.parametrize("ids", [[[0, 30]], [[-1, 2]]])
def test_out_of_range_ids_name_the_range_in_a_weightzip_error(embedding, ids):
    with pytest.raises(IndexOutOfRangeError, match=r"ids must lie in \[0, 30\), got \[-?\d+, \d+\]") as caught:
        embedding(torch.tensor(ids))
    assert isinstance(caught.value, WeightzipError) and isinstance(caught.value, IndexError)  # as nn.Embedding's
    assert "\n" not in str(caught.value)


def test_the_custom_op_raises_the_same_error_through_the_dispatcher(embedding):
    compiled = torch.compile(embedding, backend="aot_eager", fullgraph=True)
    assert compiled(torch.tensor([[1, 29]])).shape == (1, 2, 8)
    with pytest.raises(IndexOutOfRangeError, match=r"\[0, 30\)"):
        compiled(torch.tensor([[1, 30]]))
