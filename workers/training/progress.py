"""A terminal progress bar for stages: step, loss, KL and rollout length as they happen."""

from __future__ import annotations

from tqdm import tqdm

from workers.training.loop import StepMetrics


class ProgressBar:
    def __init__(self, method: str):
        self.method = method
        self.bar: tqdm | None = None

    def update(self, m: StepMetrics) -> None:
        if self.bar is None:
            self.bar = tqdm(total=m.total_steps, initial=m.step - 1, desc=self.method.upper(), unit="step")
        stats = {"loss": f"{m.loss:.4f}", "lr": f"{m.learning_rate:.1e}"}
        if self.method == "sdft":
            stats["kl"] = f"{m.loss:.4f}"
            stats["rollout_len"] = f"{m.rollout_tokens_mean:.0f}"
        self.bar.set_postfix(stats)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
