"""`padding_masked`: pad positions carry no loss, and no real position reads a pad.

Only for token data with a `pad_id`. Two edits on a fresh model in eval mode:
- the loss: noise on the logits of every position whose target is the pad must leave the loss exactly as it
  was (cross_entropy's ignore_index is -100 by default, not your pad id);
- the model: noise on the embedding output at the pad positions must leave the logits of the real positions
  that come after a pad unchanged (attention with a key-padding mask never reads them). Right-padded rows
  have no real token after a pad, so with a causal model nothing there can read one: that part says so.
"""
from __future__ import annotations

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict, not_applicable
from checks.measure.sampling import fresh_model, stacked
from recipe.outputs import forward_logits
from recipe.pipeline import Pipeline

STAGE = "skeleton"
ROUND_OFF = 1e-4  # a change below this share of the reference is float noise
EXAMPLES = 64


def _embedding_noise(model: nn.Module, x: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Logits with noise added to every nn.Embedding's output at the positions `where` (B, T); the count of
    embeddings hooked."""
    handles = []

    def noisy(module, args, out):
        ids = args[0]
        if ids.shape != where.shape or out.shape[:2] != where.shape:
            return out
        g = torch.Generator(device="cpu").manual_seed(5)
        noise = torch.randn(out.shape, generator=g).to(out) * (out.abs().max() + 1.0)
        return out + noise * where[..., None].to(out)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            handles.append(module.register_forward_hook(noisy))
    try:
        with torch.no_grad():
            return forward_logits(model, x).double(), len(handles)
    finally:
        for handle in handles:
            handle.remove()


@applies_to("tokens")
def padding_masked(pipeline: Pipeline) -> CheckResult:
    pad = pipeline.data.pad_id
    if pad is None:
        return not_applicable("padding_masked", STAGE, "the data declares no pad_id: every position is a real token")
    x, y, _ = stacked(pipeline, "train", EXAMPLES, shuffle=False)
    if not (y == pad).any():
        return not_applicable("padding_masked", STAGE, f"no target in the first {len(y)} train rows is the pad id "
                              f"{pad}: nothing to mask")
    model = fresh_model(pipeline)
    model.eval()
    with torch.no_grad():
        logits = forward_logits(model, x)
        loss = float(pipeline.loss_fn(logits, y))
        g = torch.Generator(device="cpu").manual_seed(3)
        noise = torch.randn(logits.shape, generator=g).to(logits) * 10.0
        moved = float(pipeline.loss_fn(logits + noise * (y == pad)[..., None].to(logits), y))
        reference = float(pipeline.loss_fn(logits + noise * (y != pad)[..., None].to(logits), y))
    loss_ratio = abs(moved - loss) / max(abs(reference - loss), 1e-12)
    # real positions that come after a pad in their row
    after_pad = (x != pad) & ((x == pad).long().cummax(dim=1).values.bool())
    details = {"loss": loss, "loss_with_pad_logits_noised": moved, "loss_ratio": loss_ratio,
               "real_after_pad": int(after_pad.sum())}
    model_part, read_ratio = "", 0.0
    if after_pad.any():
        base, hooked = _embedding_noise(model, x, torch.zeros_like(x, dtype=torch.bool))
        if hooked:
            at_pad = _embedding_noise(model, x, x == pad)[0]
            at_real = _embedding_noise(model, x, x != pad)[0]  # the reference: the same noise on the real tokens
            effect = float((at_pad - base).abs()[after_pad].max())
            ref = float((at_real - base).abs()[after_pad].max())
            read_ratio = effect / ref if ref > 0 else 0.0
            details.update(pad_read_effect=effect, real_read_effect=ref)
            model_part = (f"; noise on the pad embeddings moved the {int(after_pad.sum())} real positions after a pad "
                          f"by {read_ratio:.2g} of what the same noise on the real tokens does")
        else:
            model_part = "; the model has no nn.Embedding to perturb, so whether it reads pads is not tested"
    else:
        model_part = ("; no real token follows a pad in these rows (right padding), so a causal model cannot read a "
                      "pad from a real position")
    value = max(loss_ratio, read_ratio)
    said = (f"noise on the logits at the {int((y == pad).sum())} pad targets changed the loss by {abs(moved - loss):.3g} "
            f"({loss_ratio:.2g} of the same noise on real targets){model_part}")
    if value <= ROUND_OFF:
        return CheckResult("padding_masked", STAGE, Verdict.PASS, value, ROUND_OFF, "<=",
                           f"{said}: padding is masked.", details=details)
    causes = []
    if loss_ratio > ROUND_OFF:
        causes.append(f"pad tokens are in the loss: the loss does not ignore the pad id {pad} (F.cross_entropy("
                      f"..., ignore_index={pad}); its default ignore_index is -100), so the model learns to predict "
                      "padding and the loss is diluted")
    if read_ratio > ROUND_OFF:
        causes.append("real positions read the pad tokens: the attention has no key-padding mask (mask keys where "
                      "x == pad_id), or a recurrent layer runs through the pads (pack_padded_sequence)")
    return CheckResult("padding_masked", STAGE, Verdict.FAIL, value, ROUND_OFF, "<=",
                       f"{said}: " + "; ".join(causes) + ".", details=details)
