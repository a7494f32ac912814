"""The conda environments that the rules name (`conda:`, envs/*.yaml) list the
same packages, with the same version limits, as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
# snakemake drives the workflow from the user's own environment (and, on Slurm,
# runs the job steps from it); the jobs' commands never import it.
DRIVER_ONLY = {"snakemake", "pygments"}  # pygments: for `snakemake --report`
# what only the training/inference rules need
TORCH_STACK = {"torch", "torchvision", "matplotlib"}
# which environment each rule runs in
SLIDE_RULES = {"demo", "tissue", "tile", "label", "split", "index"}
TORCH_RULES = {"train", "predict"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements() -> dict[str, str]:
    """Canonical name -> the requirement string in pyproject.toml."""
    return {canonicalize_name(Requirement(r).name): r for r in pyproject()["dependencies"]}


def env(name: str) -> tuple[list[str], dict[str, str]]:
    """(conda dependencies, pip requirements by canonical name) of envs/NAME.yaml."""
    spec = yaml.safe_load((ENVS / f"{name}.yaml").read_text())
    conda, pip = [], {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for r in dep["pip"]:
                pip[canonicalize_name(Requirement(r).name)] = r
        else:
            conda.append(dep)
    return conda, pip


def env_names() -> list[str]:
    return sorted(p.stem for p in ENVS.glob("*.yaml"))


def test_there_are_the_two_environments():
    assert env_names() == ["slides", "torch"]


@pytest.mark.parametrize("name", ["slides", "torch"])
def test_env_lists_pyproject_requirements_verbatim(name):
    """Every pip requirement of the env is a pyproject dependency with the
    same version limits; the rest are python (in requires-python) and pip."""
    conda, pip = env(name)
    reqs = requirements()
    for key, line in pip.items():
        assert key in reqs, f"envs/{name}.yaml: {line} is not a dependency in pyproject.toml"
        assert Requirement(line).specifier == Requirement(reqs[key]).specifier, (
            f"envs/{name}.yaml has {line}, pyproject.toml has {reqs[key]}")
    pythons = [d for d in conda if re.match(r"python\b", d)]
    assert len(pythons) == 1, conda
    version = pythons[0].split("=", 1)[1]
    assert SpecifierSet(pyproject()["requires-python"]).contains(version + ".0"), pythons
    assert sorted(d for d in conda if d not in pythons) == ["pip"]


def test_slides_env_is_the_package_without_the_torch_stack():
    _, pip = env("slides")
    expected = set(requirements()) - DRIVER_ONLY - TORCH_STACK
    assert set(pip) == expected, (
        f"missing: {sorted(expected - set(pip))}, extra: {sorted(set(pip) - expected)}")


def test_torch_env_is_everything_the_package_needs():
    _, pip = env("torch")
    expected = set(requirements()) - DRIVER_ONLY
    assert set(pip) == expected, (
        f"missing: {sorted(expected - set(pip))}, extra: {sorted(set(pip) - expected)}")


def test_driver_only_packages_are_dependencies():
    """A dependency dropped from pyproject.toml must leave these lists too."""
    assert DRIVER_ONLY | TORCH_STACK <= set(requirements())


@pytest.mark.parametrize("name", ["slides", "torch"])
def test_post_deploy_installs_this_package(name):
    script = ENVS / f"{name}.post-deploy.sh"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "pip install --no-deps -e" in text
    assert f'name = "{pyproject()["name"]}"' in text


def rule_blocks() -> dict[str, tuple[Path, str]]:
    """Rule name -> (file, text of its block) for every rule in workflow/rules/."""
    blocks = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        heads = list(re.finditer(r"^(?:rule|checkpoint)\s+(\w+)\s*:", text, re.M))
        for i, head in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            # the block ends at the next top-level statement
            body = re.split(r"\n(?=\S)", text[head.end():end], maxsplit=1)[0]
            blocks[head.group(1)] = (smk, body)
    return blocks


def test_every_rule_with_a_command_names_an_env():
    blocks = rule_blocks()
    assert SLIDE_RULES <= set(blocks)
    for rule, (smk, body) in blocks.items():
        if not re.search(r"^\s+(shell|script|run|wrapper|notebook)\s*:", body, re.M):
            continue
        m = re.search(r"^\s+conda:\s*\n?\s*\"([^\"]+)\"", body, re.M)
        assert m, f"rule {rule} ({smk.name}) has no conda: environment"
        path = (smk.parent / m.group(1)).resolve()
        assert path.parent == ENVS and path.exists(), f"rule {rule}: {m.group(1)}"
        if rule in SLIDE_RULES:
            assert path.stem == "slides", f"rule {rule} runs in envs/{path.name}"
        if rule in TORCH_RULES:
            assert path.stem == "torch", f"rule {rule} runs in envs/{path.name}"
