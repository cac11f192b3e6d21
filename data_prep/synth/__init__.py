"""The synthetic voice-assistant corpus (espeak-ng + flite), the default corpus of the demo recipe.

- ``sentences``: templates + word lists -> normalized transcripts (numbers spelled out);
- ``voices``: voices (= speakers) of the installed TTS engines, held-out accent families;
- ``tts``: one engine call -> 16 kHz float samples;
- ``augment``: silence trim, noise at an SNR, synthetic reverberation, level;
- ``profiles``: tiny / demo / large sizes and conditions;
- ``generate``: deterministic, parallel, resumable generation of the four data dirs.

Entry point: ``asr-kd prepare synth --profile demo --out DATA`` (``generate.generate_corpus``).
"""
