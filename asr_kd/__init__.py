"""asr-kd: teacher-student (knowledge distillation) training of streaming speech recognizers.

Pipeline (one CLI subcommand per stage, see ``asr-kd --help``)::

    prepare -> train (teacher) -> label (Ray) -> train (student, KD) -> evaluate -> export
"""

__version__ = "0.1.0"
