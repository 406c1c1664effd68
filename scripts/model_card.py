"""Write weights/MODEL_CARD.md from measured results, so every figure comes from a named command.

Inputs (made by scripts/train-models.sh and `haaqi bench --json`):
    data/results/dataset.json   haaqi dataset stats --json
    data/results/evaluate.json  haaqi evaluate --json
    data/results/bench.json     haaqi bench --json
    data/results/ablation/      haaqi ablate --out data/results/ablation (optional: the ablation section)
    weights/manifest.json       written by haaqi train / haaqi distill
Run from the repository root: .venv/bin/python scripts/model_card.py
(`--speed-only`: rewrite just the speed section from bench.json, for a new `make bench` with the same weights;
`--intervals-only`: just the intervals section, from weights/*.calibration.json after `haaqi calibrate --write`;
`--baseline-only`: just the validation-real baseline section, from data/results/baseline-*.json;
`--data-only`: just the training-data section, from data/results/dataset.json;
`--validation-only`: just the validation section, from data/results/evaluate.json;
`--limits-only`: just the known-limits section, from data/results/evaluate.json and weights/manifest.json;
`--release-only`: the sections new weights change (models, recipe, validation, against the previous release))
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("data/results")
WEIGHTS = Path("weights")


def load(name: str) -> dict | list | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def write_card(text: str) -> None:
    from haaqicli.util.atomic import atomic_write

    atomic_write(WEIGHTS / "MODEL_CARD.md", lambda tmp: tmp.write_text(text))


def biased_families(evaluation: dict, threshold: float = 0.05) -> list[str]:
    """Known-limit bullets: degradation families whose mean error (predicted - true) exceeds `threshold`."""
    bullets = []
    for name, result in evaluation.items():
        groups = {k: m for k, m in result.get("by_degradation", {}).items()
                  if m.get("bias") is not None and abs(m["bias"]) > threshold}
        if groups:
            listed = ", ".join(f"{k} {m['bias']:+.2f}" for k, m in sorted(groups.items(), key=lambda kv: -abs(kv[1]["bias"])))
            bullets.append(f"- `{name}` is biased on some degradation families (mean of predicted - true on the "
                           f"validation packages, from the tables above): {listed}. A positive bias means the model "
                           "does not hear that damage fully (e.g. reverb on music that is reverberant already).")
    return bullets


def design_note(info: dict) -> str:
    """The model-design options a model was trained with (term heads, band conditioning, ranking loss,
    content prior, selection), as a clause of its recipe line; the release recipe gives the plain sentence."""
    recipe = info.get("training", {}).get("recipe", {})
    head = info.get("config", {}).get("head", {})
    parts = []
    if head.get("terms"):
        parts.append(f"term heads (HAAQI's sub-terms combined by its formula; sub-term loss weight "
                     f"{recipe.get('term_weight', 1.0)})")
    if head.get("bands"):
        parts.append(f"hearing-loss conditioning on {head['bands']} auditory bands (NAL-R gain and audiogram, FiLM)")
    if recipe.get("rank_weight"):
        parts.append(f"{recipe.get('rank_loss', 'pairwise')} ranking loss (weight {recipe['rank_weight']})")
    if head.get("content_prior"):
        prior = info.get("training", {}).get("content_prior", {})
        parts.append(f"a frozen {head['content_prior']} content prior ({prior.get('file', 'converted weights')}, "
                     "ISC licence; 3-s patches at 16 kHz)")
    corrector = info.get("training", {}).get("corrector")
    if corrector:
        before, after = corrector["selection_before"], corrector["selection_after"]
        parts.append(f"a signal-descriptor corrector of the score (hidden {head.get('signal_corrector')}, fitted on "
                     f"{corrector['items']} training clips with the network frozen; selection LCC "
                     f"{before['lcc']:.3f} -> {after['lcc']:.3f})")
    return f"; {', '.join(parts)}" if parts else ""


def student_loss_line(info: dict) -> str:
    """How the student learned: from the labels alone (`haaqi train --arch haaqinet-student`, when the
    teacher is the weaker model and would teach its errors) or distilled from the teacher."""
    recipe = info.get("training", {}).get("recipe", {})
    if recipe.get("arch") == "haaqinet-student":
        return ("- Student loss: the teacher's loss on the true labels; it was trained on the labels, not "
                "distilled (`haaqi train --arch haaqinet-student`), because on the selection package the teacher "
                "is the weaker model and would pass on its errors.")
    return ("- Student loss: L1 + cosine distance between its projected layers and teacher layers, MSE to "
            "the teacher's clip and frame scores, plus MSE to the true label (weight "
            f"{recipe.get('label_weight', '–')}).")


def clean_normal_limit(evaluation: dict) -> list[str]:
    """A known-limit bullet when clean music for normal hearing is predicted well below the exact HAAQI."""
    cases = [(name, r["clean_normal"]) for name, r in evaluation.items() if r.get("clean_normal", {}).get("n")]
    low = [(name, c) for name, c in cases if c["label"] - c["predicted"] > 0.05]
    if not low:
        return []
    listed = ", ".join(f"`{name}` {c['predicted']:.2f}" for name, c in low)
    return [f"- Clean music for normal hearing is predicted low: {listed}, where the exact HAAQI gives "
            f"{low[0][1]['label']:.2f} (the validation table's clean/normal column). The models compress the top "
            "of the scale, so read a high score against the others, not against 1; gates for normal hearing "
            "sit lower than the ceiling suggests (`examples/policy.toml`)."]


def _pooled(groups: list[dict]) -> tuple[int, float]:
    """(n, mean of predicted - true) over some clean-by-bandwidth groups, weighted by their sizes."""
    n = sum(g["n"] for g in groups)
    return n, (sum(g["n"] * (g["predicted"] - g["label"]) for g in groups) / n if n else float("nan"))


def band_limited_limit(evaluation: dict, narrow_below_khz: float = 10.0, margin: float = 0.05) -> list[str]:
    """A known-limit bullet when clean music whose content ends below `narrow_below_khz` is predicted
    lower than full-band clean music, by more than `margin` (`haaqi evaluate`'s clean_by_bandwidth)."""
    from haaqicli.audio.bandwidth import BANDWIDTH_EDGES, BANDWIDTH_GROUPS

    narrow_names = BANDWIDTH_GROUPS[: BANDWIDTH_EDGES.index(narrow_below_khz * 1000) + 1]
    cases = []
    for name, result in evaluation.items():
        groups = result.get("clean_by_bandwidth", {})
        narrow = _pooled([m for g, m in groups.items() if g in narrow_names])
        full = _pooled([m for g, m in groups.items() if g not in narrow_names and g != "unknown"])
        if narrow[0] and full[0] and narrow[1] < full[1] - margin:
            cases.append(f"`{name}` {narrow[1]:+.2f} on {narrow[0]} such items against {full[1]:+.2f} on {full[0]} "
                         "full-band ones")
    if not cases:
        return []
    return [f"- Clean music whose content ends below {narrow_below_khz:g} kHz (an old or low-rate encode, a dull "
            "synthesiser) sounds like low-pass damage to a model that has no original: mean of predicted - true "
            f"on the validation table's clean items, all profiles: {'; '.join(cases)} (`haaqi evaluate`, "
            "\"clean, content ... kHz\" lines; `audio.bandwidth`: where the spectrum falls 50 dB below its peak). "
            "Such a file's low score may be its source, not damage: check with `haaqi reference` where the "
            "original exists."]


def snapshot_note(manifest: dict) -> str:
    """Where a recipe trained on a copy of the label folder (data/ is git-ignored), say what it was, so the
    command can be read against the committed labels."""
    copies = sorted({info.get("training", {}).get("recipe", {}).get("manifest", "") for info in manifest.values()}
                    - {"", "labels/manifest.parquet"})
    if not copies:
        return ""
    return (f" `{'`, `'.join(copies)}`: a copy of `labels/` (manifest and label shards) taken when training "
            "began, so that every run saw the same labels; they are all committed, and `labels/` holds more now.")


def train_command(info: dict) -> str:
    """The `haaqi train` command a model's recorded recipe stands for (an ablation row promoted to a
    release name says so): the card quotes what was run, not a summary of it."""
    recipe = info.get("training", {}).get("recipe", {})
    flags = [f"--manifest {recipe['manifest']}"] if recipe.get("manifest") else []
    if recipe.get("arch") and recipe["arch"] != "haaqinet":
        flags.append(f"--arch {recipe['arch']}")
    if recipe.get("init"):
        flags.append(f"--init {recipe['init']}")
    if recipe.get("terms"):
        flags.append("--terms")
    # a corrector trained with the network: only a config file asks for one
    needs_config = bool(info.get("config", {}).get("head", {}).get("signal_corrector")
                        and not info.get("training", {}).get("corrector"))
    if needs_config:
        flags.append("--config C")
    for key in ("bands", "rank_weight", "lr", "epochs", "max_minutes", "threads", "train_items",
                "plus_augmentation", "selection", "select_metric"):
        if recipe.get(key) not in (None, 0, 0.0, ""):
            flags.append(f"--{key.replace('_', '-')} {recipe[key]}")
    for key in ("clean_weight", "clip_group"):  # both default to 1
        if recipe.get(key) not in (None, 1, 1.0):
            flags.append(f"--{key.replace('_', '-')} {recipe[key]}")
    text = "`haaqi train " + " ".join(flags) + "`"
    if needs_config:
        text += " (C: the model's `config` in weights/manifest.json)"
    return text + promotion_text(info, recipe) + corrector_command(info)


def promotion_text(info: dict, recipe: dict) -> str:
    """How a model trained into an experiment's registry became the release name ("" when it was not)."""
    corrected = info.get("training", {}).get("corrector")
    # a corrected model's own promotion is the corrector's step; the network's is recorded with its base
    origin = (corrected["base"].get("promoted_from") if corrected else info.get("training", {}).get("promoted_from"))
    if not origin:
        return ""
    folder = recipe.get("weights_dir", "...")
    via = " (an `haaqi ablate` row)" if origin["name"].startswith("ablation-") else ""
    return f"{via}, into `{folder}`, then `scripts/promote-model.py {folder} {origin['name']} {info['name']}`"


def corrector_command(info: dict) -> str:
    """The `haaqi correct` step of a model whose score a signal-descriptor corrector adjusts ("" without)."""
    record = info.get("training", {}).get("corrector")
    if not record:
        return ""
    recipe = record["recipe"]
    flags = [f"--model {recipe['model']}", f"--manifest {recipe['manifest']}"]
    for key in ("source_dir", "weights_dir", "hidden", "epochs", "lr", "weight_decay", "rank_weight", "selection",
                "select_metric", "train_items", "threads"):
        if recipe.get(key) not in (None, ""):
            flags.append(f"--{key.replace('_', '-')} {recipe[key]}")
    text = (f", then `haaqi correct {' '.join(flags)}` (network frozen; sha256 of the model it corrected "
            f"`{record['base']['sha256'][:12]}…`)")
    origin = info.get("training", {}).get("promoted_from")
    if origin and recipe.get("weights_dir"):
        text += f", then `scripts/promote-model.py {recipe['weights_dir']} {origin['name']} {info['name']}`"
    return text


def previous_release_section() -> list[str]:
    """The release against the weights it replaced, on the same labelled items (`haaqi evaluate
    --weights-dir <previous weights> --json data/results/evaluate-previous.json`, same options)."""
    now, before = load("evaluate.json") or [], load("evaluate-previous.json") or []
    if not now or not before:
        return []
    old = {(r["split"], r["model"]): r for r in before}
    lines = ["", "## Against the previous release", "",
             "The same items, the same command (`haaqi evaluate --exclude-package ufoai-music`), on the weights "
             "this release replaced (`--weights-dir`, `data/results/evaluate-previous.json`):", "",
             "| model | split | n | LCC | SRCC | MSE | within-profile LCC | clean/normal |", "|---|---|---|---|---|---|---|---|"]
    for row in now:
        prev = old.get((row["split"], row["model"]))
        if prev is not None and prev.get("sha256") and prev.get("sha256") == row.get("sha256"):
            prev, label_now = None, "unchanged in this release"  # the same weights: one row
        else:
            label_now = "this release"
        for label, r in ((label_now, row), ("previous", prev)):
            if r is None:
                continue
            o, w, c = r["overall"], r.get("within_profile", {}), r.get("clean_normal", {})
            lines.append(f"| {row['model']} ({label}) | {row['split']} ({', '.join(r['packages'])}) | {o['n']} | "
                         f"{fmt(o['lcc'])} | {fmt(o['srcc'])} | {fmt(o['mse'], '.4f')} | {fmt(w.get('lcc'))} | "
                         f"{fmt(c.get('predicted'))} (exact {fmt(c.get('label'))}) |")
    return lines


def _steps_per_epoch(info: dict) -> int:
    training = info.get("training", {})
    return int(training.get("items", 0)) // max(1, int(training.get("recipe", {}).get("batch_size", 1)))


def selection_text(info: dict) -> str:
    """Where a model's checkpoint was chosen, and by which figure."""
    recipe = info.get("training", {}).get("recipe", {})
    selection, metric = recipe.get("selection", "dev"), recipe.get("select_metric", "mse")
    dev = info.get("metrics", {}).get("dev", {})
    steps_run = info.get("training", {}).get("steps_run")
    if "step" in dev and dev["step"] == steps_run and steps_run % max(1, _steps_per_epoch(info)):
        kept = f", the last checkpoint, at step {dev['step']} when the time budget ran out"  # inside an epoch
    else:
        kept = f", the checkpoint after epoch {dev['epoch']}, step {dev['step']}" if "step" in dev else ""
    where = ("held-out tracks of the training packages (dev" if selection == "dev"
             else f"`{selection}` (never a reporting package;")
    return f"checkpoint chosen on {where} {metric.upper()} {fmt(dev.get(metric), '.4f')}{kept})"


def ablation_section() -> list[str]:
    """The ablation rows and learning curve of `haaqi ablate --out data/results/ablation`, when run."""
    result = load("ablation/ablation.json")
    if not result:
        return []
    from haaqicli.training.ablation import AblationConfig, format_ablation

    c = result["config"]
    default = AblationConfig(manifest="")  # flags left at their defaults are not spelled out
    flags = [f"--manifest {c['manifest']}", "--out data/results/ablation"]
    if list(c.get("rows", default.rows)) != list(default.rows):
        flags += [f"--rows {','.join(c['rows'])}"]
    flags += [f"--arch {c['arch']}"] if c.get("arch", default.arch) != default.arch else []
    flags += [f"--pretrained {c['pretrained']}"] if c.get("pretrained") else []
    flags += [f"--train-items {c['train_items']}"] if c.get("train_items") else []
    flags += [f"--init {c['init']}"] if c.get("init") else []
    flags += [f"--lr {c['lr']}", f"--max-minutes {c['max_minutes']}" if c.get("max_minutes") else f"--epochs {c['epochs']}"]
    flags += [f"--threads {c['threads']}"] if c.get("threads") else []
    flags += [f"--select-metric {c['select_metric']}"]
    if c.get("learning_curve"):
        flags += [f"--learning-curve {','.join(str(n) for n in c['learning_curve'])}", f"--curve-row {c['curve_row']}"]
    flags += [f"--release {name}" for name in c.get("release", [])]
    return ["", "## Ablation and learning curve", "",
            f"`haaqi ablate {' '.join(flags)}` (rows cumulative, one budget each; checkpoints chosen on "
            "the selection package, figures on packages that never chose one; the release rows are the "
            "models these rows replaced):", "",
            format_ablation(result), ""]


def speed_section(bench: dict) -> list[str]:
    """The "## Speed" section from `make bench`'s JSON (empty without it)."""
    if not bench:
        return []
    lines = ["", "## Speed", ""]
    end_to_end = bench.get("end_to_end", {}).get("rows", [])
    if end_to_end:
        warm_runs = bench["end_to_end"].get("warm_runs", 1)
        timed = ("the second invocation" if warm_runs == 1
                 else f"the median of {warm_runs} invocations after the first")
        lines += ["Whole `haaqi` processes, start-up included (`make bench`'s end-to-end rows; each stereo file "
                  f"is scored for both ears; {timed}, the cold first one in brackets):", "",
                  "| what | audio s | wall s | x real time | x pyclarity | machine |", "|---|---|---|---|---|---|"]
        for row in end_to_end:
            cold = f" ({row['cold_seconds']:.2f})" if row.get("cold_seconds") else ""
            realtime = f"{row['x_realtime']:.1f}" if row.get("x_realtime") else "–"
            ratio = f"{row['x_pyclarity']:.1f}" if row.get("x_pyclarity") else "–"
            busy = row.get("load", {})
            machine = "loaded" if busy.get("busy") else f"quiet ({busy.get('busy_cores', busy.get('load1'))} cores busy)"
            lines.append(f"| {row['name']} | {row['audio_seconds']:.0f} | {row['wall_seconds']:.2f}{cold} | "
                         f"{realtime} | {ratio} | {machine} |")
        lines.append("")
    lines += ["In one process, `make bench` (`haaqi bench --files 4 --seconds 30 --repeats 3 --pyclarity-seconds 10 "
              "--json data/results/bench.json`) "
              f"({bench['files']} stereo files of {bench['file_seconds']:.0f} s, each scored as a mono mix, torch "
              f"threads {bench['cpu_threads']}, decoding and resampling included):", "",
              "| what | x real time | x pyclarity |", "|---|---|---|"]
    for row in bench["rows"]:
        ratio = f"{row['x_pyclarity']:.1f}" if row.get("x_pyclarity") else "–"
        lines.append(f"| {row['name']} | {row['x_realtime']:.1f} | {ratio} |")
    reference = bench.get("reference", {})
    if "speedup" in reference:
        lines += ["", f"Exact HAAQI against pyclarity on the same {reference['seconds']:g}-s clip at "
                  f"{reference['sample_rate']} Hz: {reference['speedup_wall']:.1f}x in wall time, "
                  f"{reference['speedup']:.1f}x in CPU time; scores {reference['ours_score']:.6f} and "
                  f"{reference['pyclarity_score']:.6f}. The 8-clip rows are the labelling engine: "
                  "one `compute_haaqi_batch` call (single-threaded processes, one per core)."]
    rows = {row["name"]: row for row in bench["rows"]}
    teacher, student = rows.get("teacher (cpu, model only)"), rows.get("distilled (cpu, model only)")
    if teacher and student:
        lines += ["", f"Model only (one batch of 6-s windows, fbank included): the student runs "
                  f"{student['x_realtime'] / teacher['x_realtime']:.1f}x the teacher's throughput."]
    return lines + int8_paragraph(load("int8.json") or {})


def int8_paragraph(check: dict) -> list[str]:
    """What `--precision int8` changes (scripts/int8-check.py); empty without its results."""
    if not check.get("models"):
        return []
    parts = []
    for name, m in check["models"].items():
        f32, i8 = m["float32"], m["int8"]
        parts.append(f"`{name}` mean {m['mean_abs']:.4f}, 99th percentile {m['p99_abs']:.4f}, largest "
                     f"{m['max_abs']:.4f} (LCC {f32['overall']['lcc']:.3f} -> {i8['overall']['lcc']:.3f}, "
                     f"SRCC {f32['overall']['srcc']:.3f} -> {i8['overall']['srcc']:.3f}, MSE "
                     f"{f32['overall']['mse']:.4f} -> {i8['overall']['mse']:.4f}, within-profile LCC "
                     f"{f32['within_profile']['lcc']:.3f} -> {i8['within_profile']['lcc']:.3f})")
    excluded = ", ".join(check.get("excluded", [])) or "none"
    return ["", f"{INT8_PARAGRAPH}, CPU only; the rows marked int8 above) "
            f"moves scores from float32 by, on the {check['n']:,} items of {check['split']} (left out: {excluded}; "
            "`.venv/bin/python scripts/int8-check.py`): " + "; ".join(parts) + "."]


INTERVALS_HEADING = "## Intervals of predicted scores"


def intervals_section() -> list[str]:
    """The intervals section from the committed calibrations (weights/<model>.calibration.json, written by
    `haaqi calibrate --write`); empty without them."""
    calibrations = {path.name.split(".")[0]: json.loads(path.read_text())
                    for path in sorted(WEIGHTS.glob("*.calibration.json"))}
    if not calibrations:
        return []
    first = next(iter(calibrations.values()))
    lines = ["", INTERVALS_HEADING, "",
             f"Every predicted score comes with `score_lo`/`score_hi`, a nominal {first['coverage']:.0%} interval: "
             "residual quantiles (exact - predicted) per hearing-loss grade (WHO, better-ear PTA of the scored ear) "
             "and predicted score, fitted on real recorded music the models never saw (ufoai-music) and checked on "
             "other such music (nexuiz-music): clips cut, degraded by the training recipe sampler (NAL-R excepted) "
             "and kept clean once, for the profiles normal, N1-N4, S1, S2, labelled with the exact HAAQI and scored "
             "as `haaqi score` scores a file (its RMS at 65 dB SPL). Made by "
             "`scripts/calibration-set.py` (30 clips per package x 4 versions x 7 profiles, seed 2026) then "
             f"`{first['fit'].get('command', 'haaqi calibrate')} --write`; each file is keyed by its weights' sha256.",
             "", "| model | fitted on | checked on | coverage | mean width |", "|---|---|---|---|---|"]
    for name, data in calibrations.items():
        check = data["check"]
        lines.append(f"| {name} | {data['fit']['n']} items ({', '.join(data['fit']['packages'])}) | {check['n']} items "
                     f"({', '.join(check['packages'])}) | {fmt(check['coverage'])} | {fmt(check['mean_width'])} |")
    lines += ["", "On the check split, per grade and per predicted range (coverage / mean width):", "",
              "| group | " + " | ".join(calibrations) + " |", "|---|" + "---|" * len(calibrations)]
    order = ["normal", "mild", "moderate", "moderately severe", "severe", "profound"]  # audiogram.SEVERITY_GRADES
    groups = sorted({g for data in calibrations.values() for g in data["check"]["grades"]}, key=order.index)
    ranges = list(dict.fromkeys(r for data in calibrations.values() for r in data["check"]["predicted"]))
    for key, kind, label in [*((g, "grades", g) for g in groups), *((r, "predicted", f"predicted {r}") for r in ranges)]:
        cells = []
        for data in calibrations.values():
            part = data["check"][kind].get(key)
            cells.append(f"{fmt(part['coverage'])} / {fmt(part['mean_width'])} (n={part['n']})" if part else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The set is drawn by the training sampler of this commit (codec ladders down to the lowest "
              "bitrates, strong reverb, clipping, cascades): a rebuild with the command above gives the same items, "
              "up to decoder differences across machines."]
    short = [f"{name} {fmt(data['check']['coverage'])}" for name, data in calibrations.items()
             if data["check"]["coverage"] < data["coverage"] - 0.02]
    if short:  # the fit split also chose the checkpoint: its residuals are the smallest the model shows
        lines += ["", f"Below nominal on the check split: {', '.join(short)}. ufoai-music both chose the model's "
                  "checkpoint and fitted its intervals, so the fitted residuals are a little smaller than on music "
                  "that steered nothing; read those intervals as narrower than their nominal coverage."]
    lines += ["", "The widths are the honest size of the models' errors on recorded music (compare the validation "
              "tables above): a predicted score tells a clean file from a badly damaged one, not 0.80 from 0.85. "
              "The interval is fitted on 6-s clips; a long file's score is a mean over windows, whose errors "
              "partly average out, so its interval is on the wide side. Grades without calibration data (severe, "
              "profound) use the nearest fitted grade. `--spl` other than 65 dB SPL is outside the calibration."]
    return lines


DATA_HEADING = "## Training data"


def training_data_section(dataset: dict) -> list[str]:
    """What the models were trained on, from `haaqi dataset stats --json` (data/results/dataset.json)."""
    lines = [DATA_HEADING, "",
             f"`haaqi dataset stats --json` (manifest `labels/manifest.parquet`): {dataset.get('items', '–')} "
             f"items from {dataset.get('clips', '–')} clips of {dataset.get('sources', '–')} tracks, "
             f"{dataset.get('labelled', '–')} labelled when this card was written (each model's recipe line says how "
             "many training clips it saw).", ""]
    packages = dataset.get("packages", [])
    if packages:
        lines += ["| split | package | tracks | minutes | clips | items | labelled |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['split']} | {p['package']} | {p.get('tracks', '–')} | {p.get('minutes', '–')} | "
                  f"{p.get('clips', '–')} | {p['items']} | {p['labelled']} |" for p in packages]
    histogram = dataset.get("label_histogram")
    if histogram:
        lines += ["", "Label histogram (bins of 0.1 over 0–1): "
                  + ", ".join(str(c) for c in histogram["counts"])
                  + ". Not uniform: the audiogram drives much of the label (see `haaqi dataset balance`)."]
    if "cpu_seconds_per_label" in dataset:
        lines += ["", f"CPU time per label: {dataset['cpu_seconds_per_label']:.2f} s (6-s clip)."]
    lines += [
        "",
        "Music comes only from the Debian packages the project allows (`haaqicli.data.packages`) (game soundtracks, recorded and "
        "produced music, tracker modules, MIDI and music21 scores rendered with fluidsynth and three "
        "soundfonts, real drum and loop recordings); the reserved evaluation packages are refused in code. The split is "
        "by package. Content augmentation of the clean reference (two-track mixes, EQ and tilt, mastering "
        "compression and limiting, stereo fold-downs, room reverb). Degradations: codec ladder (mp2, mp3 "
        "from 8 kb/s, AAC from 16, Vorbis, Opus from 6, via ffmpeg, aligned back), low-/high-pass, noise, "
        "clipping down to 10% of the peak, bit depth, sample-rate reduction, compression, tilt, resonances, "
        "reverb (RT60 0.3–2.5 s, DRR −5…+15 dB), dropouts, packet loss, level changes, NAL-R, cascades of "
        "two or three and clean references, each presented at a level drawn from 50–85 dB SPL. Audiograms: "
        "normal, perturbed Bisgaard N1–N7/S1–S3, sloping, flat, notched and asymmetric.",
    ]
    return lines


VALIDATION_HEADING = "## Validation (packages never seen in training)"


def by_split_results(results: list) -> dict[str, dict[str, dict]]:
    """`haaqi evaluate --json` rows as {split: {model: result}}, the real-music split first, as evaluate runs them."""
    by_split: dict[str, dict[str, dict]] = {}
    for r in results:
        by_split.setdefault(r.get("split", "validation"), {})[r["model"]] = r
    return by_split


def validation_section(by_split: dict[str, dict[str, dict]]) -> list[str]:
    """Each model on each validation split: overall, then by package, degradation, severity and profile."""
    lines = [VALIDATION_HEADING, ""]
    for split, models in by_split.items():
        packages = ", ".join(next(iter(models.values()))["packages"])
        lines += [f"`haaqi evaluate --exclude-package ufoai-music --json data/results/evaluate.json`, split "
                  f"`{split}` ({packages}; ufoai-music chose the checkpoints); "
                  "within-profile: the mean of the per-profile correlations (how well versions of the music "
                  "are ranked for one listener); clean/normal: mean prediction on clean clips for normal "
                  "hearing, next to the exact HAAQI's mean:", "",
                  "| model | n | LCC | SRCC | MSE | within-profile LCC | within-profile SRCC | clean/normal |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, result in models.items():
            m, w, c = result["overall"], result.get("within_profile", {}), result.get("clean_normal", {})
            clean = f"{fmt(c.get('predicted'), '.3f')} (exact {fmt(c.get('label'), '.3f')})" if c.get("n") else "–"
            lines.append(f"| `{name}` (ours) | {m['n']} | {fmt(m['lcc'])} | {fmt(m['srcc'])} | {fmt(m['mse'], '.4f')} "
                         f"| {fmt(w.get('lcc'))} | {fmt(w.get('srcc'))} | {clean} |")
        lines.append("")
    for name, paper in (("teacher", (0.9368, 0.9486, 0.0064)), ("distilled", (0.9071, 0.9307, 0.0091))):
        lines.append(f"HAAQI-Net {name} (paper, their data): LCC {paper[0]}, SRCC {paper[1]}, MSE {paper[2]}.")
    for split, models in by_split.items():
        for name, result in models.items():
            for column in ("package", "degradation", "severity", "profile"):
                groups = result.get(f"by_{column}", {})
                if groups:
                    lines += ["", f"`{name}` on `{split}` by {column} (bias: mean of predicted - true):", "",
                              "| group | n | LCC | SRCC | MSE | bias |", "|---|---|---|---|---|---|"]
                    lines += [f"| {k} | {m['n']} | {fmt(m['lcc'])} | {fmt(m['srcc'])} | {fmt(m['mse'], '.4f')} "
                              f"| {fmt(m.get('bias'), '+.3f')} |" for k, m in groups.items()]
    return lines


def rewrite_section(heading: str, lines: list[str], before: str | None) -> None:
    """Replace the card's section under `heading` (or insert it before the section `before`); the other
    sections stay as their own commands made them. One blank line separates it from its neighbours."""
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    section = "\n".join(lines).strip("\n")
    start = card.find("\n" + heading + "\n")
    if start >= 0:  # up to the next section, or the end of the card
        end = card.find("\n## ", start + 1)
        end = len(card) if end < 0 else end
    else:  # a new section goes before `before`, or last where None
        end = len(card) if before is None else card.index("\n" + before + "\n")
    write_card(card[: start if start >= 0 else end].rstrip("\n") + "\n\n" + section + "\n" + card[end:])
    print(section)


def rewrite_intervals_section() -> None:
    rewrite_section(INTERVALS_HEADING, intervals_section(), before="## Speed")


BASELINE_HEADING = "## Baseline on validation-real"
BASELINE_PARTS = (("nexuiz-music", "reporting", "baseline-reporting.json"),
                  ("ufoai-music", "selection", "baseline-selection.json"))


def baseline_section() -> list[str]:
    """The shipped models on the real-music validation split (issue 14's baseline for the next models),
    from `haaqi evaluate --split validation-real --exclude-package P --json data/results/baseline-*.json`."""
    lines = [BASELINE_HEADING, "",
             "Recorded music the models never saw (ufoai-music chooses checkpoints, nexuiz-music only reports), "
             "every clip x the profiles normal, N1-N4, S1, S2 x its versions (clean + 3 degradations), labelled "
             "with the exact HAAQI at the item's level (50-85 dB SPL). Made by `haaqi evaluate --split "
             "validation-real --exclude-package ufoai-music --json data/results/baseline-reporting.json` (and "
             "`--exclude-package nexuiz-music ... baseline-selection.json`), then `scripts/model_card.py "
             "--baseline-only`. Only the labelled items count: labelling continues over sessions "
             "(`make labels`), so n grows.", "",
             "| model | part | n | LCC | SRCC | MSE | bias | within-profile LCC | clean, normal: predicted / exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    reporting = None
    for package, part, name in BASELINE_PARTS:
        for row in load(name) or []:
            o, w, c = row["overall"], row["within_profile"], row["clean_normal"]
            lines.append(f"| {row['model']} | {package} ({part}) | {o['n']} | {fmt(o['lcc'])} | {fmt(o['srcc'])} | "
                         f"{fmt(o['mse'], '.4f')} | {fmt(o['bias'], '+.3f')} | {fmt(w['lcc'])} | "
                         f"{fmt(c.get('predicted'))} / {fmt(c.get('label'))} (n={c['n']}) |")
            reporting = reporting or (row if part == "reporting" else None)
    if reporting is not None:
        lines += ["", f"Bias (predicted - exact) per degradation family on {BASELINE_PARTS[0][0]}, "
                  f"{reporting['model']}: " + ", ".join(
                      f"{family} {fmt(v['bias'], '+.3f')} (n={v['n']})"
                      for family, v in sorted(reporting["by_degradation"].items()) if v["n"] >= 5) + "."]
    lines.append("")
    return lines


def rewrite_baseline_section() -> None:
    rewrite_section(BASELINE_HEADING, baseline_section(), before=INTERVALS_HEADING)


INT8_PARAGRAPH = "`--precision int8` (the encoder's linear layers on int8"


def rewrite_speed_section() -> None:
    """Only the speed section (after a new `make bench` with unchanged weights). Its int8 paragraph is
    `scripts/int8-check.py`'s: where that check's results are not on this machine, the card's stays."""
    lines = speed_section(load("bench.json") or {})
    if lines and not any(line.startswith(INT8_PARAGRAPH) for line in lines):
        kept = [x for x in (WEIGHTS / "MODEL_CARD.md").read_text().splitlines() if x.startswith(INT8_PARAGRAPH)]
        lines += ["", kept[0]] if kept else []
    rewrite_section("## Speed", lines, before="## Known limits")


def rewrite_validation_section() -> None:
    """Only the validation section (after `haaqi evaluate` on more labels, same weights)."""
    rewrite_section(VALIDATION_HEADING, validation_section(by_split_results(load("evaluate.json") or [])),
                    before="## Against the previous release")


def rewrite_data_section() -> None:
    """Only the training-data section (after more labels: `haaqi dataset stats --json`)."""
    rewrite_section(DATA_HEADING, training_data_section(load("dataset.json") or {}), before="## Recipe")


MODELS_HEADING = "## Models"
RECIPE_HEADING = "## Recipe"


def models_section(manifest: dict) -> list[str]:
    """The shipped models: architecture, parameters, file and sha256 (weights/manifest.json)."""
    lines = [MODELS_HEADING, "", "| model | architecture | parameters | file | sha256 |", "|---|---|---|---|---|"]
    for name, info in manifest.items():
        size = (WEIGHTS / info["file"]).stat().st_size / 1e6
        enc = info["config"]["encoder"]
        desc = (f"BEATs {enc['encoder_layers']} layers x {enc['encoder_embed_dim']}"
                if info["arch"] == "haaqinet" else
                f"conv front end + {enc['encoder_layers']} layers x {enc['encoder_embed_dim']}")
        lines.append(f"| `{name}` | {info['arch']}: {desc} | {info['n_params']:,} | "
                     f"{info['file']} ({size:.1f} MB) | `{info['sha256'][:16]}…` |")
    if "teacher" in manifest and "distilled" in manifest:
        ratio = manifest["distilled"]["n_params"] / manifest["teacher"]["n_params"]
        lines += ["", f"The student has {ratio:.0%} of the teacher's parameters."]
    return lines


def recipe_section(manifest: dict) -> list[str]:
    """Each shipped model's recorded recipe: where it started, what it saw, the command behind it."""
    lines = [
        RECIPE_HEADING,
        "",
        "Each model's line gives the command its recorded recipe stands for, then what it did; "
        "`bash scripts/train-models.sh` chains training, distillation and `haaqi evaluate` for a full rebuild."
        + snapshot_note(manifest),
        "",
    ]
    for name, info in manifest.items():
        recipe = info.get("training", {}).get("recipe", {})
        warm = info.get("training", {}).get("warm_start")
        if warm and warm.get("graft"):  # registry.graft_tensors: one model with another's tensors under a prefix
            graft = warm["graft"]
            start = (f"warm-started from `{warm['source']}` (sha256 `{warm['sha256'][:12]}…`: the model "
                     f"`{graft['base']['source']}` (sha256 `{graft['base']['sha256'][:12]}…`) with its "
                     f"`{graft['prefix']}*` tensors from `{graft['donor']['source']}` (sha256 "
                     f"`{graft['donor']['sha256'][:12]}…`), `scripts/graft-tensors.py`; "
                     f"{warm['tensors_copied']} of {warm['tensors']} tensors copied)")
        elif warm:  # recorded since the warm start's sha256 was: a path names other bytes after a release
            start = (f"warm-started from `{warm['source']}` (sha256 `{warm['sha256'][:12]}…`, the previous release; "
                     f"{warm['tensors_copied']} of {warm['tensors']} tensors copied)")
        else:
            start = (f"warm-started from `{recipe['init']}` (the previous release, matching tensors copied)"
                     if recipe.get("init") else "from scratch")
        training = info["training"]
        if "steps_run" in training:  # a time-limited run may stop inside its first epoch
            passes = training["steps_run"] * recipe.get("batch_size", 0) / max(training.get("items", 1), 1)
            length = f"{training['steps_run']} steps ({passes:.1f} passes over the data)"
        else:
            epochs = training.get("epochs_run", "–")
            length = f"{epochs} epoch{'' if epochs == 1 else 's'}"
        dropout = f", dropout {recipe['dropout']}" if recipe.get("dropout") is not None else ""
        lines.append(f"- `{name}`: {start}; {training.get('items', '–')} training clips, "
                     f"{length}{dropout}, AdamW lr {recipe.get('lr')}, batch "
                     f"{recipe.get('batch_size')}, time budget {recipe.get('max_minutes')} min on "
                     f"{recipe.get('threads') or 2} CPU thread(s){design_note(info)}; {selection_text(info)}. "
                     f"Command: {train_command(info)}.")
    lines += ["- Teacher loss: clip MSE + 0.5 x frame MSE (every frame score is pulled to the clip label), "
              "plus the options in its line above.", student_loss_line(manifest.get("distilled", {}))]
    return lines


def rewrite_release_sections() -> None:
    """The sections new weights change (models, recipe, validation, against the previous release), from
    weights/manifest.json, evaluate.json and evaluate-previous.json; the others stay as their own
    commands made them."""
    missing = [name for name in ("evaluate.json", "evaluate-previous.json") if load(name) is None]
    if missing:
        raise SystemExit(f"--release-only needs {RESULTS}/{' and '.join(missing)} (haaqi evaluate --json)")
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())["models"]
    rewrite_section(MODELS_HEADING, models_section(manifest), before=DATA_HEADING)
    rewrite_section(RECIPE_HEADING, recipe_section(manifest), before=VALIDATION_HEADING)
    rewrite_validation_section()
    rewrite_section("## Against the previous release", previous_release_section()[1:],
                    before="## Ablation and learning curve")
    rewrite_limits_section()


def rewrite_limits_section() -> None:
    """Only the known-limits section (its biases and clean-music figures come from evaluate.json)."""
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())["models"]
    evaluation = by_split_results(load("evaluate.json") or [])
    rewrite_section(LIMITS_HEADING, limits_section(manifest, evaluation.get("validation-real")
                                                   or evaluation.get("validation") or {}), before=None)


def level_paragraph(manifest: dict) -> str:
    """The level definition (haaqicli.util.levels) and the levels the models were trained at (their metadata)."""
    from haaqicli.util.levels import trained_spl_range

    ranges = sorted({trained_spl_range(info.get("training")) for info in manifest.values()})
    trained = ", ".join(f"{lo:g} dB SPL" if lo == hi else f"{lo:g}-{hi:g} dB SPL" for lo, hi in ranges)
    return ("**Level**: the labels present the reference at L dB SPL (its RMS over all channels) and the "
            "processed signal keeps its level relative to the reference; `haaqi score --spl L` and the API's "
            "`spl=L` hear the file's own RMS at L, assuming the original was at the same level, and "
            "`haaqi reference --spl L` sets the reference's level. These models were trained on labels at "
            f"{trained} (`training.spl_range` in weights/manifest.json); a prediction at a level outside "
            "that range warns, as it is an extrapolation.")


PRIOR_HEADING = "## Content prior: musicnn (not shipped)"


def content_prior_section() -> list[str]:
    """What the optional musicnn content prior is, where it comes from and its licence (static text:
    its ablation row has not been run, and no shipped model uses it)."""
    return [
        "", PRIOR_HEADING, "",
        "`haaqi train`/`distill --content-prior musicnn` (and `haaqi ablate --rows ...,musicnn`) add a frozen "
        "pretrained music encoder beside the model's own full-band front end: its 200-d penultimate "
        "embedding of each 3-s patch joins the HAAQI head's BLSTM input (LayerNorm, linear, GELU). No shipped "
        "model uses it; its ablation row has not been run (the frozen prior's forward pass, about 13x the "
        "student's, would take most of a row's time budget on 2 cores), and its weights enter `weights/` only "
        "if that row shows it helps on validation-real.",
        "",
        "- Source: musicnn 0.1.0 (PyPI wheel, sha256 `f38a4890c648c1dd…`), checkpoint `MSD_musicnn` (Pons & "
        "Serra 2019, trained on the Million Song Dataset's 50 tags), converted by `make musicnn` "
        "(`scripts/convert-musicnn.py`, no TensorFlow) to `data/musicnn/MSD_musicnn.safetensors`: 787,159 "
        "parameters (+4,920 batch-norm statistics), 3.2 MB, sha256 pinned in `haaqicli.models.musicnn`.",
        "- Licence (ISC): Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed "
        "by Jordi Pons (www.jordipons.me). Permission to use, copy, modify, and/or distribute this software for "
        "any purpose with or without fee is hereby granted, provided that the above copyright notice and this "
        "permission notice appear in all copies. THE SOFTWARE IS PROVIDED \"AS IS\" AND THE AUTHOR DISCLAIMS "
        "ALL WARRANTIES WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND "
        "FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL "
        "DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF "
        "CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR "
        "PERFORMANCE OF THIS SOFTWARE.",
        "- What it sees: the window resampled to 16 kHz (nothing above 8 kHz), a 96-band mel, non-overlapping "
        "3-s patches (two per 6-s window; each model frame takes the embedding of the patch holding its "
        "centre). It was trained on recorded music for tags, not quality.",
        "- Fidelity: `scripts/check-musicnn.py` runs the original package (TensorFlow 2.15 in a throwaway "
        "environment) and the port on the same clips: tags and embedding within 4e-6 relative on the same mel "
        "patches, 1.2e-5 from audio (the float16 mel steps add up to 2e-4 on the max-pooled features).",
        "- Cost: about 13x the distilled model's and 1.7x the teacher's forward time per window "
        "(`scripts/check-musicnn.py --time`, same run, 2 threads; ~2.8 GMAC per 6-s window), so a model "
        "with it would miss the speed targets (distilled >= 400x, teacher >= 100x real time) as it stands.",
    ]


LIMITS_HEADING = "## Known limits"


def limits_section(manifest: dict, evaluation: dict) -> list[str]:
    """What the shipped models cannot do, with the biases and clean/normal figures of `evaluation`."""
    items = max((info.get("training", {}).get("items", 0) for info in manifest.values()), default=0)
    return [
        LIMITS_HEADING, "",
        f"- Trained on 2 CPU cores, each run within the time budget above, on at most {items:,} labelled "
        "clips: far less data and compute than HAAQI-Net had. Compare the validation table with the "
        "project's targets (teacher LCC/SRCC >= 0.95, MSE <= 0.005; distilled >= 0.93, <= 0.008) and the "
        "paper's figures (measured on their own data).",
        "- The BEATs teacher costs many times more per training step than the student (see the recipe's "
        "epochs), so on this CPU it sees far fewer epochs; this is why the student can score above its teacher.",
        *biased_families(evaluation),
        *clean_normal_limit(evaluation),
        *band_limited_limit(evaluation),
        "- What no split covers: sung vocals (the corpus is instrumental: game soundtracks, rendered "
        "MIDI, tracker modules and scores, real drum and loop recordings), speech, live concert "
        "recordings, and hearing-aid processing beyond linear NAL-R. Judge the model on such material "
        "with `haaqi reference` (exact HAAQI) before trusting it for decisions.",
        "- HAAQI itself (equalisation=1) scores an *unamplified* signal low for a listener with hearing "
        "loss, because its reference is NAL-R amplified: predictions follow that convention.",
        "- Scores of a window shorter than 6 s (short files) are extrapolated from training on 6-s clips.",
        "- Clean music scores below 1 with hearing loss: HAAQI compares with a normal-hearing listener, so "
        "each profile has a ceiling, the exact HAAQI of clean music against itself (`haaqi profiles`: "
        "normal 0.97, mild 0.64, moderate 0.46; README, \"The scale\"). The models predict on that scale; "
        "gates must sit below the ceiling (`examples/policy.toml` passes clean music with `distilled` and "
        "with the exact HAAQI: `tests/test_policy_examples.py`).",
        "- Across x86-64 CPUs the scores differ in the third or fourth decimal: for these weights up to 2.4e-4 "
        "(teacher; distilled 3.1e-6) between the ATen instruction sets on one AMD EPYC "
        "(`ATEN_CPU_CAPABILITY=default|avx2|avx512`), and up to 1.06e-3 (teacher; distilled 3.3e-5) on an Intel "
        "Xeon against the AMD pins. `tests/test_shipped_models.py` pins "
        "scores to 3e-3 and the fbank front end to 1e-4; the weights' sha256 catches any change to them.",
        "- An installed wheel carries these files as the package data `haaqicli/weights/` "
        "(`HAAQI_WEIGHTS=DIR` selects others).",
        "",
    ]


def main() -> None:
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())["models"]
    dataset = load("dataset.json") or {}
    results = load("evaluate.json") or []
    by_split = by_split_results(results)
    evaluation = by_split.get("validation-real") or by_split.get("validation") or {}
    bench = load("bench.json") or {}
    lines = ["# Model card: haaqi `teacher` and `distilled`", ""]
    lines += [
        "Non-intrusive predictors of HAAQI (Kates & Arehart 2016) for music, in the HAAQI-Net design "
        "(Wisnu et al. 2024): encoder features -> softmax-weighted sum of layers -> adapter -> audiogram "
        "concatenated to every frame -> BLSTM -> multi-head attention -> frame scores and an "
        "attention-pooled clip score (sigmoid). Trained here on CPU (no pretrained BEATs or HAAQI-Net "
        "weights were available); the recipe below says which run started from which weights.",
        "",
        "**Predicts**: pyclarity-compatible HAAQI (`equalisation=1`, the reference presented at L dB SPL, "
        "65 dB SPL by default, `--spl`; see README.md, Levels) of 6-s windows of mono music at 24 kHz, calibrated so RMS 0.1 is 65 dB SPL, "
        "for one ear's audiogram (8 values, dB HL at 250, 500, 1k, 2k, 3k, 4k, 6k, 8k Hz). "
        "`haaqi score` windows, calibrates and aggregates files.",
        "",
        level_paragraph(manifest),
        "",
    ]
    lines += models_section(manifest) + [""] + training_data_section(dataset) + [""] + recipe_section(manifest) + [""]

    lines += validation_section(by_split)

    lines += previous_release_section()
    lines += ablation_section()
    if load(BASELINE_PARTS[0][2]):
        lines += baseline_section()
    lines += intervals_section()
    lines += speed_section(bench)
    lines += content_prior_section()

    lines += [""] + limits_section(manifest, evaluation)
    write_card("\n".join(lines))
    print("\n".join(lines))


PARTS = {"--speed-only": rewrite_speed_section,
         "--intervals-only": rewrite_intervals_section,
         "--validation-only": rewrite_validation_section,
         "--data-only": rewrite_data_section,
         "--baseline-only": rewrite_baseline_section,
         "--release-only": rewrite_release_sections,
         "--limits-only": rewrite_limits_section,
         "--prior-only": lambda: rewrite_section(PRIOR_HEADING, content_prior_section(), before="## Known limits")}


if __name__ == "__main__":
    import sys

    flags = sys.argv[1:]
    # Anything else (--help, a typo) prints the usage: the whole-card run rewrites sections from every
    # results file and must never start by accident.
    if len(flags) > 1 or any(flag not in PARTS for flag in flags):
        raise SystemExit(__doc__)
    (PARTS[flags[0]] if flags else main)()
