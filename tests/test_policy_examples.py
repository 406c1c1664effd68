"""The example gates pass clean music: by the shipped model (the default scorer) and by the exact HAAQI.

HAAQI compares with normal hearing, so clean music scores well below 1 for hearing loss (the profile's
ceiling, `haaqi.ceiling`); a gate above that ceiling would fail perfect audio.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from haaqicli.audio import synth
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.ci.policy import load_policy
from haaqicli.cli import main
from haaqicli.output.ceiling import stored_ceiling

ROOT = Path(__file__).resolve().parents[1]
POLICIES = [ROOT / "examples" / "policy.toml", ROOT / "examples" / "policy.yaml"]
PROFILES = ["--profile", "normal", "--profile", "mild", "--profile", "moderate"]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Clean stereo synthetic music (the seeds the shipped model scores lowest), and a noisy copy."""
    clean, noisy = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("noisy")
    for seed, tempo in ((1, 96.0), (2, 140.0)):
        music = synth.music(6.0, 44100, channels=2, seed=seed, tempo_bpm=tempo)
        sf.write(clean / f"mix{seed}.wav", music.T, 44100)
        sf.write(noisy / f"mix{seed}.wav", synth.add_noise(music, 5.0, seed=seed).T, 44100)
    return clean, noisy


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_policy_thresholds_sit_below_the_clean_ceiling(policy: Path):
    loaded = load_policy(policy)
    assert loaded.profiles, "the example gates some profiles"
    for name, thresholds in loaded.profiles.items():
        ceiling = stored_ceiling(BUILTIN_PROFILES[name])
        assert ceiling is not None
        for key in ("min_score", "min_mean", "min_p10"):
            value = getattr(thresholds, key)
            assert value is None or value < ceiling.low - 0.02, (name, key, value, ceiling.low)


def test_readme_and_ci_docs_use_no_gate_above_a_ceiling():
    """No example command gates a profile with a --min-* above the lowest profile it names."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "ci.md"):
        for command in re.findall(r"haaqi check [^`]*?(?:\n\s*\n|```)", doc.read_text(), flags=re.S):
            lows = [stored_ceiling(BUILTIN_PROFILES[name]).low for name in re.findall(r"--profile (\w+)", command)
                    if name in BUILTIN_PROFILES]
            for value in re.findall(r"--min-(?:score|mean|p10) ([0-9.]+)", command):
                assert not lows or float(value) < min(lows), (doc.name, command)


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_example_policy_passes_clean_music_with_the_shipped_model(renders, policy: Path, tmp_path: Path):
    clean, noisy = renders
    result = CliRunner().invoke(main, ["check", str(clean), *PROFILES, "--policy", str(policy), "-q"])
    assert result.exit_code == 0, result.output
    # not a gate anything passes: 5 dB of noise fails it
    result = CliRunner().invoke(main, ["check", str(noisy), *PROFILES, "--policy", str(policy), "-q"])
    assert result.exit_code == 1, result.output


@pytest.mark.slow
def test_example_policy_passes_clean_music_by_the_exact_haaqi(renders):
    clean, _ = renders
    result = CliRunner().invoke(main, ["check", str(clean), *PROFILES, "--policy", str(POLICIES[0]),
                                       "--reference", str(clean), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
