"""Posteriorgram PNG of one utterance of a soft-target store.

Same as ``asr-kd targets plot STORE --utt ID --out plot.png [--tokens tokens.txt]``::

    python tools/plot_posteriorgram.py STORE --utt ID --out plot.png [--tokens tokens.txt]
"""

from __future__ import annotations

import sys

from asr_kd.targets.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
