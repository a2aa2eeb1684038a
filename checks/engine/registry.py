"""Which checks run in which stage, in order. The pytest tests and the zoo both read this."""
from __future__ import annotations

from checks.skeleton import augmentation_checks as augmentation
from checks.baselines import baseline_checks as baselines
from checks.baselines import overfit_checks as overfit
from checks.skeleton import capacity_checks as capacity
from checks.data import data_checks as data
from checks.skeleton import gradient_checks as gradients
from checks.data import label_checks as labels
from checks.skeleton import loader_checks as loader
from checks.skeleton import loop_checks as loop
from checks.baselines import plan_checks as plan
from checks.baselines import prediction_checks as predictions
from checks.skeleton import schedule_checks as schedule
from checks.data import shift_checks as shift
from checks.skeleton import skeleton_checks as skeleton
from checks.data import split_checks as splits
from checks.baselines import sequence_baselines
from checks.data import padding_data_checks as padding_data
from checks.data import sequence_checks as sequence_data
from checks.skeleton import padding_checks as padding
from checks.skeleton import rng_checks as rng
from checks.skeleton import sequence_checks as sequence_skeleton
from checks.skeleton import step_checks as step

CHECKS_BY_STAGE = {
    "data": [data.integrity, data.split_sizes, data.class_balance, splits.duplicates_and_leakage,
             splits.conflicting_labels,
             data.normalisation_stats_source, data.input_normalisation, data.target_leak, labels.label_signal, labels.label_agreement,
             labels.label_noise, shift.split_shift,
             sequence_data.token_range, sequence_data.targets_shifted, sequence_data.split_overlap,
             padding_data.undeclared_padding,
             sequence_data.unseen_tokens, sequence_data.unigram_bigram_baselines],
    "skeleton": [loop.fit_dry_run, schedule.lr_schedule, skeleton.determinism, loader.what_goes_into_the_net, loader.label_pairing,
                 loader.batch_sampling, augmentation.augmentation_consistency, skeleton.output_sanity,
                 skeleton.eval_determinism, skeleton.loss_at_init, skeleton.batch_independence, gradients.gradient_flow,
                 step.gradient_clipping, rng.fresh_randomness, capacity.effective_linearity,
                 sequence_skeleton.causality, sequence_skeleton.position_used,
                 padding.padding_masked],
    "baselines": [baselines.input_independent_baseline, overfit.overfit_one_batch,
                  baselines.training_loss_decreases, predictions.prediction_dynamics, plan.run_length,
                  step.train_mode_kept,
                  sequence_baselines.beats_ngram_baselines],
}
CHECKS = {check.__name__: (stage, check) for stage, checks in CHECKS_BY_STAGE.items() for check in checks}
