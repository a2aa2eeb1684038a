"""Stage `skeleton`: is a multi-layer model really non-linear? An affinity test at init, on real inputs.

A stack of Linear/Conv layers with no activation between them (`nn.Sequential(Linear, Linear)`, a
ReLU defined in `__init__` but never called in `forward`, `nn.Identity()` where the ReLU belonged,
`F.relu(h)` whose result is thrown away) computes one affine map: it trains, its loss falls, and it
is never better than a linear classifier. An affine f keeps every affine combination of inputs:
f(a x1 + (1 - a) x2) = a f(x1) + (1 - a) f(x2) for any a, so the test mixes pairs of real inputs,
in eval mode (dropout off; BatchNorm then is affine per channel, so Conv-BN-Conv still counts as one
map), in float64 so that round-off sits far below any real non-linearity.

Two places are tested:
- the whole model, its outputs compared up to a per-row constant (so a final softmax or
  log_softmax does not hide an affine body);
- each pair of weight layers run one after the other, by injecting mixed outputs of the first
  into the forward pass and reading the input of the second: a pure chain (the second layer sees
  nothing but the first's output) that is affine makes the two layers one. This catches the
  activation missing between two layers of an otherwise non-linear model.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from checks.engine.kinds import applies_to
from checks.engine.result import CheckResult, Verdict, not_applicable
from checks.measure.batchnorm import with_data_statistics
from checks.measure.sampling import first_batches, fresh_model, output_family
from recipe.outputs import forward_logits

STAGE = "skeleton"
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)  # Linear (and LazyLinear), Conv/ConvTranspose 1-3d
MIXES = (0.5, -1.0, 2.0)  # interpolation and extrapolation: a ReLU net bends on either side


@dataclass
class Chain:
    first: str
    second: str
    error: float    # how far the second layer's input is from affine in the first's output (relative)
    fully_connected: bool  # the second layer is nn.Linear: a head stacked on an affine map
    on_random: float | None = None  # the same on random values of the first's output scale (when affine on data)


def _relative(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> float:
    return ((actual - expected).norm() / scale.norm().clamp_min(1e-300)).item()


def _logit_space(out: torch.Tensor) -> torch.Tensor:
    """(B, ...) outputs as centred logits: probabilities are logged, and each row loses its mean, so
    a softmax/log_softmax head (a per-row shift of the logits) does not count as non-linear."""
    out = out.flatten(1)
    if out.shape[1] > 1 and output_family(out.float()) == "probabilities":
        out = out.clamp_min(1e-300).log()
    return out - out.mean(1, keepdim=True)


@contextmanager
def _hooks(model: nn.Module, layers: dict[str, nn.Module], inject: dict | None, record: dict):
    """Record every weight layer's input and output (`record[name] = (input, output)`, first call);
    `inject = {name: tensor}` replaces that layer's output."""
    handles = []
    for name, layer in layers.items():
        def hook(module, args, output, name=name):
            record.setdefault(name, (args[0] if args else None, output))
            record.setdefault("#calls", []).append(name)
            if inject is not None and name in inject:
                return inject[name]
            return None
        handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _run(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, inject: dict | None = None):
    record: dict = {}
    with _hooks(model, layers, inject, record):
        out = forward_logits(model, x)
    return out, record


def _as_float64(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, str]:
    """A float64 copy of the model and inputs, or float32 when the model will not run in float64."""
    try:
        wide = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            wide(x[:2].double())
        return wide, x.double(), "float64"
    except (RuntimeError, TypeError):
        return copy.deepcopy(model).float().eval(), x.float(), "float32"


@applies_to("image", "features")
def effective_linearity(pipeline, n_pairs: int = 16, max_chains: int = 64, tolerance64: float = 1e-7,
                        tolerance32: float = 1e-4) -> CheckResult:
    """A model with two or more weight layers must not be affine in its input, and no two weight
    layers that follow each other may form a pure affine chain.

    FAILs when the whole model's (centred) outputs are affine in its input to within the round-off
    `tolerance64` (`tolerance32` for a model that only runs in float32), or when a pure chain ends
    in a fully connected layer (`fc1 -> fc2`, `conv -> flatten -> fc`); WARNs when only conv -> conv
    chains are affine (a linear bottleneck, as in MobileNetV2, is by design). A clean ReLU MLP or
    CNN at init measures 0.3-1.3, an affine stack ~1e-15. Whatever is affine on the real inputs is
    tested again on random values of the same scale: affine there too, an activation is missing;
    bending there, the activations exist but the real inputs never reach their bends (inputs scaled
    far too small). N/A for a model with one weight layer (a linear classifier by design), or whose
    eval outputs do not vary or repeat.
    """
    model = with_data_statistics(fresh_model(pipeline), pipeline).eval()  # see checks/measure/batchnorm.py
    x = first_batches(pipeline, "val", 1, shuffle=True)[0].x
    if len(x) < 2:
        return not_applicable("effective_linearity", STAGE, "needs at least two val examples")
    n = min(n_pairs, len(x) // 2)
    model, x, precision = _as_float64(model, x)
    tolerance = tolerance64 if precision == "float64" else tolerance32
    x1, x2 = x[:n], x[n:2 * n]
    layers = {name or "model": m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    out1, record1 = _run(model, layers, x1)
    out_again, _ = _run(model, layers, x1)
    out2, record2 = _run(model, layers, x2)
    calls = record1.get("#calls", [])
    called = [name for name in dict.fromkeys(calls)]
    weight_matrices = sum(p.dim() >= 2 for p in model.parameters())
    depth = len(called) if called else weight_matrices
    if depth < 2:
        return not_applicable("effective_linearity", STAGE,
                              f"the model has {depth} weight layer{'s' * (depth != 1)} in its forward pass: a linear "
                              "model by design, nothing to lose by being affine")
    if not torch.equal(out1, out_again):
        return not_applicable("effective_linearity", STAGE, "two eval-mode passes over the same inputs differ, so an "
                              "affinity test means nothing (eval_determinism names the cause)")
    if not (torch.isfinite(out1).all() and torch.isfinite(out2).all()):
        return not_applicable("effective_linearity", STAGE, "the untrained model's outputs are not finite "
                              "(output_sanity names the cause)")
    f1, f2 = _logit_space(out1), _logit_space(out2)
    if (f1 - f2).norm() <= 1e-12 * f1.norm().clamp_min(1e-300):
        return not_applicable("effective_linearity", STAGE, "the untrained model's outputs do not vary with its input "
                              "(a constant or zero init), so its form cannot be read from them at init")
    generator = torch.Generator().manual_seed(pipeline.config.seed)
    whole = _whole_error(model, layers, x1, x2)
    once = [name for name in called if calls.count(name) == 1]
    chains = [_chain(model, layers, x1, record1, record2, first, second, tolerance, generator)
              for first, second in list(zip(once, once[1:]))[:max_chains]]
    tested = [c for c in chains if c is not None]
    affine_chains = [c for c in tested if c.error <= tolerance]
    blocking = [c for c in affine_chains if c.fully_connected]
    details = {"whole_model_error": whole, "weight_layers": called or f"{weight_matrices} weight matrices",
               "precision": precision, "tolerance": tolerance,
               "chains": [{"first": c.first, "second": c.second, "error": c.error, "error_on_random": c.on_random}
                          for c in tested]}
    named = lambda cs: ", ".join(f"{c.first} -> {c.second} ({c.error:.1e})" for c in cs)
    limit = f"relative error, limit {tolerance:.0e} in {precision}"
    # The shown number is the criterion that decided: the whole model's error, or the blocking chain's.
    if whole <= tolerance:
        # at least unit scale: a normalised input's, which reaches the bends of any sane init
        on_random = _whole_error(model, layers, _wide(x1, generator, 1.0), _wide(x2, generator, 1.0))
        details["whole_model_error_on_random"] = on_random
        said = (f"the model is affine in its real inputs: mixing pairs of val inputs (a = "
                f"{', '.join(map(str, MIXES))}) mixes its outputs the same way to within {whole:.1e} ({limit}), "
                f"although it has {depth} weight layers")
        cause = (_missing if on_random <= tolerance else _not_reached)(on_random)
        return CheckResult("effective_linearity", STAGE, Verdict.FAIL, whole, tolerance, ">",
                           f"{said}. {cause} The model cannot beat a linear classifier.", details=details)
    if blocking:
        worst = min(blocking, key=lambda c: c.error)
        structural = [c for c in blocking if c.on_random <= tolerance]
        cause = _missing(worst.on_random) if structural else _not_reached(worst.on_random)
        return CheckResult("effective_linearity", STAGE, Verdict.FAIL, worst.error, tolerance, ">", (
            f"no bend between weight layers: {named(blocking)} - the second layer's input is an affine function of "
            f"the first's output alone on the real inputs ({limit}), so the two compose to one linear map and the "
            f"extra layer adds no capacity; the whole model bends ({whole:.2g}) only elsewhere. {cause} If the "
            "activation was applied, it went to another tensor (the input, the logits)."), details=details)
    smallest = min([whole] + [c.error for c in tested if c.error > tolerance])
    said = (f"the model is non-affine in its input (relative error {whole:.3f} when pairs of real val inputs are "
            f"mixed; an affine map gives ~0, limit {tolerance:.0e} in {precision})")
    if affine_chains:
        return CheckResult("effective_linearity", STAGE, Verdict.WARN, smallest, tolerance, ">", (
            f"{said}, but nothing non-linear sits between {named(affine_chains)}: those convolutions compose to one "
            "linear map. Fine for a linear bottleneck by design (MobileNetV2, EfficientNet); otherwise an activation "
            "is missing there."), details=details)
    return CheckResult("effective_linearity", STAGE, Verdict.PASS, smallest, tolerance, ">", (
        f"{said}, and each of the {len(tested)} chains of one weight layer feeding the next is non-linear "
        f"({len(called)} weight layers run)."), details=details)


def _missing(on_random: float) -> str:
    return (f"It stays affine on random values of the same scale ({on_random:.1e}): an activation is missing - "
            "defined in __init__ but not called in forward, nn.Identity (or Dropout) where it belonged, F.relu(h) "
            "whose result is not used, or applied to the wrong tensor.")


def _not_reached(on_random: float) -> str:
    return (f"On random values of the same scale it bends ({on_random:.2g}): the activations are there, but no "
            "unit changes side on the real inputs, so on this data the model is effectively linear. The inputs "
            "it receives barely vary (scaled far too small, e.g. divided by 255 twice, or nearly constant), or "
            "the biases swamp the pre-activations.")


def _mixed_error(evaluate, v1: torch.Tensor, v2: torch.Tensor) -> float:
    """The largest relative distance of evaluate(a v1 + (1 - a) v2) from a evaluate(v1) + (1 - a) evaluate(v2)."""
    e1, e2 = evaluate(v1), evaluate(v2)
    return max(_relative(evaluate(a * v1 + (1 - a) * v2), a * e1 + (1 - a) * e2, e1 - e2) for a in MIXES)


def _whole_error(model: nn.Module, layers: dict[str, nn.Module], x1: torch.Tensor, x2: torch.Tensor) -> float:
    return _mixed_error(lambda x: _logit_space(_run(model, layers, x)[0]), x1, x2)


def _wide(values: torch.Tensor, generator: torch.Generator, at_least: float = 0.0) -> torch.Tensor:
    """Random values shaped and scaled like `values` (mean absolute value plus spread, or `at_least`),
    centred on 0 so that any activation's bend is crossed."""
    scale = max((values.abs().mean() + values.std()).item(), at_least)
    return (torch.randn(values.shape, generator=generator, dtype=values.dtype) * scale).to(values.device)


def _chain(model: nn.Module, layers: dict[str, nn.Module], x1: torch.Tensor, record1: dict, record2: dict,
           first: str, second: str, tolerance: float, generator: torch.Generator) -> Chain | None:
    """How far `second`'s input is from an affine function of `first`'s output alone; None when it is
    not a pure chain (the second layer's input also depends on something else, e.g. a skip connection,
    or not on the first at all)."""
    h1, h2 = record1[first][1], record2[first][1]
    g1, g2 = record1[second][0], record2[second][0]
    if not isinstance(g1, torch.Tensor) or g1.shape != g2.shape or (g1 - g2).norm() == 0:
        return None
    swapped = _run(model, layers, x1, {first: h2})[1][second][0]  # x1's forward, with x2's first-layer output
    if _relative(swapped, g2, g1 - g2) > 1e-6:  # the second layer sees more than the first's output
        return None

    def second_input(h: torch.Tensor) -> torch.Tensor:
        return _run(model, layers, x1, {first: h})[1][second][0]
    error = _mixed_error(second_input, h1, h2)
    on_random = _mixed_error(second_input, _wide(h1, generator), _wide(h2, generator)) if error <= tolerance else None
    return Chain(first, second, error, isinstance(layers[second], nn.Linear), on_random)
