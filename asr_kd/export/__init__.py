"""On-device export of streaming students: ONNX chunk-step graphs (float / int8) and a torch-free runtime.

- ``asr_kd.export.onnx_export.export_onnx(model_dir, out, int8=False)`` (``asr-kd export``);
- ``asr_kd.export.runtime``: numpy + onnxruntime reference runtime (Kaldi fbank, chunk loop, greedy
  CTC, ``measure_rtf``); ``python -m asr_kd.export.runtime student.onnx a.wav``;
- ``asr_kd.export.evaluate_onnx``: ``asr-kd evaluate --model student.onnx``.

Nothing is imported here: the runtime must load without torch.
"""
