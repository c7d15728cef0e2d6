"""The export stage: ``kubetune-train --plan plan.json --stage export``.

Runs after training succeeded, as its own Job in the cluster (``kubetune export`` locally):

1. the export gate, when the spec has one: evaluate the trained model and stop with exit code 79
   (EXIT_GATE_NOT_MET) when the metric misses its bound;
2. merged safetensors (always built: GGUF and ONNX are converted from it; published only when
   asked for);
3. one GGUF file per requested type, one ONNX model with KV cache;
4. each artifact verified by a loader kubetune did not write; a failed verification fails the
   stage, after the manifest recorded why;
5. ``manifest.json`` beside the artifacts, then the artifact list into the job's
   ``status.artifacts`` (in the cluster).

The artifacts are built in a scratch directory and moved (or uploaded, for s3://) into the
export directory only when all of them verified, so a retried export never leaves a mix of two
attempts' files behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.gate import evaluate_gate
from kubetune_trainer.exit_codes import (
    EXIT_FAILED,
    EXIT_GATE_NOT_MET,
    EXIT_INVALID_PLAN,
    EXIT_OK,
    EXIT_PREEMPTED,
)
from kubetune_trainer.export.errors import ExportError, UnsupportedArchitecture, VerificationFailed
from kubetune_trainer.export.manifest import MANIFEST, Artifact, Manifest
from kubetune_trainer.export.verification import Verification
from kubetune_trainer.plan import Plan
from kubetune_trainer.reporting.kube_status import KubernetesReporter, ReportError
from kubetune_trainer.training.checkpoints import CheckpointStore
from kubetune_trainer.uris import fetch_s3, local_storage, upload_dir

log = logging.getLogger("kubetune.export")


@dataclass
class ExportOutcome:
    manifest: Manifest
    export_uri: str
    gate_met: bool
    message: str


def trained_model_dir(plan: Plan) -> Path:
    path = local_storage(plan.storage.output_dir)
    if path is not None:
        return path
    return fetch_s3(plan.storage.output_dir)


def latest_checkpoint(plan: Plan) -> dict[str, Any] | None:
    root = local_storage(plan.storage.root)
    if root is None:
        return None
    latest = CheckpointStore(root / plan.storage.run_name).latest()
    return None if latest is None else {"step": latest.step, "attempt": latest.attempt}


def build_artifacts(
    plan: Plan, model_dir: Path, work: Path, step: Callable[[str], None]
) -> list[Artifact]:
    """Every requested artifact, built and verified under ``work``."""
    from kubetune_trainer.export.merge import merge_to_safetensors

    spec = plan.recipe.export
    assert spec is not None
    formats = spec.formats
    merged = work / "safetensors"
    step("merge")
    artifacts = [Artifact.of("safetensors", work, merged, merge_to_safetensors(model_dir, merged))]
    if "gguf" in formats:
        from kubetune_trainer.export.gguf_export import convert_to_gguf, verify_gguf

        for out_type in spec.gguf.types:
            step(f"gguf-{out_type}")
            path = work / "gguf" / f"{plan.job.name}-{out_type}.gguf"
            path.parent.mkdir(parents=True, exist_ok=True)
            convert_to_gguf(merged, path, out_type)
            verification = verify_gguf(merged, path, out_type)
            artifacts.append(Artifact.of(f"gguf-{out_type}", work, path, verification))
    if "onnx" in formats:
        from kubetune_trainer.export.onnx_export import export_onnx, verify_onnx

        step("onnx")
        onnx_dir = work / "onnx"
        model_file = export_onnx(merged, onnx_dir)
        artifacts.append(Artifact.of("onnx", work, onnx_dir, verify_onnx(merged, model_file)))
    if "safetensors" not in formats:
        shutil.rmtree(merged)
        artifacts = artifacts[1:]
    return artifacts


def publish(work: Path, export_uri: str) -> None:
    """Move the verified artifacts (and the manifest, last) into the export location."""
    target = local_storage(export_uri)
    if target is None:
        manifest_dir = Path(tempfile.mkdtemp(prefix="kubetune-manifest-"))
        (work / MANIFEST).replace(manifest_dir / MANIFEST)
        upload_dir(work, export_uri)
        upload_dir(manifest_dir, export_uri)
        shutil.rmtree(manifest_dir, ignore_errors=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    shutil.move(str(work), str(target))
    shutil.rmtree(previous, ignore_errors=True)


def scratch_dir(plan: Plan) -> Path:
    """A fresh build directory: beside the export directory when it is local (so publishing is
    a rename on the same filesystem), else in the temp dir."""
    target = local_storage(plan.storage.export_dir)
    parent = target.parent if target is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".export-{plan.job.name}-a{plan.attempt}-"))


def run_export(plan: Plan, step: Callable[[str], None] | None = None) -> ExportOutcome:
    """Gate, build, verify and publish the plan's artifacts (see the module docstring)."""
    spec = plan.recipe.export
    if spec is None:
        raise ExportError("the plan has no export section")
    announce = step or (lambda name: None)
    model_dir = trained_model_dir(plan)
    if not model_dir.is_dir():
        raise ExportError(f"no trained model at {plan.storage.output_dir}; did training finish?")
    manifest = Manifest(
        job=f"{plan.job.namespace}/{plan.job.name}",
        source=plan.storage.output_dir,
        checkpoint=latest_checkpoint(plan),
    )
    if spec.gate is not None:
        announce("gate")
        passed, manifest.gate = evaluate_gate(plan, model_dir)
        log.info("event=export_gate job=%s %s", plan.job.name, manifest.gate["message"])
        if not passed:
            # The manifest alone records why nothing was exported.
            work = scratch_dir(plan)
            manifest.write(work)
            publish(work, plan.storage.export_dir)
            return ExportOutcome(manifest, plan.storage.export_dir, False, manifest.gate["message"])

    work = scratch_dir(plan)
    try:
        manifest.artifacts = build_artifacts(plan, model_dir, work, announce)
        manifest.write(work)
        failed = [a for a in manifest.artifacts if not a.verification.ok]
        if failed:
            details = "; ".join(f"{a.format}: {describe(a.verification)}" for a in failed)
            raise VerificationFailed(f"verification failed for {details}")
        publish(work, plan.storage.export_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportOutcome(
        manifest,
        plan.storage.export_dir,
        True,
        f"exported {len(manifest.artifacts)} verified artifact(s) to {plan.storage.export_dir}",
    )


def describe(verification: Verification) -> str:
    greedy = "same greedy tokens" if verification.greedy_match else "different greedy tokens"
    return (
        f"{verification.loader} max |logit diff| {verification.max_abs_logit_diff:.2e} "
        f"(tolerance {verification.tolerance:.0e}), {greedy}"
    )


def report_to_job(outcome: ExportOutcome) -> None:
    """status.artifacts of the own job, when running in the cluster."""
    if os.environ.get("KUBETUNE_PROGRESS") != "kubernetes":
        return
    entries = [a.status_entry(outcome.export_uri) for a in outcome.manifest.artifacts]
    try:
        KubernetesReporter().patch({"status": {"artifacts": entries}})
    except ReportError as err:
        raise ExportError(
            f"artifacts exported but not recorded in the job's status: {err}"
        ) from None


def write_termination_message(message: str) -> None:
    """The pod's termination message (read by the operator for the job's condition)."""
    configured = os.environ.get("KUBETUNE_TERMINATION_LOG")
    path = Path(configured or "/dev/termination-log")
    if not configured and not path.exists():
        return  # not in a pod: the kubelet creates the file
    try:
        path.write_text(message[:4000])
    except OSError:
        log.warning("event=termination_message_unwritable path=%s", path)


class Interrupted(Exception):
    """SIGTERM (eviction, node drain): the export stops; the next export attempt starts over."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def main(plan: Plan) -> int:
    """The stage's process: exit 0 exported, 79 gate not met, 78 cannot export this model,
    75 interrupted by SIGTERM (a disruption), 1 failed (the operator retries the export
    alone). Every non-zero exit leaves its reason as the pod's termination message."""
    started = time.monotonic()

    def step(name: str) -> None:
        log.info(
            "event=export_step job=%s step=%s elapsed=%.1fs",
            plan.job.name,
            name,
            time.monotonic() - started,
        )

    def stop(code: int, event: str, message: str) -> int:
        log.error("event=%s job=%s message=%s", event, plan.job.name, message)
        write_termination_message(message)
        return code

    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        outcome = run_export(plan, step)
        report_to_job(outcome)
    except Interrupted:
        return stop(EXIT_PREEMPTED, "export_interrupted", "SIGTERM: export stopped")
    except UnsupportedArchitecture as err:
        return stop(EXIT_INVALID_PLAN, "export_refused", str(err))
    except ExportError as err:
        return stop(EXIT_FAILED, "export_failed", str(err))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not outcome.gate_met:
        log.warning("event=export_skipped job=%s message=%s", plan.job.name, outcome.message)
        print(outcome.message)
        write_termination_message(outcome.message)
        return EXIT_GATE_NOT_MET
    log.info("event=exported job=%s message=%s", plan.job.name, outcome.message)
    return EXIT_OK


__all__ = ["ExportOutcome", "main", "run_export"]
