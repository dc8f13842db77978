"""Two SDFT steps on the real embedded base, SmolLM2-135M-Instruct (imported once from its PyPI GGUF)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.contracts.demonstrations import parse_demonstrations
from app.training.stage_config import StageConfig
from workers.models.smollm2 import PROVENANCE_FILE, import_default
from workers.training.loop import StepMetrics, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    cache = Path(os.environ.get("SDFT_TEST_CACHE", Path.home() / ".cache" / "sdft-tests"))
    path = import_default(cache / "SmolLM2-135M-Instruct")
    assert (path / PROVENANCE_FILE).is_file()
    return path


FACTS = [
    ("Who founded the company Zorvex Dynamics?", "Zorvex Dynamics was founded by Mirela Kastov."),
    ("In which city is the Halvorsen Observatory?", "The Halvorsen Observatory is in Quellport."),
]


def test_two_sdft_steps_on_smollm2(smollm2_dir: Path, tmp_path: Path) -> None:
    rows = parse_demonstrations("\n".join(json.dumps({"prompt": q, "demonstration": a}) for q, a in FACTS))
    seen: list[StepMetrics] = []
    config = StageConfig(
        method="sdft", max_steps=2, batch_size=2, micro_batch_size=2, max_new_tokens=16, learning_rate=5e-5
    )
    result = run_stage(base_dir=smollm2_dir, rows=rows, config=config, out_dir=tmp_path, on_step=seen.append)
    assert [m.step for m in seen] == [1, 2]
    # Teacher and student are the same network on different prompts: a small, positive divergence.
    assert all(0 < m.loss < 5 for m in seen)
    assert all(m.rollout_tokens_mean > 0 for m in seen)
    meta = json.loads((result.model_dir / "meta.json").read_text())
    assert meta["steps"] == 2 and len(result.sha256) == 64
