"""What the workflow asks a cluster for: per-rule resources, the profiles, and no
account or partition in the rules. (The run on a real Slurm cluster is
.ci/slurm/run_ci.sh, the last step of .ci/run.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

PROFILES = REPO / "workflow" / "profiles"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
# every rule that runs a command asks for memory, time and CPUs
HEAVY = {"demo", "tissue", "tile", "label", "split", "index", "train", "predict",
         "aggregate", "evaluate", "figures"}
GPU_RULES = {"train", "predict"}
HAS_PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([*SNAKEMAKE, *args], capture_output=True, text=True, env=env, cwd=cwd)


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


@pytest.fixture(scope="module")
def dry_run_jobs(tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs in `snakemake -n all` on a
    small cohort (empty slide files: a dry run reads no pixels)."""
    root = tmp_path_factory.mktemp("dag")
    rows = ["slide_id\tpatient_id\tpath\tannotation\tmpp\tslide_label"]
    for i in range(8):
        (root / f"s{i}.svs").touch()
        rows.append(f"s{i}\tp{i // 2}\ts{i}.svs\t\t0.25\t{'tumour' if i % 4 < 2 else 'normal'}")
    (root / "samples.tsv").write_text("\n".join(rows) + "\n")
    (root / "override.yaml").write_text(yaml.safe_dump({"samples": str(root / "samples.tsv")}))
    res = run("--configfile", str(REPO / "config.yaml"), str(root / "override.yaml"),
              "--directory", str(root), "--cores", "2", "-n", "all")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=\[.*\d{4}\]\n)", res.stdout + res.stderr):
        head = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        found = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head and found:
            resources = dict(item.split("=", 1) for item in found.group(1).split(", "))
            threads = re.search(r"^\s+threads: (\d+)", block, re.M)
            resources["threads"] = threads.group(1) if threads else "1"
            jobs.setdefault(head.group(1), []).append(resources)
    return jobs


def test_heavy_rules_ask_for_memory_time_and_cpus(dry_run_jobs):
    assert HEAVY - {"demo"} <= set(dry_run_jobs)
    for rule, jobs in dry_run_jobs.items():
        if rule not in HEAVY:
            continue
        for resources in jobs:
            for key in ("mem_mb", "runtime", "cpus_per_task"):
                assert key in resources, f"rule {rule} sets no {key}: {resources}"
                assert int(resources[key]) > 0, (rule, resources)
            assert resources["cpus_per_task"] == resources["threads"], (rule, resources)


def test_gpu_rules_ask_for_one_gpu(dry_run_jobs):
    for rule in GPU_RULES & set(dry_run_jobs):
        for resources in dry_run_jobs[rule]:
            assert resources.get("gpu") == "1", (rule, resources)
    for rule in set(dry_run_jobs) - GPU_RULES:
        for resources in dry_run_jobs[rule]:
            assert "gpu" not in resources, (rule, resources)


def test_no_account_or_partition_in_the_rules():
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        for word in ("slurm_account", "slurm_partition", "--account", "--partition"):
            assert word not in text, f"{path.name} names {word}: that belongs in a profile"


def test_profiles_use_only_options_snakemake_knows():
    res = run("--help")
    assert res.returncode == 0, res.stderr
    known = set(re.findall(r"--([a-z][a-z0-9-]+)", res.stdout))
    for name in ("default", "slurm", "slurm-ci"):
        for key in profile(name):
            if key.startswith("slurm-") and not HAS_PLUGIN:
                continue
            assert key in known, f"workflow/profiles/{name}: unknown option {key}"


def test_slurm_profile():
    slurm = profile("slurm")
    assert slurm["executor"] == "slurm"
    assert slurm["keep-going"] and slurm["rerun-incomplete"]
    assert {"mem_mb", "runtime"} <= set(slurm["default-resources"])
    # the cluster-specific choices are left to the user (commented examples)
    assert "slurm_account" not in slurm["default-resources"]
    assert "slurm_partition" not in slurm["default-resources"]


def test_ci_profile_changes_no_resource_request():
    """The test cluster sees the real profile's and rules' requests."""
    ci = profile("slurm-ci")
    assert not {"default-resources", "set-resources", "set-threads", "executor"} & set(ci)
    assert ci["slurm-status-command"] == "squeue"  # no accounting database there


def test_default_profile_runs_locally():
    default = profile("default")
    assert "executor" not in default and default["cores"] >= 1


@pytest.mark.skipif(not HAS_PLUGIN, reason="snakemake-executor-plugin-slurm is not installed")
def test_slurm_profiles_parse(tmp_path):
    """The two profiles together are accepted by snakemake and the plugin: the CI
    profile layered over the real one as a workflow profile (a second --profile
    would replace the first, executor: slurm included)."""
    res = run("--profile", str(PROFILES / "slurm"),
              "--workflow-profile", str(PROFILES / "slurm-ci"),
              "--configfile", str(REPO / "config.yaml"), "--directory", str(tmp_path),
              "-n", "demo/samples.tsv")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "rule demo" in out or "checkpoint demo" in out
    assert (f"{PROFILES / 'slurm'} and workflow specific profile "
            f"{PROFILES / 'slurm-ci'}") in out
