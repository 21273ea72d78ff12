"""Cluster profiles (slurm/example.toml): the [slurm] table with [scale.<scale>] overrides, mapped to submitit's
SlurmExecutor parameters."""

from __future__ import annotations

from pathlib import Path

import tomllib

from ..config import ConfigError

# ----------------------------------------------------------------------------------------------------
# cluster profiles

# profile key -> submitit SlurmExecutor parameter (sbatch flag); see slurm/example.toml
PROFILE_KEYS = {
    "partition": "partition", "nodes": "nodes", "gpus_per_node": "gpus_per_node", "gpus_per_task": "gpus_per_task",
    "tasks_per_node": "ntasks_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem", "time_min": "time",
    "account": "account", "qos": "qos", "constraint": "constraint", "exclude": "exclude", "comment": "comment",
    "array_parallelism": "array_parallelism", "signal_delay_s": "signal_delay_s", "setup": "setup",
    "srun_args": "srun_args", "extra_sbatch": "additional_parameters",
}
EXECUTOR_KEYS = ("max_num_timeout", "python")
JOB_KEYS = ("dist_timeout_s",)  # read by the job itself (RunJob), not by sbatch


def load_profile(path: str | Path, scale: str | None = None) -> dict:
    """A cluster profile: the [slurm] table, overridden by [scale.<scale>] when present."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--profile {path}: no such file (see slurm/example.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--profile {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"slurm", "scale"})
    if unknown:
        raise ConfigError(f"profile {path}: unknown table [{unknown[0]}]; allowed: [slurm], [scale.<scale>]")
    profile = dict(data.get("slurm", {}))
    if scale is not None:
        profile.update(data.get("scale", {}).get(scale, {}))
    allowed = set(PROFILE_KEYS) | set(EXECUTOR_KEYS) | set(JOB_KEYS)
    for key in profile:
        if key not in allowed:
            raise ConfigError(f"profile {path}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    timeout = profile.get("dist_timeout_s", 1)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"profile {path}: dist_timeout_s = {timeout!r}; give a number of seconds > 0")
    return profile


def wants_gpus(profile: dict) -> bool:
    """Whether the profile gives each job GPUs (gpus_per_node, gpus_per_task, or a gpu gres / gpus flag in
    extra_sbatch): its tasks must then train on a GPU, never on the CPU."""
    if int(profile.get("gpus_per_node", 0) or 0) > 0 or int(profile.get("gpus_per_task", 0) or 0) > 0:
        return True
    extra = {str(k).lstrip("-"): str(v) for k, v in dict(profile.get("extra_sbatch", {})).items()}
    return "gpu" in extra.get("gres", "") or any(k.startswith("gpus") for k in extra)


def slurm_parameters(profile: dict) -> tuple[dict, dict]:
    """(sbatch parameters for SlurmExecutor.update_parameters, keyword arguments of SlurmExecutor)."""
    sbatch = {PROFILE_KEYS[k]: v for k, v in profile.items() if k in PROFILE_KEYS}
    if "ntasks_per_node" not in sbatch:
        sbatch["ntasks_per_node"] = max(1, int(profile.get("gpus_per_node", 1)))  # one rank per GPU
    if "additional_parameters" in sbatch:
        sbatch["additional_parameters"] = dict(sbatch["additional_parameters"])
    tasks = int(sbatch["ntasks_per_node"]) * int(sbatch.get("nodes", 1))
    srun_args = list(sbatch.get("srun_args", []))
    if tasks > 1 and not any("kill-on-bad-exit" in a for a in srun_args):
        sbatch["srun_args"] = [*srun_args, "--kill-on-bad-exit=1"]  # a rank that dies ends the others at once
    executor = {k: profile[k] for k in EXECUTOR_KEYS if k in profile}
    return sbatch, executor


def sbatch_preview(profile: dict) -> list[str]:
    """The #SBATCH lines and setup that submitit writes for these parameters (log paths left out)."""
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch, _ = slurm_parameters(profile)
    text = _make_sbatch_string(command="<job>", folder="<folder>", job_name="<study>-<scale>", **sbatch)
    keep = [line for line in text.splitlines() if line.startswith("#SBATCH")
            and not line.startswith(("#SBATCH --output", "#SBATCH --error", "#SBATCH --open-mode"))]
    return keep + [line for line in sbatch.get("setup", [])]


# ----------------------------------------------------------------------------------------------------
