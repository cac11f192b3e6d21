"""A second decision set in voices the labeled set never has: ``data/dev_unl``.

Renders utterances 10000-10399 of the ``medium`` profile's ``train_unlabeled`` split (new speakers of
the labeled accents and the accent heard only in unlabeled audio; none of them is in the demo corpus,
whose unlabeled split stops at index 5999) with their true transcripts as ``text``. Same utterances,
bytes and ids as ``asr-kd prepare synth --profile medium`` would write, without synthesizing the other
31,600 utterances of that profile.

With ``--profile`` and ``--first``, the same kind of set for a corpus whose unlabeled split is larger:
``recipes/synth/scaling.sh`` takes the utterances right after its unlabeled pool (indices the pool
never reaches), so dev_unl stays disjoint from every audio the students hear.

Usage: python recipes/synth/local/make_dev_unl.py [--out data/dev_unl] [--first 10000] [--count 400]
                                                  [--profile medium|FILE.yaml]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from asr_kd.data.datadir import DataDir, write_data_dir
from data_prep.synth.generate import plan_split, plan_voices, render_utterance
from data_prep.synth.profiles import get_profile
from data_prep.synth.sentences import SentenceGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/dev_unl")
    ap.add_argument("--first", type=int, default=10000, help="first utterance index of the profile's train_unlabeled")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--profile", default="medium", help="synth profile (name or YAML) whose voices and conditions "
                    "to use; its train_unlabeled is extended to reach --first + --count")
    args = ap.parse_args()
    profile = get_profile(args.profile)
    need = args.first + args.count
    if profile.sizes.train_unlabeled < need:
        profile = profile.model_copy(update={"sizes": profile.sizes.model_copy(update={"train_unlabeled": need})})
    voices = plan_voices(profile, seed=0)
    split = "train_unlabeled"
    specs = plan_split(profile, 0, split, voices.split_voices(split), SentenceGenerator())
    specs = specs[args.first:args.first + args.count]
    audio_dir = Path(args.out).resolve()  # wavs under OUT/audio/, as prepare synth lays them out
    samples = {}
    for spec in specs:
        res = render_utterance(spec, str(audio_dir))
        if res.error is not None:
            raise SystemExit(f"{spec.utt_id}: {res.error}")
        samples[spec.utt_id] = res.num_samples
    data = DataDir(
        wav_scp={s.utt_id: str(s.wav_path(audio_dir)) for s in specs},
        utt2spk={s.utt_id: s.speaker for s in specs},
        text={s.utt_id: s.text for s in specs},
        utt2dur={s.utt_id: samples[s.utt_id] / s.sample_rate for s in specs},
    )
    write_data_dir(data, Path(args.out))
    print(f"wrote {len(specs)} utterances to {args.out}")


if __name__ == "__main__":
    main()
