"""Which checks run in which stage, in order. The pytest tests and the zoo both read this."""
from __future__ import annotations

from checks import augmentation_checks as augmentation
from checks import baseline_checks as baselines
from checks import data_checks as data
from checks import gradient_checks as gradients
from checks import label_checks as labels
from checks import loader_checks as loader
from checks import loop_checks as loop
from checks import skeleton_checks as skeleton

CHECKS_BY_STAGE = {
    "data": [data.integrity, data.split_sizes, data.class_balance, data.duplicates_and_leakage,
             data.normalisation_stats_source, data.input_normalisation, data.target_leak, data.label_signal, labels.label_agreement,
             labels.label_noise],
    "skeleton": [loop.fit_dry_run, skeleton.determinism, loader.what_goes_into_the_net, loader.label_pairing,
                 loader.batch_sampling, augmentation.augmentation_consistency, skeleton.output_sanity,
                 skeleton.eval_determinism, skeleton.loss_at_init, skeleton.batch_independence, gradients.gradient_flow],
    "baselines": [baselines.input_independent_baseline, baselines.overfit_one_batch,
                  baselines.training_loss_decreases, baselines.prediction_dynamics],
}
CHECKS = {check.__name__: (stage, check) for stage, checks in CHECKS_BY_STAGE.items() for check in checks}
