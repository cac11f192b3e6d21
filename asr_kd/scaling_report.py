"""``asr-kd report --scaling EXP``: the scaling study's table, JSON and plot (``recipes/synth/scaling.sh``).

Reads the study's experiment dir:

- ``teacher/eval_{dev,dev_unl,test}/wer.json``;
- ``baseline_s<seed>/``: the averaged final model (``eval_*``) and its best dev snapshot
  (``eval_best_*``, from ``asr-kd evaluate --checkpoint best``). Each seed is scored by the one of the
  two that dev prefers: the best the student becomes alone;
- ``kd_<M>x_s<seed>/eval_*``: one KD point per multiple ``M`` of the labeled hours (``kd_0x``: KD on the
  labeled audio alone), its unlabeled hours from the data dir it trained on (its ``config.yaml``);
- ``.done/<stage>``: each stage's wall seconds.

WERs are in percent. A point's or the baseline's ``test_wer`` is the mean over its seeds; ``seeds``
lists each seed's figures and ``spread`` is max - min of test WER over them. ``kd_vs_baseline`` is
KD / baseline test WER (below 1 is a gain), ``kd_vs_teacher`` KD / teacher.

Writes ``scaling.md`` (``--out``), ``scaling.json`` and ``scaling.png`` beside it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from asr_kd.errors import AsrKdError
from asr_kd.report import condition_wer

SETS = ("dev", "dev_unl", "test")
STAGES = ("prepare", "subsets", "teacher", "eval_teacher", "label", "students", "eval", "report")
POINT_DIR = re.compile(r"^kd_(?P<mult>[0-9.]+)x_s(?P<seed>\d+)$")
BASELINE_DIR = re.compile(r"^baseline_s(?P<seed>\d+)$")
CONVERGED_SHARE = 0.2
"""The largest point has converged when its dev WER no longer improves over this last share of the steps."""


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class _Corpus:
    """The test speakers' conditions and the data dirs' hours."""

    def __init__(self, data_root: Path | None):
        self.conditions: dict[str, str] = {}
        self.utt2spk: dict[str, str] = {}
        if data_root is not None:
            manifest = _read(data_root / "synth_manifest.json") or {}
            self.conditions = manifest.get("test_conditions") or {}
            path = data_root / "test" / "utt2spk"
            if path.is_file():
                self.utt2spk = dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
                self.utt2spk = {u: s.strip() for u, s in self.utt2spk.items()}

    def by_condition(self, eval_dir: Path) -> dict[str, float]:
        return condition_wer(eval_dir / "per_utt.tsv", self.conditions, self.utt2spk) if self.conditions else {}


def hours_of(data_dir: Path) -> float | None:
    """Hours of a data dir from its ``utt2dur`` (None when it has none)."""
    path = data_dir / "utt2dur"
    if not path.is_file():
        return None
    return sum(float(line.split()[1]) for line in path.read_text().splitlines() if line.strip()) / 3600


def _trained_on(model_dir: Path) -> tuple[list[str], list[str]]:
    """The labeled and unlabeled data dirs of a model dir's run (its resolved ``config.yaml``). A relative
    path was relative to where training ran (the recipe runs from the repository root): it is looked up
    from the working directory, then from each folder above the model dir."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text()) if (model_dir / "config.yaml").is_file() else {}
    data = (config or {}).get("data") or {}
    roots = [Path.cwd(), *model_dir.resolve().parents]

    def locate(d: str) -> str:
        if Path(d).is_absolute():
            return d
        return next((str(r / d) for r in roots if (r / d).is_dir()), d)

    return [locate(d) for d in data.get("train") or []], [locate(d) for d in data.get("unlabeled") or []]


def _scores(model_dir: Path, prefix: str, corpus: _Corpus) -> dict | None:
    """WERs of one scored variant of a model dir (``eval_*`` or ``eval_best_*``); None when dev is missing."""
    found = {s: _read(model_dir / f"{prefix}{s}" / "wer.json") for s in SETS}
    if found["dev"] is None:
        return None
    out = {f"{s}_wer": (found[s] or {}).get("wer") for s in SETS}
    out["test_wer_by_condition"] = corpus.by_condition(model_dir / f"{prefix}test")
    out["checkpoint"] = found["dev"].get("checkpoint")
    return out


def _checkpoint_step(model_dir: Path, name: str | None) -> int | None:
    """The optimizer step of a scored checkpoint (``dev-step-N.pt``: N; an epoch checkpoint: its saved
    step) or of the final model (``meta.json`` steps) when ``name`` is None."""
    if name is None:
        return (_read(model_dir / "meta.json") or {}).get("steps")
    match = re.match(r"dev-step-(\d+)\.pt$", name)
    if match:
        return int(match.group(1))
    path = model_dir / "checkpoints" / name
    if path.is_file():
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True).get("step", 0)) or None
    return None


def dev_curve(model_dir: Path) -> list[tuple[int, float]]:
    """(step, dev WER %) of a run's dev evaluations (``metrics.csv``), by step."""
    from asr_kd.train.metrics import read_metrics

    path = model_dir / "metrics.csv"
    if not path.is_file():
        return []
    points = {int(r["step"]): float(r["dev_wer"]) for r in read_metrics(path) if r["kind"] == "dev" and r["dev_wer"]}
    return sorted(points.items())


def convergence(model_dir: Path, final_dev: float | None) -> dict:
    """Whether a run's dev WER still improved over its last ``CONVERGED_SHARE`` of steps: the best dev
    WER before that window against the best inside it (the final averaged model included)."""
    curve = dev_curve(model_dir)
    steps = (_read(model_dir / "meta.json") or {}).get("steps") or (curve[-1][0] if curve else 0)
    start = steps * (1 - CONVERGED_SHARE)
    before = [w for s, w in curve if s <= start]
    window = [w for s, w in curve if s > start] + ([final_dev] if final_dev is not None else [])
    if not before or not window:
        return {"steps": steps, "window_start": start, "converged": None, "curve": curve}
    best_before, best_window = min(before), min(window)
    gain = (best_before - best_window) / best_before * 100 if best_before else 0.0
    return {"steps": steps, "window_start": start, "best_dev_before": best_before, "best_dev_in_window": best_window,
            "relative_gain_in_window": gain, "converged": gain <= 1.0, "curve": curve}


def _aggregate(runs: list[dict]) -> dict:
    """Mean of each WER over seeds, the seeds themselves and the test-WER spread."""
    out: dict = {}
    for key in ("test_wer", "dev_wer", "dev_unl_wer"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = _mean(values)
    conds = sorted({c for r in runs for c in r.get("test_wer_by_condition", {})})
    out["test_wer_by_condition"] = {c: _mean([r["test_wer_by_condition"][c] for r in runs if c in r["test_wer_by_condition"]])
                                    for c in conds}
    tests = [r["test_wer"] for r in runs if r.get("test_wer") is not None]
    out["spread"] = max(tests) - min(tests) if len(tests) > 1 else None
    out["seeds"] = runs
    return out


def collect_scaling(exp: Path, data_root: Path | None) -> dict:
    """Everything ``scaling.json`` holds (see the module docstring)."""
    corpus = _Corpus(data_root)
    teacher_dir = exp / "teacher"
    teacher = _scores(teacher_dir, "eval_", corpus)
    if teacher is None or teacher.get("test_wer") is None:
        raise AsrKdError(f"{teacher_dir}: no eval_dev/eval_test wer.json; run recipes/synth/scaling.sh --stage 3 first")
    teacher["params"] = (_read(teacher_dir / "eval_test" / "wer.json") or {}).get("params")
    labeled_dirs = _trained_on(teacher_dir)[0]
    baselines, points = [], {}
    for d in sorted(p for p in exp.iterdir() if p.is_dir()):
        if BASELINE_DIR.match(d.name):
            final = _scores(d, "eval_", corpus)
            best = _scores(d, "eval_best_", corpus)
            if final is None:
                continue
            chosen = best if best is not None and best["dev_wer"] is not None and best["dev_wer"] < final["dev_wer"] else final
            chosen = dict(chosen, seed=int(BASELINE_DIR.match(d.name).group("seed")), model=d.name,
                          scored="best dev snapshot" if chosen is best else "averaged final model",
                          step=_checkpoint_step(d, chosen["checkpoint"]),
                          final_dev_wer=final["dev_wer"], final_test_wer=final["test_wer"])
            baselines.append(chosen)
        elif POINT_DIR.match(d.name):
            m = POINT_DIR.match(d.name)
            scores = _scores(d, "eval_", corpus)
            if scores is None:
                continue
            labeled, unlabeled = _trained_on(d)
            hours = [hours_of(Path(u)) for u in unlabeled]
            scores.update(seed=int(m.group("seed")), model=d.name, steps=(_read(d / "meta.json") or {}).get("steps"),
                          params=(_read(d / "eval_test" / "wer.json") or {}).get("params"))
            point = points.setdefault(m.group("mult"), {"multiple": float(m.group("mult")), "runs": [],
                                                        "unlabeled_hours": sum(h or 0.0 for h in hours),
                                                        "unlabeled_dirs": unlabeled})
            point["runs"].append(scores)
            if not labeled_dirs:
                labeled_dirs = labeled
    if not baselines:
        raise AsrKdError(f"{exp}: no baseline_s*/eval_dev/wer.json; run recipes/synth/scaling.sh --stage 6 first")
    baseline = _aggregate(baselines)
    baseline["step"] = [b["step"] for b in baselines]
    rows = []
    for key in sorted(points, key=lambda k: points[k]["multiple"]):
        p = points[key]
        kd = _aggregate(sorted(p["runs"], key=lambda r: r["seed"]))
        kd["kd_vs_baseline"] = kd["test_wer"] / baseline["test_wer"] if kd["test_wer"] and baseline["test_wer"] else None
        kd["kd_vs_teacher"] = kd["test_wer"] / teacher["test_wer"] if kd["test_wer"] else None
        kd["dev_kd_vs_baseline"] = kd["dev_wer"] / baseline["dev_wer"] if kd["dev_wer"] and baseline["dev_wer"] else None
        rows.append({"multiple": p["multiple"], "unlabeled_hours": p["unlabeled_hours"], "unlabeled_dirs": p["unlabeled_dirs"],
                     "kd": kd})
    if rows:
        largest = max(rows, key=lambda r: r["unlabeled_hours"])
        run0 = min(largest["kd"]["seeds"], key=lambda r: r["seed"])
        largest["convergence"] = convergence(exp / run0["model"], run0.get("dev_wer"))
    seconds = {}
    done = exp / ".done"
    if done.is_dir():
        for marker in sorted(done.iterdir()):
            lines = marker.read_text().splitlines()
            if len(lines) > 1 and lines[1].startswith("seconds "):
                seconds[marker.name] = int(lines[1].split()[1])
    return {"labeled_hours": sum(hours_of(Path(d)) or 0.0 for d in labeled_dirs if "_sp" not in Path(d).name)
            or (hours_of(data_root / "train_labeled") if data_root else None),
            "teacher": teacher, "baseline": baseline, "points": rows, "seconds": seconds,
            "study_seconds": sum(seconds.get(stage, 0) for stage in STAGES)}


def _runs(s: dict) -> dict[str, int]:
    """Seconds of each student run (their own markers)."""
    return {k: v for k, v in s["seconds"].items() if POINT_DIR.match(k) or BASELINE_DIR.match(k)}


def _f(v, spec=".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render_scaling(s: dict, figure: str | None) -> str:
    t, b = s["teacher"], s["baseline"]
    lab = s.get("labeled_hours")
    lines = ["# The scaling study: KD's gain as the unlabeled audio grows", "",
             f"Labeled: {_f(lab)} h, fixed. WER % (greedy CTC). Baseline and KD figures are means over their seeds "
             "(spread: max - min test WER). KD / baseline below 1 is a gain.", "",
             "| model | unlabeled h | × labeled | test WER | dev WER | dev_unl WER | KD / baseline (test) | KD / teacher | seeds (test) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| teacher | – | – | {_f(t['test_wer'])} | {_f(t['dev_wer'])} | {_f(t['dev_unl_wer'])} | | | |",
             f"| baseline (best dev checkpoint) | 0 | 0 | {_f(b['test_wer'])} | {_f(b['dev_wer'])} | {_f(b['dev_unl_wer'])} | 1 | "
             f"{_f(b['test_wer'] / t['test_wer'] if b['test_wer'] else None, '.3f')} | "
             + ", ".join(_f(r["test_wer"]) for r in b["seeds"]) + " |"]
    for p in s["points"]:
        kd = p["kd"]
        mult = p["unlabeled_hours"] / lab if lab else None
        lines.append(f"| KD | {_f(p['unlabeled_hours'], '.1f')} | {_f(mult, '.1f')} | {_f(kd['test_wer'])} | {_f(kd['dev_wer'])} | "
                     f"{_f(kd['dev_unl_wer'])} | {_f(kd['kd_vs_baseline'], '.3f')} | {_f(kd['kd_vs_teacher'], '.3f')} | "
                     + ", ".join(_f(r["test_wer"]) for r in kd["seeds"]) + " |")
    conds = sorted({c for r in [t, b] + [p["kd"] for p in s["points"]] for c in r.get("test_wer_by_condition", {})})
    if conds:
        lines += ["", "## Test WER % by speaker condition", "", "| model | " + " | ".join(conds) + " |",
                  "|---|" + "---|" * len(conds)]
        for name, row in [("teacher", t), ("baseline", b)] + [(f"KD, {p['unlabeled_hours']:.1f} h", p["kd"]) for p in s["points"]]:
            lines.append(f"| {name} | " + " | ".join(_f(row["test_wer_by_condition"].get(c)) for c in conds) + " |")
    lines += ["", "## Baseline runs", "", "| run | scored | step | dev WER | test WER | averaged final: dev / test |", "|---|---|---|---|---|---|"]
    for r in b["seeds"]:
        lines.append(f"| {r['model']} | {r['scored']} | {_f(r['step'], 'd')} | {_f(r['dev_wer'])} | {_f(r['test_wer'])} | "
                     f"{_f(r['final_dev_wer'])} / {_f(r['final_test_wer'])} |")
    conv = next((p.get("convergence") for p in s["points"] if p.get("convergence")), None)
    if conv and conv.get("converged") is not None:
        lines += ["", f"Convergence of the largest point (seed {min(r['seed'] for r in s['points'][-1]['kd']['seeds'])}): best dev WER "
                  f"{_f(conv['best_dev_before'])} % up to step {conv['window_start']:.0f}, {_f(conv['best_dev_in_window'])} % in the "
                  f"last {CONVERGED_SHARE:.0%} of its {conv['steps']} steps ({conv['relative_gain_in_window']:+.1f} % relative gain; "
                  f"{'converged' if conv['converged'] else 'still improving'}: ≤ 1 % counts as converged)."]
    if s["seconds"]:
        lines += ["", "## Wall time per stage", "", "| stage | minutes |", "|---|---|"]
        stages = [k for k in STAGES if k in s["seconds"]] + sorted(set(s["seconds"]) - set(STAGES) - set(_runs(s)))
        lines += [f"| {k} | {s['seconds'][k] / 60:.1f} |" for k in stages]
        lines.append(f"| **study (stages 0–6)** | **{s['study_seconds'] / 60:.1f}** |")
        runs = _runs(s)
        if runs:
            lines += ["", "Each student (two side by side): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in runs.items()) + "."]
    if figure:
        lines += ["", f"![scaling]({Path(figure).name})"]
    return "\n".join(lines) + "\n"


def plot_scaling(s: dict, out: Path) -> Path | None:
    """Test WER against unlabeled hours (log axis): KD points with their seed range, the teacher and the
    best baseline as lines; a second panel per speaker condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in s["points"] if p["unlabeled_hours"] > 0 and p["kd"]["test_wer"] is not None]
    if not points:
        return None
    conds = sorted({c for p in points for c in p["kd"].get("test_wer_by_condition", {})})
    fig, axes = plt.subplots(1, 2 if conds else 1, figsize=(11 if conds else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    hours = [p["unlabeled_hours"] for p in points]
    wer = [p["kd"]["test_wer"] for p in points]
    lo = [p["kd"]["test_wer"] - min(r["test_wer"] for r in p["kd"]["seeds"]) for p in points]
    hi = [max(r["test_wer"] for r in p["kd"]["seeds"]) - p["kd"]["test_wer"] for p in points]
    ax.errorbar(hours, wer, yerr=[lo, hi], marker="o", capsize=4, label="KD student (seed range)")
    ax.axhline(s["teacher"]["test_wer"], color="tab:green", linestyle="--", label="teacher")
    b = s["baseline"]
    ax.axhline(b["test_wer"], color="tab:red", linestyle="--", label="baseline, best dev checkpoint")
    seeds = [r["test_wer"] for r in b["seeds"]]
    if len(seeds) > 1:
        ax.axhspan(min(seeds), max(seeds), color="tab:red", alpha=0.12)
    ax.set_xscale("log")
    ax.set_xticks(hours, [f"{h:.1f}" for h in hours])
    ax.minorticks_off()
    ax.set_xlabel(f"unlabeled hours (labeled fixed at {s.get('labeled_hours') or 0:.1f} h)")
    ax.set_ylabel("test WER %")
    ax.set_title("KD against unlabeled audio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if conds:
        ax2 = axes[0][1]
        for c in conds:
            line = ax2.plot(hours, [p["kd"]["test_wer_by_condition"].get(c) for p in points], marker="o", label=f"KD: {c}")
            base = b["test_wer_by_condition"].get(c)
            if base is not None:
                ax2.axhline(base, color=line[0].get_color(), linestyle=":", alpha=0.8)
        ax2.set_xscale("log")
        ax2.set_xticks(hours, [f"{h:.1f}" for h in hours])
        ax2.minorticks_off()
        ax2.set_xlabel("unlabeled hours")
        ax2.set_ylabel("test WER %")
        ax2.set_title("by speaker condition (dotted: baseline)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_scaling_report(exp: Path, data_root: Path | None, out: Path) -> dict:
    """Write ``out`` (scaling.md), ``scaling.json`` and ``scaling.png`` beside it; returns the JSON dict."""
    study = collect_scaling(exp, data_root)
    figure = plot_scaling(study, out.with_name("scaling.png"))
    out.write_text(render_scaling(study, str(figure) if figure else None), encoding="utf-8")
    out.with_name("scaling.json").write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    return study
