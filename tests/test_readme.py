"""The README's Python API example runs as written (with tiny test weights)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.usefixtures("use_tiny_weights")
def test_readme_api_example_runs_and_gradients_reach_the_waveform():
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    score, waveform = namespace["score"], namespace["waveform"]
    assert score.shape == (1,) and 0.0 <= float(score.detach()) <= 1.0
    assert waveform.grad is not None and torch.isfinite(waveform.grad).all() and waveform.grad.abs().sum() > 0
