"""ignite/MONAI engines: self-supervised episode training (SSL-ALPNet) and its handlers."""

from fewshot_monai.engines.handlers import CSVLogger, OneShotValidation, evaluate_episodes, one_shot_slice_dice
from fewshot_monai.engines.selfsupervised import (
    DEFAULT_CONFIG,
    RESUME_KEYS,
    SelfSupervisedTrainer,
    TrainingRun,
    apply_overrides,
    build_training,
    iteration_seed,
    latest_checkpoint,
    load_config,
    merge_config,
    train_from_config,
)

__all__ = [
    "DEFAULT_CONFIG",
    "RESUME_KEYS",
    "CSVLogger",
    "OneShotValidation",
    "SelfSupervisedTrainer",
    "TrainingRun",
    "apply_overrides",
    "build_training",
    "evaluate_episodes",
    "iteration_seed",
    "latest_checkpoint",
    "load_config",
    "merge_config",
    "one_shot_slice_dice",
    "train_from_config",
]
