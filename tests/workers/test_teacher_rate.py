"""An EMA teacher with rate 1.0 is the student one step late: warned about like a live teacher."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from workers.models.tiny import build_tiny_model
from workers.training.teacher import build_teacher


def test_an_ema_rate_of_one_warns_like_a_live_teacher() -> None:
    student = build_tiny_model(64, hidden_size=16, layers=1, heads=2)
    with pytest.warns(UserWarning, match="ema_rate=1.0.*diverges"):
        build_teacher("ema", student, copy.deepcopy(student), 1.0, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_teacher("ema", student, copy.deepcopy(student), 0.01, torch.float32)
