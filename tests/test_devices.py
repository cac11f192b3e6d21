"""No silent CPU: a GPU that is present (or that Ray assigned) but unusable is an error naming the cause
and the fix, never a CPU run nobody asked for (``asr_kd.devices``). This machine has no GPU; the "present"
cases use a fake ``/proc`` + ``/dev`` tree."""

from __future__ import annotations

import pytest
import torch

from asr_kd.devices import DeviceError, nvidia_driver, nvidia_gpus, resolve_device
from factories import make_data, tiny_train_config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour when CUDA is unusable")


def _fake_gpu_machine(root, driver="470.82.01"):
    gpu = root / "proc/driver/nvidia/gpus/0000:3b:00.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text("Model: \t\t NVIDIA A100-SXM4-80GB\nIRQ:   \t\t 42\n")
    (root / "proc/driver/nvidia/version").write_text(
        f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Tue Sep  7 19:23:47 UTC 2021\n")
    (root / "dev").mkdir()
    (root / "dev/nvidia0").touch()
    return root


def test_auto_on_a_machine_without_gpus_is_the_cpu(tmp_path):
    assert nvidia_gpus(tmp_path) == [] and nvidia_driver(tmp_path) is None
    assert resolve_device("auto", root=tmp_path) == torch.device("cpu")
    assert resolve_device("cpu", root=_fake_gpu_machine(tmp_path / "gpu")) == torch.device("cpu")  # asked for


def test_auto_with_a_gpu_torch_cannot_use_is_an_error_naming_driver_and_build(tmp_path):
    root = _fake_gpu_machine(tmp_path)
    assert nvidia_gpus(root) == ["NVIDIA A100-SXM4-80GB"] and nvidia_driver(root) == "470.82.01"
    with pytest.raises(DeviceError) as info:
        resolve_device("auto", root=root)
    msg = str(info.value)
    assert "A100" in msg and "470.82.01" in msg and f"CUDA {torch.version.cuda}" in msg
    assert "device to cpu" in msg  # the way to run on CPU knowingly


def test_cuda_asked_without_a_gpu_is_an_error(tmp_path):
    with pytest.raises(DeviceError, match="no NVIDIA GPU is visible"):
        resolve_device("cuda", root=tmp_path)


def test_ddp_with_fewer_gpus_than_workers_is_an_error_not_a_cpu_run(tmp_path):
    from asr_kd.config import load_config
    from asr_kd.train.config import TrainConfig
    from asr_kd.train.distributed import _use_gpu

    data = make_data(tmp_path / "lab", 2, with_text=True)
    config = load_config(tiny_train_config(tmp_path / "conf.yaml", [str(data)], max_steps=2), TrainConfig,
                         ["train.device=auto"])
    with pytest.raises(DeviceError, match=r"--workers 4 but the Ray cluster has 2 GPU\(s\).*--workers 2"):
        _use_gpu(config, workers=4, cluster_gpus=2, use_gpu=None)
    assert _use_gpu(config, workers=2, cluster_gpus=2, use_gpu=None) is True
    assert _use_gpu(config, workers=2, cluster_gpus=0, use_gpu=None) is False  # a CPU cluster: CPU workers
    cpu = config.model_copy(deep=True)
    cpu.train.device = "cpu"
    assert _use_gpu(cpu, workers=4, cluster_gpus=2, use_gpu=None) is False  # asked for explicitly
