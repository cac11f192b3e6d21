"""CTC decoding: greedy, beam search, and exact chunk-streaming recognition.

``StreamingRecognizer`` lives in ``asr_kd.decode.streaming`` (it needs a loaded model dir).
"""

from asr_kd.decode.beam import BeamSearchDecoder, prefix_beam_search
from asr_kd.decode.greedy import GreedyCTCStream, greedy_ctc

__all__ = ["BeamSearchDecoder", "GreedyCTCStream", "greedy_ctc", "prefix_beam_search"]
