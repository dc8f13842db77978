"""A terminal progress bar for stages: step, loss (the KL for SDFT) and rollout length as they happen."""

from __future__ import annotations

from tqdm import tqdm

from app.training.stage_config import StageConfig
from workers.training.loop import StepMetrics

LOSS_LABELS = {"forward_kl": "kl", "reverse_kl": "reverse_kl", "jsd": "jsd"}


class ProgressBar:
    def __init__(self, config: StageConfig):
        self.method = config.method
        self.loss_label = LOSS_LABELS[config.divergence] if config.method == "sdft" else "ce"
        if config.support == "sampled_token":
            self.loss_label = "loss"  # the one-sample estimator's value is not a divergence
        self.bar: tqdm | None = None

    def update(self, m: StepMetrics) -> None:
        if self.bar is None:
            self.bar = tqdm(total=m.total_steps, initial=m.step - 1, desc=self.method.upper(), unit="step")
        stats = {self.loss_label: f"{m.loss:.4f}", "lr": f"{m.learning_rate:.1e}"}
        if self.method == "sdft":
            stats["rollout_len"] = f"{m.rollout_tokens_mean:.0f}"
        self.bar.set_postfix(stats)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
