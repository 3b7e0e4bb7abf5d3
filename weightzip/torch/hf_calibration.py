"""Post-training compression of a Hugging Face model with calibration text: what it computes, measured.

    sentences = load_calibration_text("sentences.txt")             # one sentence a line
    calibrated = calibrate_pretrained(model, tokenizer, sentences, checkpoint_names, clusters=16)
    calibrated.stored["encoder.layer.0.attention.self.query.weight"]  # a ClusteredTensor, by checkpoint name
    calibrated.report.fidelity                                        # measured on held-out sentences

The sentences are tokenized with the model's own tokenizer and fed to :class:`SentenceOutputs`, the model
as one function of one tensor, whose output is what fidelity is measured on: the sentence embeddings
(the attention-mask-weighted mean of the last hidden states, L2-normalised, as sentence-transformers
computes them) or, for a model whose first output is class scores, those. The compression itself is
:func:`weightzip.torch.post_training.compress_post_training`, unchanged: the sentences are split into a fit
part (diagonal Fisher or E[x²] sensitivities, sensitivity-weighted optimal k-means, per-layer allocation
when a size or fidelity goal is given) and a held-out part (fidelity). This module only maps the plan's
tensors back to the names of the model's safetensors checkpoint, so that the directory route
(:mod:`weightzip.torch.hf`) stores them in place of its own per-tensor clustering.

Bias correction (restoring each layer's float output mean) follows compress_post_training's default: kept
only when the chosen plan measures better with it on fit sentences it was not computed on (padding
positions left out of the means); the biases it shifted are stored as floats in place of the checkpoint's
(:attr:`CalibratedWeights.replaced`), so that the file holds the model whose fidelity was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from weightzip.core.allocation import AllocationPlan
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.core.post_training import PostTrainingReport

DEFAULT_MAX_TOKENS = 128  # tokens per sentence kept (longer ones are truncated)
WRAPPED = "model"  # the attribute of SentenceOutputs holding the model: its parameters' name prefix


class CalibrationTextError(WeightzipError):
    """Calibration text the model's tokenizer cannot turn into inputs (no tokenizer, no padding token)."""


class SentenceOutputs(nn.Module):
    """A transformers model as a function of one tensor: (n, 2, L) token ids and attention masks -> (n, 1, H)
    L2-normalised mean-pooled sentence embeddings (the extra axis keeps them from being read as class
    scores), or (n, C) when the model's first output is already one vector per sentence (class scores)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # named WRAPPED

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0].long(), tokens[:, 1].long()
        output = self.model(input_ids=ids, attention_mask=mask)
        hidden = output[0] if isinstance(output, (tuple, list)) or hasattr(output, "keys") else output
        if hidden.ndim == 2:
            return hidden
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1).unsqueeze(1)

    @staticmethod
    def position_mask(tokens: torch.Tensor) -> torch.Tensor:
        """(n, L) bool, the real tokens (attention mask): input statistics leave padding out
        (:mod:`weightzip.torch.calibration`)."""
        return tokens[:, 1].bool()


def token_inputs(tokenizer, sentences: list[str], max_tokens: int = DEFAULT_MAX_TOKENS) -> np.ndarray:
    """(n, 2, L) int64: each sentence's token ids and attention mask, padded to the longest (at most max_tokens)."""
    if tokenizer is None:
        raise CalibrationTextError("calibration text needs the model's tokenizer (the directory has no tokenizer "
                                   "files, or none was passed)")
    if getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise CalibrationTextError("the tokenizer has neither a padding nor an end-of-sequence token to pad "
                                       "calibration sentences with")
        tokenizer = _copy_with_pad_token(tokenizer)
    batch = tokenizer(list(sentences), padding="longest", truncation=True, max_length=max_tokens, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    words = (mask == 1) & ~np.isin(ids, list(getattr(tokenizer, "all_special_ids", []) or []))
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and words.any() and np.all(ids[words] == unknown):
        raise CalibrationTextError("the tokenizer maps every word of the calibration text to its unknown token "
                                   "(an empty or foreign vocabulary?)")
    return np.stack([ids, mask], axis=1).astype(np.int64)


def _copy_with_pad_token(tokenizer):
    import copy

    padded = copy.deepcopy(tokenizer)  # the caller's tokenizer stays as it was
    padded.pad_token = padded.eos_token
    return padded


@dataclass
class CalibratedWeights:
    """The plan's tensors by checkpoint name, and the post-training report (its tensor names likewise)."""

    stored: dict[str, ClusteredTensor]  # checkpoint name -> clustered value (the .wz record)
    kept: dict[str, str]  # checkpoint name -> why it is stored exactly (no clustering stores it smaller)
    torch_dtypes: dict[str, str]  # checkpoint name -> its dtype, where the clustered value decodes to another
    report: PostTrainingReport
    write_options: object = None  # the WriteOptions the plan's sizes were measured with
    unused: list[str] = field(default_factory=list)  # checkpoint tensors the loaded model does not hold
    replaced: dict[str, np.ndarray] = field(default_factory=dict)  # checkpoint name -> float value changed by
    # the post-training path (biases shifted by bias correction), stored in place of the checkpoint's


def calibrate_pretrained(model: nn.Module, tokenizer, sentences: list[str], checkpoint: dict[str, torch.dtype], *,
                         max_tokens: int = DEFAULT_MAX_TOKENS, **options) -> CalibratedWeights:
    """Compress `model`'s weights post-training with `sentences` as calibration inputs.

    checkpoint: the safetensors checkpoint's tensor names and dtypes (the plan is returned under these
    names). options: those of :func:`weightzip.torch.post_training.compress_post_training` (clusters,
    granularity, group_size, bits_per_weight, min_fidelity, sensitivity, seed, held_out, batch_size).
    """
    from weightzip.torch.post_training import _decoded_dtype, compress_post_training

    if "target_bytes" in options or "path" in options:
        raise WeightzipError("internal: the directory route writes the file itself (no target_bytes / path)")
    inputs = token_inputs(tokenizer, sentences, max_tokens)
    wrapped = SentenceOutputs(model).eval()
    compressed, report = compress_post_training(wrapped, inputs, **options)
    names = checkpoint_names(model, checkpoint)
    plan = report.plan
    replaced = _changed_floats(wrapped, compressed, set(plan.choices), names, checkpoint)
    choices = {names.get(_unwrapped(name), _unwrapped(name)): replace(choice, name=names.get(_unwrapped(name),
                                                                                          _unwrapped(name)))
               for name, choice in plan.choices.items()}
    report.plan = AllocationPlan(choices, plan.write_options)
    report.uncompressed = [{**row, "tensor": names.get(_unwrapped(row["tensor"]), _unwrapped(row["tensor"]))}
                           for row in report.uncompressed]
    stored, kept, dtypes = {}, {}, {}
    for name, choice in choices.items():
        if name not in checkpoint:
            continue  # a tensor the model holds but the checkpoint does not (e.g. a tied copy)
        if choice.clusters == 0:
            kept[name] = "kept as float: no clustering stores it smaller"
            continue
        stored[name] = choice.stored
        if _decoded_dtype(choice.stored, plan.write_options) != checkpoint[name]:
            dtypes[name] = str(checkpoint[name]).removeprefix("torch.")
    unused = [name for name in checkpoint if name not in set(names.values())]
    return CalibratedWeights(stored, kept, dtypes, report, plan.write_options, unused, replaced)


def _changed_floats(original: nn.Module, compressed: nn.Module, planned: set[str], names: dict[str, str],
                    checkpoint) -> dict[str, np.ndarray]:
    """Checkpoint name -> value of each floating tensor outside the plan that the post-training path changed
    (the biases bias correction shifted), as float32 arrays."""
    before = original.state_dict()
    changed = {}
    for name, tensor in compressed.state_dict().items():
        if name in planned or not tensor.is_floating_point() or torch.equal(tensor, before[name]):
            continue
        stored = names.get(_unwrapped(name), _unwrapped(name))
        if stored in checkpoint:
            changed[stored] = tensor.detach().float().cpu().numpy()
    return changed


def _unwrapped(name: str) -> str:
    return name.removeprefix(WRAPPED + ".")


def checkpoint_names(model: nn.Module, checkpoint) -> dict[str, str]:
    """The model's state_dict names -> the checkpoint's names for the same tensors.

    A model loaded with ``AutoModel`` from a checkpoint saved by a task model (``BertForMaskedLM``) holds
    ``embeddings.…`` where the checkpoint says ``bert.embeddings.…``, and the other way round; the
    model's ``base_model_prefix`` is tried both ways. Names found in neither form are left out.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    mapping = {}
    for name in model.state_dict():
        for candidate in (name, f"{prefix}.{name}" if prefix else name,
                          name.removeprefix(f"{prefix}.") if prefix else name):
            if candidate in checkpoint:
                mapping[name] = candidate
                break
    return mapping
