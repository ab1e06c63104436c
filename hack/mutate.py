#!/usr/bin/env python3
"""Mutation testing of the modules that make the operator's decisions (`make mutate`).

Runs mutmut 3 (a dev dependency) module by module, each against only the fast unit tests that
exercise it, and prints the mutation score (killed / total) per module. Survivors, with their
diffs, are written to .mutate/<module>-survivors.txt.

mutmut copies the sources it mutates into ./mutants and puts that folder first on sys.path. This
repository keeps its packages one folder down (contract/lora_contract, operator/lora_operator, ...,
installed in editable mode), so each module gets its own work folder, .mutate/work/<module>/,
laid out as mutmut expects: the lora_* packages at the top, next to copies of tests/ and
pyproject.toml, and a generated setup.cfg with the [mutmut] section. The editable installs'
import hooks sit after sys.path in sys.meta_path, so the tests import the mutated copies;
mutmut's forced-fail check (every test must fail when the trampolines are told to raise) proves
that they do.

    .venv/bin/python hack/mutate.py                 # every module
    .venv/bin/python hack/mutate.py -m quota,layout # some of them
    .venv/bin/python hack/mutate.py --list          # the modules and their tests
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".mutate"
GOAL = 80.0


def find_packages() -> dict[str, str]:
    """import name -> repository folder of every package: lora_contract -> contract/lora_contract"""
    return {
        init.parent.name: init.parent.relative_to(ROOT).as_posix()
        for init in sorted(ROOT.glob("*/lora_*/__init__.py"))
        if not init.parts[len(ROOT.parts)].startswith(".")
    }


@dataclass(frozen=True)
class Target:
    """One module (or a pair that belongs together) and the fast tests that exercise it."""

    name: str
    modules: tuple[str, ...]  # dotted names of the modules to mutate
    tests: tuple[str, ...]  # test files (fast unit tests only)
    deselect: tuple[str, ...] = ()  # slow node ids in those files: subprocesses, training runs
    note: str = ""

    def selection(self) -> list[str]:
        return [*self.tests, *(f"--deselect={node}" for node in self.deselect)]


# Repository folders the tests read (tests/api/apidata.py's ROOT is the folder above tests/;
# crd.REPO_ROOT three above crd.py): copied into the work folder and into mutants/.
DATA = ("examples", "crds", "charts")

MEMORY_TESTS = (
    "tests/memory/test_estimate.py",
    "tests/memory/test_estimate_terms.py",
    "tests/memory/test_placement.py",
    "tests/memory/test_placement_choices.py",
    "tests/memory/test_architecture.py",
    "tests/memory/test_placement_objective.py",
    "tests/memory/test_placement_units.py",
)
# Their subprocesses import the unmutated packages: slow, and they cannot kill a mutant.
API_HELPERS_SLOW = (
    "tests/api/test_api_helpers.py::test_validate_command",
    "tests/api/test_api_helpers.py::test_cli_unknown_command",
)
# Whole reconciles against an S3 server (seconds each); the file's unit tests cover the flags/key.
QUANTIZATION_RECONCILES = tuple(
    f"tests/operator/test_serving_quantization.py::{test}"
    for test in (
        "test_a_qlora_and_a_lora_job_share_one_16_bit_server",
        "test_a_qlora_job_leaves_its_old_nf4_keyed_server_for_the_new_key",
    )
)
# The trainer's whole entry point (run_here): loads a config and the model stack.
OWNER_THROUGH_MAIN = (
    "tests/trainer/test_output_owner.py::test_the_trainer_refuses_a_recreated_jobs_old_folder"
)

TARGETS: tuple[Target, ...] = (
    Target("quota", ("lora_operator.controller.quota",), ("tests/operator/test_quota_units.py",)),
    Target(
        "emulator_parts",
        (
            "lora_devkit.field_selectors",
            "lora_devkit.protobuf_bodies",
            "lora_devkit.watch_journal",
            "lora_devkit.builtin_schemas",
            "lora_devkit.namespaces",
        ),
        ("tests/demo/test_emulator_parts.py",),
        note="what the API emulator answers kubectl: selectors, protobuf, watch resumption, "
        "built-in schemas, namespaces",
    ),
    Target(
        "quota_ledger",
        ("lora_operator.controller.quota_ledger",),
        ("tests/operator/test_quota_ledger.py",),
        note="usage kept per quota scope and the oldest-first pass between admissions",
    ),
    Target(
        "policy",
        ("lora_operator.controller.policy",),
        ("tests/operator/test_policy_units.py", "tests/operator/test_policy.py"),
        note="what a job author may choose: images, endpoints, priority, node placement, Secrets",
    ),
    Target(
        "ownership",
        ("lora_operator.controller.ownership",),
        ("tests/operator/test_ownership_units.py",),
        note="which objects are this LoRAJob's to change or delete",
    ),
    Target(
        "layout",
        ("lora_contract.layout",),
        ("tests/api/test_api_helpers.py", "tests/api/test_layout_paths.py"),
        API_HELPERS_SLOW,
        note="run layout in the bucket, checkpoint names and steps",
    ),
    Target(
        "hashing",
        ("lora_operator.api.hashing",),
        ("tests/api/test_api_helpers.py", "tests/api/test_hash_stability.py"),
        API_HELPERS_SLOW,
        note="the spec hash behind retrain decisions",
    ),
    Target(
        "checkpoints",
        ("lora_trainer.checkpoints",),
        ("tests/trainer/test_checkpoints.py", "tests/trainer/test_checkpoint_files.py"),
        note="latest/prune; each mutant's pytest run starts the moto S3 server fixture",
    ),
    Target(
        "estimate",
        ("lora_operator.memory.estimate",),
        (*MEMORY_TESTS, "tests/memory/test_dpo_memory.py"),  # the DPO block of estimate_memory
    ),
    Target("placement", ("lora_operator.memory.placement",), MEMORY_TESTS),
    Target(
        "dora",
        ("lora_operator.memory.dora",),
        ("tests/memory/test_estimate_terms.py", "tests/memory/test_dora_memory.py"),
        ("tests/memory/test_dora_memory.py::test_plan_shows_the_dora_terms_and_their_cost",),
        note="DoRA's memory terms (the plan subprocess imports the unmutated package)",
    ),
    Target(
        "dpo_memory",
        ("lora_operator.memory.dpo",),
        ("tests/memory/test_dpo_memory.py",),
        note="DPO's memory terms: 2 x micro-batch policy, fused log-prob head, reference",
    ),
    Target(
        "preference_data",
        ("lora_trainer.preference_data",),
        ("tests/trainer/test_dpo.py",),
        (
            "tests/trainer/test_dpo.py::test_dpo_raises_the_reward_margin",
            "tests/trainer/test_dpo.py::test_chat_pairs_train_and_no_usable_rows_exit_3",
            "tests/trainer/test_dpo.py::test_resumed_dpo_run_takes_the_same_steps",
        ),
        note="preference rows -> token ids, bad rows, maxPromptLength (training runs deselected)",
    ),
    Target(
        "objective",
        ("lora_operator.memory.objective", "lora_operator.memory.batch"),
        ("tests/memory/test_placement_objective.py",),
        note="which fitting placement wins, and the global batch split per rank",
    ),
    Target(
        "fit",
        ("lora_operator.memory.fit",),
        (
            "tests/memory/test_fit.py",
            "tests/memory/test_placement_objective.py",
            "tests/memory/test_fit_units.py",
        ),
        note="the maths-preserving variants and their ordering",
    ),
    Target(
        "forecast",
        ("lora_operator.memory.forecast",),
        (
            "tests/memory/test_forecast.py",
            "tests/memory/test_placement_objective.py",
            "tests/memory/test_forecast_units.py",
        ),
        note="hours and GPU-hours that price the placements",
    ),
    Target(
        "serving_plan",
        ("lora_operator.memory.serving_plan",),
        ("tests/memory/test_serving_plan.py",),
        note="the vLLM server's GPUs, tensor-parallel size, flags and pod requests",
    ),
    Target(
        "manifests",
        ("lora_operator.controller.manifests",),
        (
            "tests/operator/test_manifests.py",
            "tests/operator/test_manifest_details.py",
            "tests/operator/test_reconcile_units.py",
            "tests/operator/test_serving_units.py",
        ),
    ),
    Target(
        "serving",
        ("lora_operator.controller.serving", "lora_operator.controller.secret_reads"),
        (
            "tests/operator/test_serving_units.py",
            "tests/operator/test_serving_credentials.py",
            "tests/operator/test_manifests.py",
            "tests/operator/test_manifest_details.py",
            "tests/operator/test_pod_security.py",
            "tests/operator/test_serving_quantization.py",  # server_size's quantization flags
        ),
        deselect=(
            *QUANTIZATION_RECONCILES,
            # whole reconciles against an S3 server: seconds each; the unit tests cover the module
            *(
                f"tests/operator/test_serving_credentials.py::{test}"
                for test in (
                    "test_a_running_job_reads_its_own_secret_once_per_resync",
                    "test_the_default_secret_is_read_once_by_progress_alone",
                    "test_success_and_serving_list_the_jobs_secret_and_write_no_secret",
                    "test_serving_from_the_default_secret_reads_no_secret_at_all",
                    "test_turning_serving_off_touches_no_secret",
                )
            ),
            # reads trainer-image/Dockerfile (not copied into the work folder); not about serving
            "tests/operator/test_pod_security.py::test_the_trainer_writes_only_to_its_emptydirs",
        ),
        note="serving credentials by reference (no Secret copy), one Secret read per reconcile",
    ),
    Target(
        "shared_serving",
        ("lora_operator.controller.shared_registry", "lora_operator.controller.shared_serving"),
        (
            "tests/operator/test_shared_serving_units.py",
            "tests/operator/test_shared_sweep_units.py",
            "tests/operator/test_shared_runtime_units.py",  # ensure_shared_serving's runtime
            "tests/operator/test_serving_quantization.py",  # server_key by the served precision
            "tests/operator/test_shared_llmisvc_units.py",  # the LLMInferenceService path
        ),
        deselect=QUANTIZATION_RECONCILES,
        note="which server a shared adapter goes to, registry registration/sweep, ownership",
    ),
    Target(
        "serving_api",
        ("lora_operator.controller.serving_api", "lora_operator.controller.shared_llmisvc"),
        ("tests/operator/test_shared_llmisvc_units.py",),
        note="which serving API a shared server uses (discovery, its cache) and the "
        "LLMInferenceService built for it (flags, sidecar, router only with the extension)",
    ),
    Target(
        "shared_runtime",
        ("lora_operator.controller.shared_runtime",),
        ("tests/operator/test_shared_runtime_units.py",),
        note="a shared server's ServingRuntime: vLLM sized by the recorded plan, the syncer's "
        "image, env and one read-only Secret volume per listed Secret",
    ),
    Target(
        "shared_sweep",
        ("lora_operator.controller.shared_sweep",),
        ("tests/operator/test_shared_sweep_units.py",),
        note="which registries and uids a deleted shared job's sweep takes off, and retries",
    ),
    Target(
        "crd",
        ("lora_operator.api.crd",),
        ("tests/api/test_crd.py", "tests/api/test_crd_generation.py"),
        ("tests/api/test_crd.py::test_crds_check_command_passes_on_the_committed_files",),
    ),
    Target(
        "model_config_fetch",
        (
            "lora_operator.controller.model_config_fetch",
            "lora_operator.controller.model_config_source",
        ),
        ("tests/operator/test_model_config_fetch_units.py",),
        note="which URLs a model config is fetched from, redirects, size cap, deadline, cache",
    ),
    Target(
        "deepspeed_setup",
        ("lora_trainer.deepspeed_setup",),
        (
            "tests/trainer/test_zero3_config.py",
            "tests/trainer/test_deepspeed.py",
            "tests/trainer/test_deepspeed_setup_units.py",
        ),
        (
            "tests/trainer/test_zero3_config.py::"
            "test_zero3_bad_deepspeed_config_exits_3_with_the_reason_in_progress",
            "tests/trainer/test_deepspeed.py::test_zero_trains_on_cpu",
        ),
        note="the DeepSpeed batch/config checks before the model loads (subprocess runs left out)",
    ),
    Target(
        "loss_path",
        ("lora_trainer.gathered_head", "lora_trainer.loss"),
        ("tests/trainer/test_loss_units.py", "tests/trainer/test_chunked_loss.py"),
        (
            "tests/trainer/test_chunked_loss.py::test_the_trainer_takes_the_same_steps_with_either_loss",
        ),
        note="which loss path runs, and lm_head's ZeRO-3 gather around the chunks (no training)",
    ),
    Target(
        "lean_steps",
        ("lora_trainer.lean_steps",),
        ("tests/trainer/test_lean_steps_units.py",),
        note="FLOP count once, the train() switch skipped, clipping over trainable parameters",
    ),
    Target(
        "offload",
        ("lora_trainer.offload",),
        ("tests/trainer/test_offload_units.py",),
        note="which offload path runs and that its hooks take the saved tensors",
    ),
    Target(
        "storage_errors",
        ("lora_contract.storage", "lora_trainer.sources"),
        (
            "tests/trainer/test_storage_errors_units.py",
            "tests/trainer/test_storage.py",
            "tests/trainer/test_download_confinement.py",
            "tests/trainer/test_owner_claim_units.py",
            "tests/trainer/test_output_owner.py",
        ),
        (OWNER_THROUGH_MAIN,),
        note="transient or permanent S3 failures, retries, and the trainer's exit code for each",
    ),
    Target(
        "owner_claim",
        ("lora_trainer.ownership", "lora_contract.layout"),
        (
            "tests/trainer/test_owner_claim_units.py",
            "tests/trainer/test_output_owner.py",
            "tests/api/test_api_helpers.py",
            "tests/api/test_layout_paths.py",
        ),
        (OWNER_THROUGH_MAIN, *API_HELPERS_SLOW),
        note="OWNER.json claimed once and read back; another uid refused; the marker's place",
    ),
    Target(
        "resume_rank",
        ("lora_trainer.checkpoints", "lora_trainer.completion"),
        (
            "tests/trainer/test_resume_rank_units.py",
            "tests/trainer/test_checkpoints.py",
            "tests/trainer/test_checkpoint_files.py",
            "tests/trainer/test_best_adapter.py",
        ),
        (  # training runs
            "tests/trainer/test_best_adapter.py::"
            "test_early_stopped_run_ships_the_best_steps_adapter",
            "tests/trainer/test_best_adapter.py::"
            "test_resumed_attempt_says_where_it_resumed_and_keeps_the_earlier_best",
        ),
        note="which checkpoint each rank resumes from; a finished run trains no further; "
        "the best checkpoint is spared and its adapter becomes final/",
    ),
    Target(
        "errors",
        ("lora_trainer.errors", "lora_trainer.main"),
        (
            "tests/trainer/test_errors.py",
            "tests/trainer/test_exit_codes.py",
            "tests/trainer/test_disk_faults.py",
        ),
        ("tests/trainer/test_errors.py::test_malformed_rows_are_counted_and_training_continues",),
        note="the trainer's exit-code mapping: errors.py and main()/fail() in main.py",
    ),
    Target(
        "reconcile_decisions",
        (
            "lora_operator.controller.decisions",
            "lora_operator.controller.workload",
            "lora_operator.controller.ownership",
        ),
        ("tests/operator/test_decisions.py", "tests/operator/test_workload.py"),
        note="quota demand, Kueue queue, TTL instant, Job state, what may be deleted",
    ),
    Target(
        "status_patch",
        ("lora_operator.controller.status_patch",),
        ("tests/operator/test_last_error.py",),
        ("tests/operator/test_last_error.py::test_the_operator_clears_a_recovered_runs_error",),
        note="the status merge patch: what changed, and null for what a nested field lost",
    ),
    Target(
        "preemption",
        ("lora_operator.memory.grace", "lora_trainer.preemption"),
        ("tests/operator/test_preemption.py", "tests/trainer/test_preemption.py"),
        (
            "tests/operator/test_preemption.py::"
            "test_preemption_through_the_operator_spends_no_retry_and_the_job_succeeds",
            "tests/trainer/test_preemption.py::"
            "test_sigterm_on_two_nodes_checkpoints_the_agreed_step_and_resumes_there",
            "tests/trainer/test_preemption.py::"
            "test_sigterm_during_checkpoint_upload_keeps_the_previous_checkpoint_latest",
        ),
        note="the pods' grace period after SIGTERM; the trainer's stop request and exit codes",
    ),
    Target(
        "health",
        ("lora_operator.controller.health",),
        ("tests/operator/test_health.py",),
        note="Ready / Reconciling / Stalled (kstatus, Argo CD) from the phase and conditions",
    ),
    Target(
        "children",
        ("lora_operator.controller.children",),
        ("tests/operator/test_children_units.py",),
        note="which fields of each owned kind are compared and put back; create/restore/leave",
    ),
    Target(
        "schedule",
        ("lora_operator.controller.schedule", "lora_operator.api.cron"),
        ("tests/operator/test_schedule_units.py",),
        note="whether a cron tick fires, is skipped or waits; ticks in a zone; run ids, history",
    ),
    Target(
        "data_watch",
        ("lora_operator.controller.data_watch",),
        ("tests/operator/test_data_watch_units.py",),
        deselect=(
            "tests/operator/test_data_watch_units.py::test_etag_and_version_of_a_replaced_object",
        ),
        note="whether the watched dataset object changed and is due a look",
    ),
    Target(
        "promotion",
        ("lora_operator.controller.promotion", "lora_operator.controller.serving_compat"),
        ("tests/operator/test_promotion.py", "tests/operator/test_serving_compat.py"),
        note="which succeeded run serves (latest/best/manual); what vLLM would refuse to load",
    ),
    Target(
        "export_job",
        ("lora_operator.controller.export_job", "lora_operator.memory.export_sizing"),
        ("tests/operator/test_export_job.py",),
        deselect=tuple(  # through the reconciler with the moto S3 server: its thread hangs mutmut
            f"tests/operator/test_export_job.py::{name}"
            for name in (
                "test_a_failed_export_sets_exported_false_and_the_run_stays_succeeded",
                "test_a_succeeded_export_records_the_merged_uri",
                "test_no_export_job_without_export_merged",
                "test_a_later_runs_export_end_prunes_the_earlier_runs_export_job",
            )
        ),
        note="the merged-export Job: its memory/disk sizing, shape, failed pod's message, "
        "which earlier runs' export Jobs are pruned",
    ),
    Target(
        "base_adapter",
        ("lora_operator.controller.base_adapter",),
        ("tests/operator/test_base_adapter_units.py",),
        note="which run spec.baseAdapter starts from; wait or refuse (model, shape, folder, owner)",
    ),
    Target(
        "adapter_registry",
        ("lora_contract.adapter_registry",),
        (
            "tests/operator/test_shared_serving_units.py",  # Entry round-trips and refusals
            "tests/operator/test_shared_sweep_units.py",
        ),
        note="which registry entries parse (names, keys, an http(s) endpoint) and when an entry "
        "records its own S3 endpoint/region",
    ),
)

# mutmut's status names (mutmut.stats.status_by_exit_code) that count as a kill.
KILLED = {"killed", "caught by type check"}


@dataclass
class Result:
    target: Target
    counts: Counter[str] = field(default_factory=Counter)
    per_file: dict[str, Counter[str]] = field(default_factory=dict)
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (mutant, status)
    wall_s: float = 0.0
    error: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.counts.items() if status in KILLED)

    @property
    def score(self) -> float | None:
        return 100.0 * self.killed / self.total if self.total else None


def work_path(module: str) -> str:
    """lora_operator.api.crd -> lora_operator/api/crd.py (its path in the work folder)."""
    return module.replace(".", "/") + ".py"


def repo_path(module: str, packages: dict[str, str]) -> str:
    """lora_operator.api.crd -> operator/lora_operator/api/crd.py"""
    package, _, rest = module.partition(".")
    if package not in packages:
        raise SystemExit(f"{module}: no package {package} in {sorted(packages.values())}")
    path = f"{packages[package]}/{rest.replace('.', '/')}.py"
    if not (ROOT / path).is_file():
        raise SystemExit(f"{module}: {path} does not exist (moved? update TARGETS)")
    return path


def _ignore(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n in {"__pycache__", ".pytest_cache"} or n.endswith(".pyc")]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=_ignore)
    else:
        shutil.copy2(src, dst)


def _cfg_list(key: str, values: list[str]) -> str:
    return f"{key} =\n" + "".join(f"    {v}\n" for v in values)


def prepare(target: Target, work: Path, packages: dict[str, str]) -> None:
    """A fresh work folder: the packages at the top, tests, pyproject.toml and setup.cfg."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    if re.search(r"^\[tool\.mutmut[\].]", pyproject, re.MULTILINE):
        # mutmut reads [tool.mutmut] in preference to setup.cfg: the generated config would lose
        sys.exit("pyproject.toml has a [tool.mutmut] section: hack/mutate.py configures mutmut")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for package, folder in packages.items():
        _copy(ROOT / folder, work / package)
    for item in ("tests", "pyproject.toml", *DATA):
        if (ROOT / item).exists():
            _copy(ROOT / item, work / item)
    config = (
        "[mutmut]\n"
        + _cfg_list("source_paths", list(packages))
        + _cfg_list("only_mutate", [work_path(m) for m in target.modules])
        + _cfg_list("pytest_add_cli_args_test_selection", target.selection())
        + _cfg_list("pytest_add_cli_args", ["-p", "no:cacheprovider"])
        + _cfg_list("also_copy", list(DATA))
        # the work folder sits inside this repository's git tree, which is not the code under test
        + "use_git_change_detection = false\n"
    )
    (work / "setup.cfg").write_text(config)


def mutmut(work: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    # mutmut forks a child per mutant from a process that has run torch: with OpenMP's thread
    # pool alive in the parent, a child's first parallel op can hang until mutmut's timeout
    # (loss_path: 221 of 371 "timeouts" with the pool, none with one thread).
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    with log.open("w") as out:
        return subprocess.run(
            command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def statuses(work: Path, module: str) -> dict[str, str]:
    """mutant name -> mutmut's status, from the mutants/<file>.meta it writes."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((work / "mutants" / (work_path(module) + ".meta")).read_text())
    return {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()}


def why_tests_fail(target: Target, work: Path) -> str:
    """mutmut hides pytest's output: run the selection once, unmutated, for the error."""
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "--rootdir=.", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*pytest, *target.selection()],
        cwd=work / "mutants",
        capture_output=True,
        text=True,
        timeout=900,
    )
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])


def run_target(
    target: Target, jobs: int, packages: dict[str, str], *, report_only: bool = False
) -> Result:
    result = Result(target)
    work = OUT / "work" / target.name
    log = OUT / f"{target.name}.log"
    wall = work / "wall_s"
    if report_only:
        if not wall.exists():
            result.error = f"no finished run in {work}"
            return result
    else:
        prepare(target, work, packages)
        start = time.monotonic()
        proc = mutmut(work, "run", "--max-children", str(jobs), log=log)
        if proc.returncode != 0:
            text = log.read_text(errors="replace")
            tail = "\n".join(text.replace("\r", "\n").splitlines()[-3:])
            if re.search(
                "BadTestExecutionCommands|Failed to run clean test|failed to collect", text
            ):
                tail += "\n--- the tests, unmutated:\n" + why_tests_fail(target, work)
            result.error = f"mutmut run exited {proc.returncode} (log: {log})\n{tail}"
            result.wall_s = time.monotonic() - start
            return result
        wall.write_text(f"{time.monotonic() - start:.1f}\n")
    result.wall_s = float(wall.read_text())
    text = log.read_text(errors="replace")
    if "FAILED: Unable to force test failures" in text:  # mutmut exits 1 then; belt and braces
        result.error = f"the tests did not import the mutated copies (log: {log})"
        return result
    paths = {}
    for module in target.modules:
        by_mutant = statuses(work, module)
        result.per_file[repo_path(module, packages)] = Counter(by_mutant.values())
        result.counts.update(by_mutant.values())
        result.survivors += [(m, s) for m, s in sorted(by_mutant.items()) if s not in KILLED]
        paths.update(dict.fromkeys(by_mutant, work_path(module)))
    write_survivors(result, work, paths)
    return result


# What `mutmut show <name>` prints, for many mutants in one process (one `mutmut show` per
# survivor costs ~2 s of start-up each). Runs in the work folder; names on stdin.
END = "--- end of mutant ---"
SHOW = f"""
import sys
END = {END!r}
from mutmut.mutation.diff_apply import get_diff_for_mutant
for line in sys.stdin:
    name, _, path = line.strip().partition(" ")
    try:
        print(get_diff_for_mutant(name, path=path))
    except Exception as exc:
        print(f"(no diff: {{type(exc).__name__}}: {{exc}})")
    print(END, flush=True)
"""


def write_survivors(result: Result, work: Path, paths: dict[str, str]) -> None:
    path = OUT / f"{result.target.name}-survivors.txt"
    lines = [
        f"# {result.target.name}: {len(result.survivors)} of {result.total} mutants not killed",
        f"# tests: {' '.join(result.target.selection())}",
        f"# re-run one: cd {work.relative_to(ROOT)} && {sys.executable} -m mutmut run <name>",
        "# not killed, per function:",
    ]
    per_function = Counter(name.partition("__mutmut_")[0] for name, _ in result.survivors)
    lines += [f"#   {function}: {n}" for function, n in sorted(per_function.items())]
    lines.append("")
    if result.survivors:
        shown = subprocess.run(
            [sys.executable, "-c", SHOW],
            cwd=work,
            input="".join(f"{name} {paths[name]}\n" for name, _ in result.survivors),
            capture_output=True,
            text=True,
        )
        diffs = shown.stdout.split(END + "\n")
        if shown.returncode != 0 or len(diffs) < len(result.survivors):
            diffs = [f"(no diff: {shown.stderr.strip()[-500:]})"] * len(result.survivors)
        for (name, status), diff in zip(result.survivors, diffs, strict=False):
            lines += [f"## {name}: {status}", diff.strip(), ""]
    path.write_text("\n".join(lines) + "\n")


def _row(name: str, c: Counter[str], wall: str) -> tuple[str, ...]:
    total = sum(c.values())
    killed = sum(n for status, n in c.items() if status in KILLED)
    known = killed + c["survived"] + c["no tests"] + c["timeout"]
    score = 100.0 * killed / total if total else None
    return (
        name,
        str(total),
        str(killed),
        str(c["survived"]),
        str(c["no tests"]),
        str(c["timeout"]),
        str(total - known),
        "-" if score is None else f"{score:.1f}%",
        "-" if score is None else ("met" if score >= GOAL else "not met"),
        wall,
    )


def table(results: list[Result]) -> str:
    header = ("module", "mutants", "killed", "survived", "no tests", "timeout", "other")
    header += ("score", f"goal (>={GOAL:.0f}%)", "wall")
    rows = []
    for r in results:
        if r.error:
            rows.append((r.target.name, *["-"] * 6, "-", "could not run", f"{r.wall_s:.0f}s"))
            continue
        rows.append(_row(r.target.name, r.counts, f"{r.wall_s:.0f}s"))
        if len(r.per_file) > 1:  # one row per file of a multi-file module
            rows += [_row(f"  {Path(f).name}", c, "") for f, c in r.per_file.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(row) for row in rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-m",
        "--module",
        default="",
        help="comma-separated module names (default: all): " + ", ".join(t.name for t in TARGETS),
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=2, help="mutmut worker processes (default 2)"
    )
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-read the last run's results in .mutate/work instead of running mutmut",
    )
    parser.add_argument(
        "--strict", action="store_true", help=f"exit 1 when a module scores below {GOAL:.0f}%%"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    by_name = {t.name: t for t in TARGETS}
    names = [n.strip() for n in args.module.split(",") if n.strip()] or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {list(by_name)}", file=sys.stderr)
        return 2
    packages = find_packages()
    if args.list:
        for name in names:
            t = by_name[name]
            files = " ".join(repo_path(m, packages) for m in t.modules)
            print(f"{name}: {files}\n    tests: {' '.join(t.selection())}")
        return 0
    OUT.mkdir(exist_ok=True)
    results = []
    for name in names:
        target = by_name[name]
        verb = "reading the last run of" if args.report_only else "mutating"
        files = " ".join(repo_path(m, packages) for m in target.modules)
        print(f"== {name}: {verb} {files} ...", flush=True)
        result = run_target(target, args.jobs, packages, report_only=args.report_only)
        results.append(result)
        if result.error:
            print(f"   could not run: {result.error}", flush=True)
        else:
            print(
                f"   {result.killed}/{result.total} killed in {result.wall_s:.0f}s; "
                f"survivors: .mutate/{name}-survivors.txt",
                flush=True,
            )
    report = table(results)
    print("\nscore = killed / all mutants (timeout, no tests and other count as not killed)")
    print(report)
    (OUT / "summary.md").write_text(report + "\n")
    summary = {
        r.target.name: {
            "modules": list(r.target.modules),
            "tests": r.target.selection(),
            "counts": dict(r.counts),
            "per_file": {f: dict(c) for f, c in r.per_file.items()},
            "killed": r.killed,
            "total": r.total,
            "score": r.score,
            "wall_s": round(r.wall_s, 1),
            "error": r.error,
        }
        for r in results
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if any(r.error for r in results):
        return 1
    if args.strict and any((r.score or 0.0) < GOAL for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
