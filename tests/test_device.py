"""Which device a process trains on, and how a job of several tasks joins its group."""

import pytest
import torch

from sagan.training.distributed import DeviceError, backend_for, local_device

# What a task of a 4-task node sees, as SLURM and submitit leave it.
SLURM_ALL_VISIBLE = {"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
SUBMITIT_EXPORT = {"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "2"}
SUBMITIT_KEEPING_ALL = {"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4"}
SLURM_PER_TASK_GPU = {"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "6"}


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [
        (SLURM_ALL_VISIBLE, 4, "cuda:2"),
        (SUBMITIT_EXPORT, 1, "cuda:0"),  # today's trainer picked cuda:2, an invalid ordinal
        (SUBMITIT_KEEPING_ALL, 4, "cuda:2"),
        (SLURM_PER_TASK_GPU, 1, "cuda:0"),
        ({"SLURM_LOCALID": "0"}, 1, "cuda:0"),  # one task per node
        ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0"}, 1, "cuda:0"),
        ({}, 8, "cuda:0"),  # a single process on an 8-GPU machine
        ({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, 8, "cuda:3"),
    ],
)
def test_each_task_gets_its_own_gpu_however_the_gpus_are_made_visible(env, count, expected):
    assert local_device("cuda", env, count) == torch.device(expected)
    assert local_device("auto", env, count) == torch.device(expected)


def test_the_cpu_is_chosen_when_asked_or_when_no_gpu_is_visible():
    assert local_device("cpu", SLURM_ALL_VISIBLE, 4) == torch.device("cpu")
    assert local_device("auto", SUBMITIT_EXPORT, 0) == torch.device("cpu")


def test_cuda_without_a_visible_gpu_names_what_the_process_saw():
    with pytest.raises(DeviceError, match=r"no CUDA device is visible \(CUDA_VISIBLE_DEVICES=''\)"):
        local_device("cuda", {"CUDA_VISIBLE_DEVICES": ""}, 0)


def test_fewer_gpus_than_tasks_on_a_node_is_an_error_naming_rank_and_count():
    env = {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(DeviceError, match=r"local rank 3 of 4 tasks on this node sees 2 GPUs"):
        local_device("cuda", env, 2)


def test_the_backend_follows_the_jobs_gpus_and_the_runs_device():
    assert backend_for(4, "auto") == "nccl"
    assert backend_for(4, "cuda") == "nccl"
    assert backend_for(4, "cpu") == "gloo"
    assert backend_for(0, "auto") == "gloo"


def test_a_job_sets_its_gpu_before_joining_the_group_and_keeps_every_gpu_visible(monkeypatch):
    """submitit's export would narrow CUDA_VISIBLE_DEVICES to the local rank; the task
    keeps the node's list and binds NCCL to its own device before the group exists."""
    import submitit
    import torch.distributed as dist

    from slurm import job

    calls = []

    class FakeEnv:
        rank, world_size, local_rank, master_addr, master_port = 1, 4, 1, "node0", 29500

        def export(self, set_cuda_visible_devices=True):
            calls.append(("export", set_cuda_visible_devices))
            return self

    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", FakeEnv)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))

    def init_process_group(backend, timeout, device_id=None):  # torch's own takes device_id
        calls.append(("init", backend, device_id))

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    job._join_process_group(gpus_per_node=4, device="auto", timeout_s=300)
    cuda1 = torch.device("cuda", 1)
    assert calls == [("export", False), ("set_device", cuda1), ("init", "nccl", cuda1)]


def test_a_cpu_job_joins_with_gloo_and_touches_no_gpu(monkeypatch):
    import submitit
    import torch.distributed as dist

    from slurm import job

    calls = []

    class FakeEnv:
        rank, world_size, local_rank, master_addr, master_port = 0, 2, 0, "node0", 29500

        def export(self, set_cuda_visible_devices=True):
            return self

    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", FakeEnv)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set a GPU on a CPU job"))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    job._join_process_group(gpus_per_node=0, device="auto", timeout_s=300)
    assert [c["backend"] for c in calls] == ["gloo"] and "device_id" not in calls[0]
