"""``asr-kd report``: the results table of a recipe's experiment dir, with figures.

Reads ``<exp>/{teacher,baseline,kd}/eval_{dev,test}[_streaming]/wer.json`` (and the round-2
``teacher_r2``, ``kd_r2`` when present) and the model dirs, and
writes ``report.md``, ``results.json`` (keyed ``teacher``, ``baseline``, ``kd``, each with
``test_wer``, ``dev_wer`` in percent, ``params``, ``latency_ms``, ``rtf``, and ``test_wer_by_condition``
when the corpus labels its test speakers), ``training_curves.png`` and ``posteriorgram.png`` (one test
utterance through the teacher and both students).

``asr-kd report --scaling EXP --data DATA --out EXP/scaling.md`` reports the scaling study
(``asr_kd.scaling_report``). ``asr-kd report --ablation DIR --out ablation.md`` tabulates an ablation dir instead (one model dir per
variant, each with ``eval_dev/wer.json``, as ``recipes/synth/ablation.sh`` writes): dev WER/CER, the
change relative to its reference row (``teacher_ref``, ``kd_ref`` or ``baseline_ref``), steps, minutes
and the overrides the variant was trained with (from its ``env.json`` command line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = ("teacher", "baseline", "kd", "teacher_r2", "kd_r2")
"""Model dirs of an experiment dir; ``*_r2`` are the noisy-student round (``run.sh --rounds 2``), when run."""
LABELS = {"teacher": "teacher (full context)", "baseline": "baseline student (CTC, labeled only)", "kd": "KD student",
          "teacher_r2": "round-2 teacher (noisy student: labeled + its own soft targets)",
          "kd_r2": "round-2 KD student (from the round-2 teacher)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--exp", help="experiment dir holding teacher/, baseline/, kd/")
    group.add_argument("--ablation", help="ablation dir (recipes/synth/ablation.sh): one model dir per variant")
    group.add_argument("--scaling", metavar="EXP", help="the scaling study's exp dir (recipes/synth/scaling.sh): "
                       "scaling.md at --out, scaling.json and scaling.png beside it (asr_kd.scaling_report)")
    parser.add_argument("--data", help="data dir root (for the posteriorgram utterance from test/)")
    parser.add_argument("--out", required=True, help="report.md path; results.json and PNGs go beside it")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(exp: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name in MODELS:
        mdir = exp / name
        if not (mdir / "model.pt").exists():
            continue
        test = _read(mdir / "eval_test" / "wer.json") or {}
        dev = _read(mdir / "eval_dev" / "wer.json") or {}
        test_s = _read(mdir / "eval_test_streaming" / "wer.json")
        params = test.get("params")
        if params is None:
            import torch

            params = int(sum(v.numel() for v in torch.load(mdir / "model.pt", weights_only=True).values() if v.is_floating_point()))
        results[name] = {
            "test_wer": test.get("wer"), "test_cer": test.get("cer"), "dev_wer": dev.get("wer"),
            "test_wer_streaming": test_s.get("wer") if test_s else None,
            "params": params, "size_mb": (mdir / "model.pt").stat().st_size / 1e6,
            "latency_ms": (test_s or test).get("latency_ms"), "rtf": (test_s or test).get("rtf"),
            "rtf_offline": test.get("rtf"),
        }
    return results


def wer_by_condition(exp: Path, data_root: Path) -> dict[str, dict[str, float]]:
    """Test WER (%) per speaker condition for each model, when the corpus says which condition each test
    speaker is in (the synthetic corpus: ``synth_manifest.json`` ``test_conditions``, e.g. ``seen_voice``,
    ``new_voice``, ``unlabeled_accent``, ``unseen_accent``). Empty for corpora without that map.

    Errors and reference words are summed per condition from each model's ``eval_test/per_utt.tsv``.
    """
    manifest = _read(data_root / "synth_manifest.json") or {}
    conditions = manifest.get("test_conditions") or {}
    utt2spk_path = data_root / "test" / "utt2spk"
    if not conditions or not utt2spk_path.exists():
        return {}
    utt2spk = {u: s.strip() for u, s in (line.split(maxsplit=1) for line in utt2spk_path.read_text().splitlines()
                                          if line.strip())}
    table: dict[str, dict[str, float]] = {}
    for name in MODELS:
        per_utt = exp / name / "eval_test" / "per_utt.tsv"
        if per_utt.exists():
            table[name] = condition_wer(per_utt, conditions, utt2spk)
    return table


def condition_wer(per_utt: Path, conditions: dict[str, str], utt2spk: dict[str, str]) -> dict[str, float]:
    """WER (%) per speaker condition from one ``per_utt.tsv``: errors and reference words summed per
    condition (utterances of speakers outside ``conditions`` are left out); {} when the file is missing."""
    errors: dict[str, int] = {}
    words: dict[str, int] = {}
    if not per_utt.is_file():
        return {}
    for line in per_utt.read_text().splitlines()[1:]:
        utt, n, sub, dele, ins = line.split("\t")[:5]
        cond = conditions.get(utt2spk.get(utt, ""))
        if cond is None:
            continue
        errors[cond] = errors.get(cond, 0) + int(sub) + int(dele) + int(ins)
        words[cond] = words.get(cond, 0) + int(n)
    return {c: 100.0 * errors[c] / words[c] for c in sorted(words) if words[c]}


CONDITION_HELP = {
    "seen_voice": "speakers of the labeled set",
    "new_voice": "new speakers of the labeled accents",
    "unlabeled_accent": "an accent heard only in the unlabeled audio",
    "unseen_accent": "accents heard nowhere in training",
}


def render_conditions(table: dict[str, dict[str, float]]) -> list[str]:
    if not table:
        return []
    present = {c for row in table.values() for c in row}
    conds = [c for c in CONDITION_HELP if c in present] + sorted(present - set(CONDITION_HELP))
    lines = ["", "## Test WER % by speaker condition", "",
             "| model | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for name, row in table.items():
        lines.append(f"| {LABELS[name]} | " + " | ".join(_fmt(row.get(c)) for c in conds) + " |")
    lines.append("")
    lines.extend(f"- `{c}`: {CONDITION_HELP[c]}" for c in conds if c in CONDITION_HELP)
    return lines


def _fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def render(results: dict[str, dict], figures: list[str], by_condition: dict[str, dict[str, float]] | None = None) -> str:
    lines = ["# Results", "",
             "| model | test WER % | test CER % | streaming test WER % | dev WER % | params | size MB | latency ms | RTF (1 thread) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {LABELS[name]} | {_fmt(r['test_wer'])} | {_fmt(r['test_cer'])} | {_fmt(r['test_wer_streaming'])} | "
                     f"{_fmt(r['dev_wer'])} | {r['params'] / 1e6:.2f} M | {r['size_mb']:.1f} | "
                     f"{_fmt(r['latency_ms'], '.0f', 'full utt.')} | {_fmt(r['rtf'], '.4f')} |")
    t, b, k = (results.get(n, {}).get("test_wer") for n in ("teacher", "baseline", "kd"))
    lines.append("")
    if b is not None and k is not None and b > 0:
        lines.append(f"- KD vs baseline: **{100 * (b - k) / b:.1f} % relative WER reduction** "
                     f"(KD / baseline = {k / b:.3f}).")
    if t is not None and b is not None and k is not None and b != t:
        lines.append(f"- Share of the teacher–baseline gap that KD recovers: **{100 * (b - k) / (b - t):.0f} %** "
                     f"(KD / teacher = {k / t:.2f})." if t else "")
    if "teacher" in results and "kd" in results:
        lines.append(f"- Student parameters: {100 * results['kd']['params'] / results['teacher']['params']:.0f} % of the teacher's.")
    lines.append("- Latency is the student's algorithmic latency (chunk + fbank lookahead) plus the target delay it was "
                 "distilled with; RTF counts fbank, model and greedy decoding on one thread (streaming RTF for students).")
    lines.extend(render_conditions(by_condition or {}))
    lines.append("")
    for f in figures:
        lines.append(f"![{Path(f).stem}]({Path(f).name})")
    return "\n".join(lines) + "\n"


def plot_curves(exp: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr_kd.train.metrics import read_metrics

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    any_curve = False
    for name in MODELS:
        f = exp / name / "metrics.csv"
        if not f.exists():
            continue
        rows = read_metrics(f)
        tr = [(int(r["step"]), float(r["loss"])) for r in rows if r["kind"] == "train" and r["loss"]]
        dv = [(int(r["epoch"]), float(r["dev_wer"])) for r in rows if r["kind"] == "dev" and r["dev_wer"]]
        if tr:
            ax1.plot(*zip(*tr), label=name)
            any_curve = True
        if dv:
            ax2.plot(*zip(*dv), marker="o", label=name)
    if not any_curve:
        plt.close(fig)
        return None
    ax1.set(xlabel="step", ylabel="training loss", yscale="log")
    ax2.set(xlabel="epoch", ylabel="dev WER (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def posteriorgram_rows(posteriors: list, symbols: dict[int, str], max_rows: int = 40,
                       min_peak: float = 0.05) -> tuple[list[int], list[str]]:
    """Unit ids to plot (those whose posterior reaches ``min_peak`` in any of the ``(units, frames)``
    arrays, the ``max_rows`` strongest, in id order) and their symbols."""
    import numpy as np

    peak = np.max([p.max(axis=1) for p in posteriors], axis=0)
    rows = sorted(int(u) for u in np.argsort(-peak)[:max_rows] if peak[u] >= min_peak)
    rows = rows or list(range(min(max_rows, len(peak))))
    return rows, [symbols.get(u, str(u)) for u in rows]


def plot_posteriorgrams(exp: Path, data_root: Path, out: Path, max_rows: int = 40) -> Path | None:
    """Per-frame unit posteriors of the teacher and the students on the first test utterance.

    Rows are units, labeled with their symbols from the model dir's ``tokens.txt`` (``<blk>``, ``a``,
    ``▁`` for the word boundary): the units that reach a posterior of 0.05 in any of the models, at most
    ``max_rows`` (the strongest), the same rows in every panel so they can be compared.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.models.model_dir import load_model_dir
    from asr_kd.targets.plot import read_token_symbols

    test_dir = data_root / "test"
    names = [n for n in MODELS if (exp / n / "model.pt").exists()]
    if not test_dir.exists() or not names:
        return None
    data = read_data_dir(test_dir)
    utt = data.utt_ids[0]
    posts, shifts = {}, {}
    for name in names:
        loaded = load_model_dir(exp / name)
        wave = load_audio(data.source(utt), sample_rate=loaded.fbank_config.sample_rate)
        with torch.inference_mode():
            feats, lens = loaded.featurize(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            lp, _ = loaded.model(feats, lens)
        posts[name] = lp[0].exp().T.numpy()  # (units, frames)
        shifts[name] = loaded.model.frame_shift_ms
    symbols = read_token_symbols(exp / names[0] / "tokens.txt")
    rows, labels = posteriorgram_rows(list(posts.values()), symbols, max_rows)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 0.9 + 0.14 * len(rows) * len(names) + 0.4 * len(names)),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.imshow(posts[name][rows], aspect="auto", origin="lower", interpolation="nearest", cmap="magma", vmin=0, vmax=1)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel(name, fontsize=9)
        ax.set_xlabel(f"output frame ({shifts[name]:g} ms)", fontsize=8)
    title = f"posteriors of test utterance {utt}\n" + textwrap.shorten(f"\u201c{data.text[utt]}\u201d", width=110)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _reference(name: str) -> str:
    return name.split("_", 1)[0] + "_ref"


def _overrides(model_dir: Path) -> str:
    """The ``key=value`` overrides of the command that trained ``model_dir`` (data paths left out)."""
    env = _read(model_dir / "env.json") or {}
    argv = env.get("command") or env.get("argv") or []
    if isinstance(argv, str):
        argv = argv.split()
    # key=value overrides only: not options (--x=y; a DDP run before aa5ba9b recorded Ray's worker argv)
    keep = [a for a in argv if "=" in a and not a.startswith(("-", "data.", "units.from_model=", "kd.store="))]
    return " ".join(keep)


def collect_ablation(root: Path) -> list[dict]:
    """One row per variant dir of ``root`` that has ``eval_dev/wer.json``."""
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        dev = _read(d / "eval_dev" / "wer.json")
        if dev is None:
            continue
        meta = _read(d / "meta.json") or {}
        metrics = d / "metrics.csv"
        minutes = None
        if metrics.exists():
            import csv

            with open(metrics, newline="") as fh:
                walls = [float(r["wall_s"]) for r in csv.DictReader(fh) if r.get("wall_s")]
            minutes = max(walls) / 60 if walls else None
        rows.append({"name": d.name, "dev_wer": dev.get("wer"), "dev_cer": dev.get("cer"), "steps": meta.get("steps"),
                     "minutes": minutes, "overrides": _overrides(d)})
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        ref = by_name.get(_reference(r["name"]))
        if ref is not None and ref is not r and ref["dev_wer"] and r["dev_wer"] is not None:
            r["relative"] = (r["dev_wer"] - ref["dev_wer"]) / ref["dev_wer"] * 100
    return rows


def render_ablation(rows: list[dict]) -> str:
    lines = ["| variant | dev WER % | dev CER % | vs reference | steps | minutes | overrides |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r['relative']:+.1f} % rel." if "relative" in r else "reference" if r["name"].endswith("_ref") else "–"
        lines.append(f"| {r['name']} | {_fmt(r['dev_wer'])} | {_fmt(r['dev_cer'])} | {rel} | {_fmt(r['steps'], 'd')} | "
                     f"{_fmt(r['minutes'], '.1f')} | {r['overrides'] or '–'} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.scaling:
        from asr_kd.scaling_report import write_scaling_report

        write_scaling_report(Path(args.scaling), Path(args.data) if args.data else None, out)
        print(out.read_text())
        return 0
    if args.ablation:
        rows = collect_ablation(Path(args.ablation))
        if not rows:
            from asr_kd.errors import AsrKdError

            raise AsrKdError(f"{args.ablation}: no variant dir with eval_dev/wer.json; run recipes/synth/ablation.sh first")
        out.write_text(render_ablation(rows))
        print(out.read_text())
        return 0
    exp = Path(args.exp)
    results = collect(exp)
    if not results:
        from asr_kd.errors import AsrKdError

        raise AsrKdError(f"{exp}: no trained models (teacher/, baseline/, kd/) with eval results found")
    figures = []
    curves = plot_curves(exp, out.with_name("training_curves.png"))
    if curves:
        figures.append(str(curves))
    if args.data:
        post = plot_posteriorgrams(exp, Path(args.data), out.with_name("posteriorgram.png"))
        if post:
            figures.append(str(post))
    by_condition = wer_by_condition(exp, Path(args.data)) if args.data else {}
    for name, row in by_condition.items():
        if name in results:
            results[name]["test_wer_by_condition"] = row
    out.write_text(render(results, figures, by_condition))
    out.with_name("results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(out.read_text())
    return 0
