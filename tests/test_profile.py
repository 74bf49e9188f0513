"""Cluster profiles: bundled and file profiles, layered overrides, every error, sbatch."""

import shutil
from pathlib import Path

import pytest
import submitit
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from slurm.profile import (
    BUNDLED,
    Profile,
    ProfileError,
    bundled_profiles,
    check_cells,
    load_profile,
    sbatch_parameters,
)


def write(tmp_path, profile, name="p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def errors(*args, **kw) -> list[str]:
    with pytest.raises(ProfileError) as e:
        load_profile(*args, **kw)
    return str(e.value).splitlines()


def sbatch_script(profile: Profile, folder: Path) -> str:
    """The sbatch file submitit would write for one job with this profile."""
    params = sbatch_parameters(profile)
    if shutil.which("srun") is None:  # SlurmExecutor refuses to exist without srun
        return _make_sbatch_string(command="x", folder=folder, **params)
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**params)
    return ex._make_submission_file_text("x", "uid")


def test_bundled_profiles_are_listed_and_valid():
    assert bundled_profiles() == ["gpu", "local"]
    for name in bundled_profiles():
        assert load_profile(name).name == name


def test_local_profile_fits_the_localhost_cluster():
    p = load_profile("local")
    assert (p.name, p.partition, p.cpus_per_task, p.mem_gb, p.time) == ("local", "debug", 1, 1, 10)
    assert (p.array_parallelism, p.signal, p.signal_delay_s) == (4, "USR2", 30)
    assert (p.poll_s, p.vanish_grace_s, p.gpus_per_node) == (1.0, 30, 0)
    assert p.source.endswith("local.yaml")
    assert "name" not in p.model_dump() and "source" not in p.model_dump()


def test_the_collective_timeout_is_minutes_by_default_and_may_be_set():
    assert load_profile("local").collective_timeout_s == 300
    assert (
        load_profile("gpu", cli_overrides=["slurm.collective_timeout_s=900"]).collective_timeout_s
        == 900
    )


def test_gpu_profile_asks_for_one_gpu_for_a_day():
    p = load_profile("gpu")
    assert (p.nodes, p.gpus_per_node, p.cpus_per_task, p.mem_gb, p.time) == (1, 1, 10, 64, 1440)
    assert p.partition is None and p.setup == []


def test_a_profile_may_be_a_path(tmp_path):
    p = load_profile(str(write(tmp_path, {"partition": "gpu", "time": 30}, "mycluster.yaml")))
    assert (p.name, p.partition, p.time, p.nodes) == ("mycluster", "gpu", 30, 1)


def test_command_line_beats_grid_beats_file(tmp_path):
    path = write(tmp_path, {"time": 10, "qos": "low", "mem_gb": 2, "sbatch": {"mail-type": "END"}})
    p = load_profile(
        str(path),
        grid_overrides={"time": 20, "qos": "high", "sbatch": {"comment": "g"}},
        cli_overrides=["slurm.time=240", "slurm.sbatch.mail-type=FAIL", "slurm.setup=[a, b]"],
        grid_where="g.yaml",
    )
    assert (p.time, p.qos, p.mem_gb, p.setup) == (240, "high", 2, ["a", "b"])
    assert p.sbatch == {"mail-type": "FAIL", "comment": "g"}  # entries merge, later wins
    assert "g.yaml: executor.slurm (time, qos, sbatch.comment)" in p.source
    assert "command line (slurm.time, slurm.sbatch.mail-type, slurm.setup)" in p.source


@pytest.mark.parametrize("spelled", ["USR1", "SIGUSR1", "usr1", "sigusr1"])
def test_signal_is_normalised(spelled):
    assert load_profile("local", {"signal": spelled}).signal == "USR1"


@pytest.mark.parametrize(
    "profile,line",
    [
        ({"time": 0}, "time: Input should be greater than or equal to 1 (got 0)"),
        ({"partiton": "debug"}, "partiton: unknown key (got 'debug')"),
        ({"mem_gb": 0}, "mem_gb: Input should be greater than 0 (got 0)"),
        (
            {"nodes": "two"},
            "nodes: Input should be a valid integer, unable to parse string as an integer (got 'two')",
        ),
        ({"poll_s": 0}, "poll_s: Input should be greater than 0 (got 0)"),
        ({"max_requeues": -1}, "max_requeues: Input should be greater than or equal to 0 (got -1)"),
        (
            {"signal": "FOO"},
            "signal: not a signal name; use one of USR1, USR2, TERM, INT, HUP (got 'FOO')",
        ),
        (
            {"signal": "KILL"},
            "signal: SIGKILL cannot be caught, so the job could not checkpoint (got 'KILL')",
        ),
        (
            {"setup": "module load cuda"},
            "setup: Input should be a valid list (got 'module load cuda')",
        ),
        (
            {"sbatch": {"--mail-type": "END"}},
            "sbatch.--mail-type: write the key without leading dashes, as 'mail-type' (got '--mail-type')",
        ),
        (
            {"sbatch": {"time": 5}},
            "sbatch.time: set by the profile's own key 'time'; use that (got 'time')",
        ),
        ({"sbatch": {"x": [1]}}, "sbatch.x: must be a string, a number or true/false (got [1])"),
        (
            {"collective_timeout_s": 5},
            "collective_timeout_s: must be at least 60 seconds: a shorter wait fails healthy "
            "DDP jobs whose ranks reach a collective seconds apart (default 300) (got 5)",
        ),
        (
            {"collective_timeout_s": "2h"},
            "collective_timeout_s: Input should be a valid integer, unable to parse string as "
            "an integer (got '2h')",
        ),
    ],
)
def test_each_file_error_is_one_line_naming_file_key_and_value(tmp_path, profile, line):
    path = write(tmp_path, profile, "bad.yaml")
    assert errors(str(path)) == [f"{path}: {line}"]


def test_several_problems_in_one_file_give_several_lines(tmp_path):
    path = write(tmp_path, {"time": 0, "partiton": "debug", "signal": "FOO"}, "bad.yaml")
    assert errors(str(path)) == [
        f"{path}: time: Input should be greater than or equal to 1 (got 0)",
        f"{path}: signal: not a signal name; use one of USR1, USR2, TERM, INT, HUP (got 'FOO')",
        f"{path}: partiton: unknown key (got 'debug')",
    ]


def test_problems_of_every_layer_are_reported_together(tmp_path):
    path = write(tmp_path, {"time": 0}, "bad.yaml")
    assert errors(
        str(path),
        grid_overrides={"nodes": 0},
        cli_overrides=["slurm.cpus_per_task=0", "time=3", "slurm.poll_s"],
        grid_where="g.yaml",
    ) == [
        f"{path}: time: Input should be greater than or equal to 1 (got 0)",
        "g.yaml: executor.slurm: nodes: Input should be greater than or equal to 1 (got 0)",
        "command line: 'time=3': expected slurm.KEY=VALUE, e.g. slurm.time=240",
        "command line: 'slurm.poll_s': expected slurm.KEY=VALUE, e.g. slurm.time=240",
        "command line: slurm.cpus_per_task: Input should be greater than or equal to 1 (got 0)",
    ]


def test_a_bad_value_hidden_by_an_override_is_still_reported(tmp_path):
    path = write(tmp_path, {"time": 0}, "bad.yaml")
    assert errors(str(path), cli_overrides=["slurm.time=5"]) == [
        f"{path}: time: Input should be greater than or equal to 1 (got 0)"
    ]


def test_grid_overrides_may_use_dotted_keys():
    p = load_profile("local", {"sbatch.mail-type": "END"})
    assert p.sbatch == {"mail-type": "END"}


def test_command_line_value_that_is_not_yaml_is_one_line():
    assert errors("local", cli_overrides=["slurm.setup=[a"]) == [
        "command line: slurm.setup: not valid YAML (got '[a')"
    ]


def test_missing_profile_names_the_bundled_ones():
    assert errors("gpux") == [
        "no such profile 'gpux' (bundled: gpu, local) and no file of that name"
    ]


def test_missing_profile_and_bad_override_are_reported_together():
    assert errors("gpux", cli_overrides=["slurm.time=0"]) == [
        "no such profile 'gpux' (bundled: gpu, local) and no file of that name",
        "command line: slurm.time: Input should be greater than or equal to 1 (got 0)",
    ]


def test_unparseable_yaml_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("time: 10\npartition: [debug\n")
    assert errors(str(path)) == [
        f"{path}: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"
    ]


def test_a_file_that_is_not_a_mapping_is_one_line(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- time: 10\n")
    assert errors(str(path)) == [
        f"{path}: expected a mapping of profile keys (got [{{'time': 10}}])"
    ]


def test_sbatch_parameters_of_the_local_profile():
    params = sbatch_parameters(load_profile("local"))
    assert params["partition"] == "debug" and params["mem"] == "1GB" and params["time"] == 10
    assert "gpus_per_node" not in params and "account" not in params
    assert params["additional_parameters"] == {"signal": "USR2@30"}
    assert params["setup"][:3] == [
        "export SUBMITIT_PREEMPT_SIGNAL=USR2",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "export MKL_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
    ]


def test_profile_setup_comes_after_the_thread_exports():
    params = sbatch_parameters(Profile(setup=["export OMP_NUM_THREADS=4"]))
    assert params["setup"][-1] == "export OMP_NUM_THREADS=4"
    assert params["setup"].index("export OMP_NUM_THREADS=4") > 1


def test_fractional_memory_is_written_in_megabytes():
    assert sbatch_parameters(Profile(mem_gb=1.5))["mem"] == "1536MB"


def test_submitit_writes_the_local_profile_into_the_sbatch_file(tmp_path):
    script = sbatch_script(load_profile("local"), tmp_path).splitlines()
    assert "#SBATCH --signal=USR2@30" in script
    assert "#SBATCH --partition=debug" in script
    assert "#SBATCH --time=10" in script
    assert "#SBATCH --mem=1GB" in script
    assert not any(line.startswith("#SBATCH --array") for line in script)  # one job
    assert not any(line.startswith("#SBATCH --error") for line in script)
    assert "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}" in script
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR2" in script


def test_the_profile_signal_reaches_the_sbatch_file(tmp_path):
    profile = load_profile("local", {"signal": "USR1", "signal_delay_s": 45})
    script = sbatch_script(profile, tmp_path).splitlines()
    assert "#SBATCH --signal=USR1@45" in script
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in script


def test_extra_sbatch_entries_reach_the_sbatch_file_and_false_leaves_a_flag_off(tmp_path):
    profile = load_profile(
        "local", {"sbatch": {"mail-type": "END", "exclusive": True, "requeue": False}}
    )
    script = sbatch_script(profile, tmp_path).splitlines()
    assert "#SBATCH --mail-type=END" in script and "#SBATCH --exclusive" in script
    assert not any("requeue" in line for line in script)


def test_bundled_profiles_ship_with_the_package():
    assert BUNDLED.name == "profiles" and BUNDLED.parent.name == "slurm"
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'slurm = ["profiles/*.yaml"]' in text


def test_a_multi_task_job_ends_all_its_tasks_when_one_dies(tmp_path):
    """Without it, the ranks left alive wait in DDP's collective until its timeout."""
    (srun,) = [
        line
        for line in sbatch_script(
            load_profile("local", {"tasks_per_node": 2}), tmp_path
        ).splitlines()
        if line.startswith("srun ")
    ]
    assert "--kill-on-bad-exit=1" in srun.split()
    single = sbatch_script(load_profile("local"), tmp_path)
    assert "--kill-on-bad-exit" not in single
    two_nodes = sbatch_parameters(Profile(nodes=2))
    assert two_nodes["srun_args"] == ["--kill-on-bad-exit=1"]


def test_the_dry_run_of_a_multi_task_grid_shows_kill_on_bad_exit(tmp_path, capsys):
    from ablations import run as run_cli

    grid = {
        "name": "ddp",
        "base": {
            "data": {"name": "synthetic", "resolution": 32},
            "model": {"ch": 8, "z_dim": 8},
            "train": {"steps": 2, "batch_size": 4, "device": "cpu"},
        },
        "axes": {"lr": {"equal": {"train.lr_g": 0.0004}}},
    }
    path = write(tmp_path, grid, "ddp.yaml")
    argv = [str(path), "--out", str(tmp_path / "runs"), "--executor", "slurm"]
    argv += ["--profile", "local", "slurm.tasks_per_node=2", "--dry-run"]
    assert run_cli.main(argv) == 0
    (srun,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun


# --- profiles that could only fail once the job runs ---------------------------------


@pytest.mark.parametrize(
    "grid,cli,line",
    [
        (
            {"time": 2},
            ["slurm.signal_delay_s=120"],
            "signal_delay_s: 120 s is not shorter than time (2 min = 120 s): the signal "
            "would come as the job starts, before it could train (got 120)",
        ),
        (
            {"score_time": 1},
            ["slurm.signal_delay_s=90"],
            "signal_delay_s: 90 s is not shorter than score_time (1 min = 60 s): the signal "
            "would come as the job starts, before it could score (got 90)",
        ),
        (
            {"gpus_per_node": 2},
            ["slurm.tasks_per_node=4"],
            "tasks_per_node: 4 processes per node for 2 GPUs per node: each process "
            "trains on a GPU of its own (got 4)",
        ),
    ],
)
def test_keys_that_contradict_each_other_across_layers_are_one_error(grid, cli, line):
    (got,) = errors("local", grid, cli, grid_where="g.yaml")
    assert got.endswith(line)
    assert got.startswith("slurm/profiles/local.yaml < g.yaml: executor.slurm")


def test_a_signal_delay_shorter_than_both_limits_is_accepted():
    p = load_profile("local", {"time": 2, "score_time": 2}, ["slurm.signal_delay_s=119"])
    assert p.signal_delay_s == 119


def _cell(label: str, **train):
    from sagan.config import build_config
    from tests.test_resume import BASE

    return label, build_config(BASE, {f"train.{k}": v for k, v in train.items()})


def test_a_batch_the_process_count_does_not_divide_is_rejected_naming_cell_and_keys():
    profile = load_profile("local", {"tasks_per_node": 3, "nodes": 2})
    cells = [_cell("lr=ttur,seed=0", batch_size=12), _cell("lr=ttur,seed=1", batch_size=8)]
    assert check_cells(profile, cells) == [
        "lr=ttur,seed=1: train.batch_size: 8 is not divisible by the 6 processes of "
        "the profile's tasks_per_node x nodes = 3 x 2 (got 8)"
    ]
    assert check_cells(load_profile("local", {"tasks_per_node": 2}), cells) == []


def test_a_cuda_cell_on_a_profile_without_gpus_is_rejected():
    cells = [_cell("a=1", device="cuda")]
    assert check_cells(load_profile("local"), cells) == [
        "a=1: train.device: 'cuda' needs a GPU, but the profile's gpus_per_node is 0 (got 'cuda')"
    ]
    assert check_cells(load_profile("local", {"gpus_per_node": 1}), cells) == []


def test_a_grid_that_cannot_run_on_its_profile_submits_nothing(tmp_path, capsys):
    from ablations import run as run_cli
    from tests.test_jobs import GRID

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(GRID))  # train.batch_size 4
    argv = [str(grid), "--executor", "slurm", "--profile", "local", "slurm.tasks_per_node=3"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: 4 is not divisible by the 3 processes" in err
    assert err.rstrip().endswith("nothing was submitted.")
    assert not (tmp_path / "runs").exists()


def test_only_the_cells_selected_with_only_are_checked_against_the_profile(tmp_path, capsys):
    from ablations import run as run_cli
    from tests.test_jobs import GRID

    spec = dict(
        GRID, axes={"bs": {"four": {"train.batch_size": 4}, "six": {"train.batch_size": 6}}}
    )
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(spec))
    argv = [str(grid), "--executor", "slurm", "--profile", "local", "slurm.tasks_per_node=3"]
    assert run_cli.main([*argv, "--only", "bs=six", "--dry-run"]) == 0
    assert "1 selected" in capsys.readouterr().out
    assert run_cli.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "bs=four" in err and "train.batch_size: 4 is not divisible by the 3 processes" in err
    assert "bs=six" not in err
