# ruff: noqa: E501  (the case tables read best one case per line)
"""The FineTuneJob schema: every method section accepts what it should and refuses what it
should, with the field path and a message a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.validation import load_jobs


def problems_of(write_yaml, job: dict[str, Any]) -> list[tuple[str, str]]:
    jobs, problems = load_jobs([write_yaml(job)])
    assert bool(jobs) != bool(problems)
    return [(p.path, p.message) for p in problems]


def set_in(job: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target = job
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return job


RM = {"type": "model", "model": {"source": "finetunejob://rm"}}
CRITIC = {
    "endpoint": "http://critic.models.svc:8000/v1",
    "model": "critic",
    "apiKeySecret": {"name": "critic", "key": "token"},
}
CRITIQUE = {"critic": CRITIC, "rewards": [{"type": "answerMatch"}]}
DATASET = {"uri": "data/eval.jsonl"}
JUDGE = {"endpoint": "http://judge.models.svc:8000/v1", "model": "judge"}

# (description, changes to the base SFT job) — each must be accepted.
VALID = [
    ("sft with lora and packing", {"spec.peft": {"type": "lora", "r": 8}, "spec.training.packing": True}),
    ("dpo defaults", {"spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}]}),
    ("dpo on its own answers to prompts", {"spec.method": "dpo", "spec.data.sources": [{"uri": "builtin://arithmetic-prompts"}], "spec.dpo": {"onPolicy": {"samples": 4}}}),
    ("dpo explicit reference", {"spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.dpo": {"beta": 0.3, "lossType": "ipo", "referenceModel": {"source": "hf://org/ref", "revision": "v1"}}}),
    ("reward with centring", {"spec.method": "reward", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.reward": {"centerRewardsCoefficient": 0.01}}),
    ("ppo adaptive kl", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM], "adaptiveKl": {"target": 6}}}),
    ("ppo rule rewards", {"spec.method": "ppo", "spec.ppo": {"rewards": [{"type": "length", "targetLength": 50}, {"type": "regex", "pattern": "^ok"}, {"type": "answerMatch", "match": "numeric"}, {"type": "externalColumn"}], "blendAlpha": 0.3}}),
    ("grpo", {"spec.method": "grpo", "spec.grpo": {"rewards": [{"type": "answerMatch"}], "numGenerations": 4}}),
    ("rloo", {"spec.method": "grpo", "spec.grpo": {"variant": "rloo", "rewards": [RM]}}),
    ("grpo named objectives", {"spec.method": "grpo", "spec.grpo": {"rewards": [{**RM, "name": "fluency", "weight": 0.3, "normalize": "running"}, {"name": "faithfulness", "type": "answerMatch", "weight": 0.3}, {"name": "quality", "type": "judge", "judge": JUDGE, "weight": 0.4, "normalize": "running"}]}}),
    ("ppo named objectives", {"spec.method": "ppo", "spec.ppo": {"rewards": [{**RM, "name": "fluency"}, {"type": "length", "targetLength": 50, "normalize": "running"}]}}),
    ("eval", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": DATASET}, {"name": "acc", "type": "accuracy", "extractor": "lastNumber", "dataset": DATASET}, {"name": "code", "type": "passAtK", "k": [1, 5], "samples": 10, "dataset": DATASET}]}}),
    ("eval gate on training job", {"spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET}]}, "spec.export": {"formats": ["gguf"], "gate": {"metric": "acc", "min": 0.5}}}),
    ("eval side by side with lm-eval tasks", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "mmlu", "type": "lmEval", "task": "mmlu", "dataDir": "pvc://bench/staged", "numFewshot": 5, "limit": 100}, {"name": "arith", "type": "lmEval", "task": "arithmetic", "taskDirs": ["builtin://arithmetic", "s3://tasks/mine"], "chatTemplate": True}], "models": [{"name": "base", "source": "builtin://tiny-llama"}, {"name": "sft", "source": "finetunejob://sft"}], "modelName": "dpo", "baseline": "base", "confidence": 0.9}}),
    ("model from a sweep's best trial", {"spec.model": {"source": "finetunejob://lr-sweep/best"}}),
    ("gate against a baseline", {"spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET}]}, "spec.export": {"gate": {"metric": "acc", "baseline": {"source": "finetunejob://prod"}, "noWorseThan": 0.01}}}),
    ("early stopping and best model", {"spec.data.evalRatio": 0.1, "spec.training.evalEverySteps": 10, "spec.training.earlyStopping": {"metric": "eval_loss", "patience": 2, "minDelta": 0.001}, "spec.training.bestModel": {"metric": "perplexity"}}),
    ("deepspeed zero3 offload", {"spec.deepspeed": {"zeroStage": 3, "offloadParams": True, "offloadOptimizer": True}}),
    ("trlArgs checked against SFTConfig", {"spec.training.trlArgs": {"assistant_only_loss": True, "packing_strategy": "bfd"}}),
    ("platform sections", {"spec.resources": {"nodes": 4, "gpusPerNode": 8, "memory": "900Gi", "cpu": "96", "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}, "spec.runtime": {"launcher": "rayjob", "queueName": "team-a", "suspend": True}, "spec.resume": {"maxRestarts": 5}, "spec.ttlSecondsAfterFinished": 60, "spec.activeDeadlineSeconds": 3600}),
    ("checkpoint by time", {"spec.checkpoint": {"storage": "s3://bucket/ckpt", "every": "1h30m", "keepLast": 5}}),
    ("tracking with secret", {"spec.tracking": {"backend": "wandb", "project": "p", "apiKeySecret": {"name": "wandb", "key": "key"}}}),
    ("env secrets", {"spec.envSecrets": {"AWS_ACCESS_KEY_ID": {"name": "s3", "key": "id"}}}),
    ("whole number written as a float", {"spec.training": {"maxSteps": 10.0, "epochs": 2}}),
    ("hub ids", {"spec.model": {"source": "hf://gpt2"}, "spec.data.sources": [{"uri": "hf://org/data.set_v-2"}]}),
    ("plan's conversation format", {"spec.data.sources": [{"uri": "c.jsonl", "format": "conversation", "columns": {"score": "rating", "scoreReason": "why"}}]}),
    ("curriculum by column, staged", {"spec.training.curriculum": {"difficulty": "column", "column": "level", "higherIsEasier": True, "pacing": "stages", "stages": 4, "fullAt": 0.6}}),
    ("curriculum by reference loss", {"spec.training.curriculum": {"difficulty": "referenceLoss", "referenceModel": {"source": "finetunejob://ref"}, "startShare": 0.3}}),
    ("score conditioning", {"spec.training.scoreConditioning": {"prefix": "<|quality {score}|>", "decimals": 0}}),
    ("contrastive term on sft", {"spec.training.contrastive": {"weight": 0.2, "temperature": 0.05, "pooling": "mean"}}),
    ("contrastive term on dpo, pair negatives", {"spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.training.contrastive": {"negatives": "pair"}}),
    ("conversation formats", {"spec.model.conversationFormat": "turnMarkers"}),
    ("self-critique by an endpoint", {"spec.selfCritique": {"critic": CRITIC, "rewards": [{"type": "answerMatch"}], "critiqueWeight": 1, "samples": 2, "temperature": 0.8}}),
    ("self-critique by the policy", {"spec.model.source": "hf://Qwen/Qwen2.5-7B-Instruct", "spec.selfCritique": {"critic": {"policy": True}, "rewards": [RM], "rounds": 2}}),
    ("jinja template with generation markers", {"spec.model.chatTemplate": "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"}),
    ("eval asks a score", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET, "score": 1.5}]}}),
]  # fmt: skip

# (description, changes, expected field path, fragment of the message)
INVALID = [
    ("unknown method", {"spec.method": "ppo2"}, "spec.method", "'sft', 'dpo', 'reward', 'ppo', 'grpo' or 'eval'"),
    ("bad model scheme", {"spec.model.source": "gs://b/m"}, "spec.model.source", "unsupported scheme 'gs://'"),
    ("unknown builtin", {"spec.model.source": "builtin://huge"}, "spec.model.source", "unknown builtin 'huge'"),
    ("unknown chat template", {"spec.model.chatTemplate": "vicuna"}, "spec.model.chatTemplate", "neither a known template"),
    ("no data", {"spec.data": None}, "spec.data", "method sft needs training data"),
    ("empty sources", {"spec.data.sources": []}, "spec.data.sources", "at least 1 item"),
    ("bad data format", {"spec.data.sources": [{"uri": "a.jsonl", "format": "chat"}]}, "spec.data.sources[0].format", "'messages'"),
    ("zero weight", {"spec.data.sources": [{"uri": "a.jsonl", "weight": 0}]}, "spec.data.sources[0].weight", "greater than 0"),
    ("bad row policy", {"spec.data.badRows": "ignore"}, "spec.data.badRows", "'fail' or 'skip'"),
    ("negative lr", {"spec.training.learningRate": -1}, "spec.training.learningRate", "greater than 0"),
    ("bad precision", {"spec.training.precision": "int8"}, "spec.training.precision", "'auto', 'bf16', 'fp16' or 'fp32'"),
    ("trlArgs typo", {"spec.training.trlArgs": {"assistant_only_los": True}}, "spec.training.trlArgs.assistant_only_los", "did you mean 'assistant_only_loss'"),
    ("trlArgs wrong type", {"spec.training.trlArgs": {"assistant_only_loss": "yes"}}, "spec.training.trlArgs.assistant_only_loss", "takes boolean, not string"),
    ("trlArgs owned", {"spec.training.trlArgs": {"learning_rate": 0.1}}, "spec.training.trlArgs.learning_rate", "use spec.training.learningRate"),
    ("trlArgs for ppo", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM]}, "spec.training.trlArgs": {"x": 1}}, "spec.training.trlArgs", "kubetune's own trainer"),
    ("bad peft type", {"spec.peft": {"type": "ia3"}}, "spec.peft.type", "'none', 'lora' or 'qlora'"),
    ("qlora on cpu", {"spec.peft": {"type": "qlora"}, "spec.resources": {"gpusPerNode": 0}}, "spec.peft.type", "qlora needs GPUs"),
    ("dpo section on sft", {"spec.dpo": {"beta": 0.1}}, "spec.dpo", "method is 'sft'"),
    ("dpo beta", {"spec.method": "dpo", "spec.dpo": {"beta": 0}}, "spec.dpo.beta", "greater than 0"),
    ("dpo loss type", {"spec.method": "dpo", "spec.dpo": {"lossType": "kto"}}, "spec.dpo.lossType", "'sigmoid'"),
    ("dpo bad reference", {"spec.method": "dpo", "spec.dpo": {"referenceModel": {"source": "ftp://x"}}}, "spec.dpo.referenceModel.source", "unsupported scheme"),
    ("reward negative centring", {"spec.method": "reward", "spec.reward": {"centerRewardsCoefficient": -1}}, "spec.reward.centerRewardsCoefficient", "greater than or equal to 0"),
    ("ppo without rewards", {"spec.method": "ppo"}, "spec.ppo.rewards", "at least one reward"),
    ("ppo model reward without model", {"spec.method": "ppo", "spec.ppo": {"rewards": [{"type": "model"}]}}, "spec.ppo.rewards[0]", "needs 'model'"),
    ("ppo length without target", {"spec.method": "ppo", "spec.ppo": {"rewards": [{"type": "length"}]}}, "spec.ppo.rewards[0]", "needs 'targetLength'"),
    ("ppo bad regex", {"spec.method": "ppo", "spec.ppo": {"rewards": [{"type": "regex", "pattern": "(("}]}}, "spec.ppo.rewards[0]", "not a valid regular expression"),
    ("ppo minibatch", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM], "rolloutBatchSize": 4, "miniBatchSize": 8}}, "spec.ppo", "miniBatchSize (8) exceeds rolloutBatchSize (4)"),
    ("ppo alpha", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM], "blendAlpha": 1.5}}, "spec.ppo.blendAlpha", "less than or equal to 1"),
    ("ppo kl target", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM], "adaptiveKl": {"target": 0}}}, "spec.ppo.adaptiveKl.target", "greater than 0"),
    ("ppo clip", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM], "clipRange": 0}}, "spec.ppo.clipRange", "greater than 0"),
    ("objective named twice", {"spec.method": "grpo", "spec.grpo": {"rewards": [{**RM, "name": "fluency"}, {"type": "regex", "pattern": "a"}, {"type": "answerMatch", "name": "fluency"}]}}, "spec.grpo.rewards[2].name", "objective 'fluency' is named twice"),
    ("ppo objective named twice", {"spec.method": "ppo", "spec.ppo": {"rewards": [{**RM, "name": "fluency"}, {**RM, "name": "fluency"}]}}, "spec.ppo.rewards[1].name", "objective names must be unique"),
    ("objective name not lowercase", {"spec.method": "grpo", "spec.grpo": {"rewards": [{**RM, "name": "Fluency"}]}}, "spec.grpo.rewards[0].name", "should match pattern '^[a-z][a-z0-9_]*$'"),
    ("unknown normalisation", {"spec.method": "grpo", "spec.grpo": {"rewards": [{**RM, "normalize": "zscore"}]}}, "spec.grpo.rewards[0].normalize", "'none' or 'running'"),
    ("judge reward without judge", {"spec.method": "grpo", "spec.grpo": {"rewards": [{"type": "judge", "name": "quality"}]}}, "spec.grpo.rewards[0]", "a judge reward needs 'judge'"),
    ("pairwise judge reward", {"spec.method": "grpo", "spec.grpo": {"rewards": [{"type": "judge", "judge": {**JUDGE, "mode": "pairwise"}}]}}, "spec.grpo.rewards[0].judge.mode", "use mode single"),
    ("grpo without rewards", {"spec.method": "grpo", "spec.grpo": {"numGenerations": 4}}, "spec.grpo.rewards", "at least one reward"),
    ("grpo one generation", {"spec.method": "grpo", "spec.grpo": {"rewards": [RM], "numGenerations": 1}}, "spec.grpo.numGenerations", "greater than or equal to 2"),
    ("grpo variant", {"spec.method": "grpo", "spec.grpo": {"rewards": [RM], "variant": "ppo"}}, "spec.grpo.variant", "'grpo' or 'rloo'"),
    ("eval without metrics", {"spec.method": "eval", "spec.eval": {"metrics": []}}, "spec.eval.metrics", "at least one metric"),
    ("eval duplicate names", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "perplexity", "dataset": DATASET}] * 2}}, "spec.eval.metrics", "repeated: a"),
    ("eval bad name", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "Bad Name", "type": "perplexity", "dataset": DATASET}]}}, "spec.eval.metrics[0].name", "pattern"),
    ("eval regex without pattern", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "accuracy", "extractor": "regex", "dataset": DATASET}]}}, "spec.eval.metrics[0]", "extractor regex needs 'pattern'"),
    ("pass@k samples", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "passAtK", "k": [1, 10], "samples": 5, "dataset": DATASET}]}}, "spec.eval.metrics[0]", "samples (5) must be at least max(k) (10)"),
    ("win rate without models", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "winRate", "dataset": DATASET}]}}, "spec.eval.metrics[0]", "needs baselineModel and rewardModel"),
    ("judge without judge", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "judge", "dataset": DATASET}]}}, "spec.eval.metrics[0]", "needs 'judge'"),
    ("pairwise judge without baseline", {"spec.method": "eval", "spec.eval": {"metrics": [{"name": "a", "type": "judge", "dataset": DATASET, "judge": {"endpoint": "http://j/v1", "model": "m", "mode": "pairwise"}}]}}, "spec.eval.metrics[0]", "pairwise judge needs 'baselineModel'"),
    ("plain dpo on prompts", {"spec.method": "dpo", "spec.data.sources": [{"uri": "builtin://arithmetic-prompts"}]}, "spec.data.sources[0].format", "format prompt-only (the format of builtin://arithmetic-prompts) cannot feed method dpo"),
    ("dpo on messages", {"spec.method": "dpo"}, "spec.data.sources[0].format", "format messages cannot feed method dpo, which trains on preference rows; use one of preference, hh-rlhf"),
    ("reward on prompts", {"spec.method": "reward", "spec.data.evalSources": [{"uri": "builtin://arithmetic-prompts"}], "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}]}, "spec.data.evalSources[0].format", "format prompt-only (the format of builtin://arithmetic-prompts) cannot feed method reward"),
    ("s3 without bucket", {"spec.model": {"source": "s3:///models/x"}}, "spec.model.source", "'s3:///models/x' names no bucket"),
    ("pvc without claim", {"spec.checkpoint": {"storage": "pvc:///ckpt"}}, "spec.checkpoint.storage", "names no claim"),
    ("hub id with a command", {"spec.model": {"source": "hf://org/name; rm -rf /"}}, "spec.model.source", "is not a Hub repository id"),
    ("hub id with two slashes", {"spec.dpo": {"referenceModel": {"source": "hf://a/b/c"}}, "spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}]}, "spec.dpo.referenceModel.source", "is not a Hub repository id"),
    ("job reference", {"spec.model": {"source": "finetunejob://Not_A_Name"}}, "spec.model.source", "is not a FineTuneJob name"),
    ("sweep reference", {"spec.model": {"source": "finetunejob://a-sweep-name-longer-than-forty-two-characters/best"}}, "spec.model.source", "is not a FineTuneSweep name (a DNS label of at most 42 characters)"),
    ("reference path", {"spec.model": {"source": "finetunejob://lr/worst"}}, "spec.model.source", "is not a FineTuneJob name (a DNS label of at most 49 characters), nor SWEEP/best"),
    ("judge without host", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "a", "type": "judge", "dataset": DATASET, "judge": {"endpoint": "http:///v1", "model": "m"}}]}}, "spec.eval.metrics[0].judge.endpoint", "is not an http(s) URL with a host"),
    ("number as a string", {"spec.training": {"learningRate": "1e-4"}}, "spec.training.learningRate", "Input should be a valid number"),
    ("integer as a string", {"spec.training": {"maxSteps": "10"}}, "spec.training.maxSteps", "Input should be a valid integer"),
    ("boolean as a string", {"spec.training": {"packing": "true"}}, "spec.training.packing", "Input should be a valid boolean"),
    ("fractional integer", {"spec.training": {"maxSteps": 2.5}}, "spec.training.maxSteps", "Input should be a valid integer"),
    ("integer beyond 64 bits", {"spec.training": {"seed": 2**64}}, "spec.training.seed", "integers have 64 bits"),
    ("infinite epochs", {"spec.training": {"epochs": float("inf")}}, "spec.training.epochs", "finite number"),
    ("gate on unknown metric", {"spec.export": {"gate": {"metric": "acc", "min": 1}}}, "spec.export.gate.metric", "not a metric in spec.eval.metrics"),
    ("gate without bound", {"spec.export": {"gate": {"metric": "acc"}}}, "spec.export.gate", "needs 'min', 'max', 'noWorseThan' or 'significantlyBetter'"),
    ("gate comparison without baseline", {"spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET}]}, "spec.export": {"gate": {"metric": "acc", "noWorseThan": 0.02}}}, "spec.export.gate", "compare with 'baseline'"),
    ("gate baseline without rule", {"spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET}]}, "spec.export": {"gate": {"metric": "acc", "min": 0.5, "baseline": {"source": "builtin://tiny-llama"}}}}, "spec.export.gate", "'baseline' needs 'noWorseThan' or 'significantlyBetter'"),
    ("lmEval without task", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "mmlu", "type": "lmEval"}]}}, "spec.eval.metrics[0]", "an lmEval metric needs 'task'"),
    ("lmEval with a dataset", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "mmlu", "type": "lmEval", "task": "mmlu", "dataset": DATASET}]}}, "spec.eval.metrics[0]", "use dataDir, not dataset"),
    ("task option on accuracy", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "a", "type": "accuracy", "dataset": DATASET, "numFewshot": 5}]}}, "spec.eval.metrics[0]", "numFewshot: for lmEval metrics only"),
    ("accuracy without dataset", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "a", "type": "accuracy"}]}}, "spec.eval.metrics[0]", "a accuracy metric needs 'dataset'"),
    ("unknown builtin task folder", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "a", "type": "lmEval", "task": "x", "taskDirs": ["builtin://mmlu"]}]}}, "spec.eval.metrics[0].taskDirs", "unknown builtin 'mmlu'; choose one of arithmetic"),
    ("task folder scheme", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "a", "type": "lmEval", "task": "x", "dataDir": "hf://cais/mmlu"}]}}, "spec.eval.metrics[0].dataDir", "unsupported scheme 'hf://'"),
    ("baseline not a model", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": DATASET}], "models": [{"name": "base", "source": "builtin://tiny-llama"}], "baseline": "sft"}}, "spec.eval.baseline", "'sft' is not the name of a model in eval.models or eval.modelName (base)"),
    ("repeated model names", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": DATASET}], "models": [{"name": "base", "source": "builtin://tiny-llama"}] * 2}}, "spec.eval.models", "repeated: base"),
    ("models on a training job", {"spec.eval": {"metrics": [{"name": "acc", "type": "accuracy", "dataset": DATASET}], "models": [{"name": "base", "source": "builtin://tiny-llama"}]}, "spec.export": {"gate": {"metric": "acc", "min": 0.5}}}, "spec.eval.models", "for method eval only"),
    ("early stopping without held-out data", {"spec.training.earlyStopping": {"metric": "eval_loss"}}, "spec.training.earlyStopping", "needs held-out data"),
    ("best model for ppo", {"spec.method": "ppo", "spec.ppo": {"rewards": [RM]}, "spec.training.bestModel": {"metric": "loss"}}, "spec.training.bestModel", "method ppo has no held-out evaluation"),
    ("best model with zero3", {"spec.data.evalRatio": 0.1, "spec.deepspeed": {"zeroStage": 3}, "spec.training.bestModel": {"metric": "loss"}}, "spec.training.bestModel", "not available with deepspeed.zeroStage 3"),
    ("early stopping patience", {"spec.data.evalRatio": 0.1, "spec.training.earlyStopping": {"patience": 0}}, "spec.training.earlyStopping.patience", "greater than or equal to 1"),
    ("export format", {"spec.export": {"formats": ["pt"]}}, "spec.export.formats[0]", "'safetensors', 'gguf' or 'onnx'"),
    ("export duplicate format", {"spec.export": {"formats": ["gguf", "gguf"]}}, "spec.export.formats", "each format may appear once"),
    ("gguf type", {"spec.export": {"gguf": {"types": ["q2_k"]}}}, "spec.export.gguf.types[0]", "'q8_0'"),
    ("trlArgs overriding a grpo field", {"spec.method": "grpo", "spec.grpo": {"rewards": [RM]}, "spec.training.trlArgs": {"temperature": 0.3}}, "spec.training.trlArgs.temperature", "use spec.grpo.temperature instead"),
    ("export of an eval job", {"spec.method": "eval", "spec.data": None, "spec.eval": {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": DATASET}]}, "spec.export": {"formats": ["safetensors"]}}, "spec.export", "method eval trains no model"),
    ("gguf of a reward model", {"spec.method": "reward", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.export": {"formats": ["safetensors", "gguf"]}}, "spec.export.formats", "safetensors only, not gguf"),
    ("deepspeed offload params", {"spec.deepspeed": {"zeroStage": 2, "offloadParams": True}}, "spec.deepspeed", "offloadParams needs zeroStage 3"),
    ("deepspeed stage", {"spec.deepspeed": {"zeroStage": 4}}, "spec.deepspeed.zeroStage", "0, 1, 2 or 3"),
    ("checkpoint duration", {"spec.checkpoint": {"every": "soon"}}, "spec.checkpoint.every", "not a duration"),
    ("checkpoint storage scheme", {"spec.checkpoint": {"storage": "hf://org/x"}}, "spec.checkpoint.storage", "unsupported scheme 'hf://'"),
    ("nodes zero", {"spec.resources": {"nodes": 0}}, "spec.resources.nodes", "greater than or equal to 1"),
    ("memory quantity", {"spec.resources": {"memory": "lots"}}, "spec.resources.memory", "pattern"),
    ("launcher", {"spec.runtime": {"launcher": "mpi"}}, "spec.runtime.launcher", "'auto', 'job' or 'rayjob'"),
    ("toleration operator", {"spec.resources": {"tolerations": [{"operator": "In"}]}}, "spec.resources.tolerations[0].operator", "'Exists' or 'Equal'"),
    ("backoff order", {"spec.resume": {"backoffSeconds": 100, "maxBackoffSeconds": 10}}, "spec.resume.maxBackoffSeconds", "at least resume.backoffSeconds"),
    ("env var name", {"spec.envSecrets": {"BAD-NAME": {"name": "s", "key": "k"}}}, "spec.envSecrets.BAD-NAME", "pattern"),
    ("secret without key", {"spec.model.tokenSecret": {"name": "hf"}}, "spec.model.tokenSecret.key", "required field is missing"),
    ("name too long", {"metadata.name": "x" * 50}, "metadata.name", "at most 49 characters"),
    ("name not a DNS label", {"metadata.name": "My_Job"}, "metadata.name", "pattern"),
    ("wrong apiVersion", {"apiVersion": "kubetune.io/v1"}, "apiVersion", "'kubetune.io/v1alpha1'"),
    ("curriculum on dpo", {"spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.training.curriculum": {"difficulty": "length"}}, "spec.training.curriculum", "applies to method sft, not dpo"),
    ("curriculum column missing", {"spec.training.curriculum": {"difficulty": "column"}}, "spec.training.curriculum.column", "needs the column"),
    ("curriculum column for length", {"spec.training.curriculum": {"difficulty": "length", "column": "x"}}, "spec.training.curriculum.column", "difficulty length reads no column"),
    ("curriculum model for length", {"spec.training.curriculum": {"difficulty": "length", "referenceModel": {"source": "builtin://tiny-llama"}}}, "spec.training.curriculum.referenceModel", "only difficulty referenceLoss"),
    ("curriculum signal", {"spec.training.curriculum": {"difficulty": "random"}}, "spec.training.curriculum.difficulty", "'column', 'length' or 'referenceLoss'"),
    ("curriculum start share", {"spec.training.curriculum": {"difficulty": "length", "startShare": 0}}, "spec.training.curriculum.startShare", "greater than 0"),
    ("curriculum one stage", {"spec.training.curriculum": {"difficulty": "length", "stages": 1}}, "spec.training.curriculum.stages", "greater than or equal to 2"),
    ("score conditioning on grpo", {"spec.method": "grpo", "spec.grpo": {"rewards": [RM]}, "spec.training.scoreConditioning": {}}, "spec.training.scoreConditioning", "applies to method sft, not grpo"),
    ("score prefix without placeholder", {"spec.training.scoreConditioning": {"prefix": "<good> "}}, "spec.training.scoreConditioning.prefix", "must contain {score} exactly once"),
    ("contrastive temperature zero", {"spec.training.contrastive": {"temperature": 0}}, "spec.training.contrastive.temperature", "greater than 0"),
    ("contrastive weight negative", {"spec.training.contrastive": {"weight": -0.1}}, "spec.training.contrastive.weight", "greater than 0"),
    ("contrastive negatives unknown", {"spec.training.contrastive": {"negatives": "hard"}}, "spec.training.contrastive.negatives", "'pair' or 'inBatch'"),
    ("contrastive pair on sft", {"spec.training.contrastive": {"negatives": "pair"}}, "spec.training.contrastive.negatives", "pair needs a rejected response (method dpo)"),
    ("contrastive in a batch of one", {"spec.training": {"perDeviceBatchSize": 1, "contrastive": {}}}, "spec.training.contrastive.negatives", "perDeviceBatchSize to at least 2"),
    ("contrastive on text rows", {"spec.data.sources": [{"uri": "t.jsonl", "format": "text"}], "spec.training.contrastive": {}}, "spec.data.sources[0].format", "format text has no prompt"),
    ("contrastive with packing", {"spec.training": {"packing": True, "contrastive": {}}}, "spec.training.contrastive", "set training.packing to false"),
    ("contrastive on reward", {"spec.method": "reward", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.training.contrastive": {}}, "spec.training.contrastive", "applies to methods sft and dpo, not reward"),
    ("conversation format unknown", {"spec.model.conversationFormat": "role_markers"}, "spec.model.conversationFormat", "'standard', 'roleMarkers' or 'turnMarkers'"),
    ("conversation format with a template", {"spec.model.conversationFormat": "roleMarkers", "spec.model.chatTemplate": "chatml"}, "spec.model.chatTemplate", "brings its own template"),
    ("self-critique weight zero", {"spec.selfCritique": {**CRITIQUE, "critiqueWeight": 0}}, "spec.selfCritique.critiqueWeight", "must be above 0 and at most 1"),
    ("self-critique weight above one", {"spec.selfCritique": {**CRITIQUE, "critiqueWeight": 1.5}}, "spec.selfCritique.critiqueWeight", "must be above 0 and at most 1"),
    ("self-critique on dpo", {"spec.method": "dpo", "spec.data.sources": [{"uri": "p.jsonl", "format": "preference"}], "spec.selfCritique": CRITIQUE}, "spec.selfCritique", "applies to method sft, not dpo"),
    ("self-critique without rewards", {"spec.selfCritique": {"critic": CRITIC, "rewards": []}}, "spec.selfCritique.rewards", "at least 1 item"),
    ("self-critique critic unnamed", {"spec.selfCritique": {**CRITIQUE, "critic": {"model": "m"}}}, "spec.selfCritique.critic.endpoint", "or policy: true"),
    ("self-critique critic without model", {"spec.selfCritique": {**CRITIQUE, "critic": {"endpoint": "http://critic:8000/v1"}}}, "spec.selfCritique.critic.model", "the model name"),
    ("self-critique critic both", {"spec.selfCritique": {**CRITIQUE, "critic": {**CRITIC, "policy": True}}}, "spec.selfCritique.critic.endpoint", "the critic is the policy"),
    ("self-critique by a builtin policy", {"spec.selfCritique": {**CRITIQUE, "critic": {"policy": True}}}, "spec.selfCritique.critic.policy", "too small to critique"),
    ("self-critique samples greedy", {"spec.selfCritique": {**CRITIQUE, "samples": 4}}, "spec.selfCritique.temperature", "needs a temperature above 0"),
    ("self-critique on text", {"spec.data.sources": [{"uri": "t.jsonl", "format": "text"}], "spec.selfCritique": CRITIQUE}, "spec.selfCritique", "format text (data.sources[0]) has none"),
    ("self-critique with score conditioning", {"spec.training.scoreConditioning": {}, "spec.selfCritique": CRITIQUE}, "spec.selfCritique", "not with training.scoreConditioning"),
    ("jinja template without generation markers", {"spec.model.chatTemplate": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, "spec.model.chatTemplate", "no {% generation %}"),
]  # fmt: skip


def apply_changes(job: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in changes.items():
        if value is None:
            parent, _, last = dotted.rpartition(".")
            target = job
            for part in parent.split("."):
                target = target[part]
            target.pop(last)
        else:
            set_in(job, dotted, value)
    return job


@pytest.mark.parametrize(("case", "changes"), VALID, ids=[c[0] for c in VALID])
def test_valid_specs_are_accepted(write_yaml, job, case, changes) -> None:
    assert problems_of(write_yaml, apply_changes(job, changes)) == []


@pytest.mark.parametrize(
    ("case", "changes", "path", "fragment"), INVALID, ids=[c[0] for c in INVALID]
)
def test_invalid_specs_name_the_field(write_yaml, job, case, changes, path, fragment) -> None:
    found = problems_of(write_yaml, apply_changes(job, changes))
    assert any(p == path and fragment in m for p, m in found), found


def test_every_method_has_valid_and_invalid_cases() -> None:
    methods = {"sft", "dpo", "reward", "ppo", "grpo", "eval"}

    def method_of(changes: dict[str, Any]) -> str:
        return changes.get("spec.method", "sft")

    assert {method_of(c) for _, c in VALID} == methods
    assert {method_of(c) for _, c, _, _ in INVALID} >= methods


def test_unknown_field_gets_a_suggestion_and_its_line(write_yaml, job) -> None:
    job["spec"]["training"] = {"epochs": 1, "learningRat": 1e-4}
    path = write_yaml(job)
    _, problems = load_jobs([path])
    (problem,) = problems
    line = path.read_text().splitlines().index("    learningRat: 0.0001") + 1
    assert str(problem) == (
        f"{path}:{line}: spec.training.learningRat: unknown field; did you mean 'learningRate'?"
    )


def test_unknown_field_without_close_match_lists_known_fields(write_yaml, job) -> None:
    job["spec"]["peft"] = {"zzz": 1}
    (problem,) = load_jobs([write_yaml(job)])[1]
    assert problem.path == "spec.peft.zzz"
    assert "known: type, r, alpha, dropout, targetModules, dora" in problem.message


def test_yaml_syntax_error_has_line_number(write_yaml) -> None:
    path = write_yaml("kind: FineTuneJob\nspec:\n  method: sft\n  model: [unclosed\n")
    (problem,) = load_jobs([path])[1]
    assert str(problem).startswith(f"{path}:")
    assert problem.line is not None and problem.line >= 4
    assert "invalid YAML" in problem.message


def test_duplicate_keys_are_refused(write_yaml) -> None:
    text = (
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: a}\n"
        "spec:\n  method: sft\n  model: {source: builtin://tiny-llama}\n"
        "  data: {sources: [{uri: a.jsonl, format: preference}]}\n  method: dpo\n"
    )
    (problem,) = load_jobs([write_yaml(text)])[1]
    assert (problem.line, problem.path, problem.message) == (8, "spec.method", "duplicate key")


def test_other_kinds_in_a_file_are_skipped(write_yaml, job) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    jobs, problems = load_jobs([write_yaml(namespace, job)])
    assert problems == [] and [j.metadata.name for _, j in jobs] == ["demo"]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    (problem,) = load_jobs([tmp_path / "nope.yaml"])[1]
    assert "cannot read" in problem.message


def test_all_problems_of_a_document_are_reported_together(write_yaml, job) -> None:
    job["spec"]["training"] = {"learningRate": -1, "precision": "int8", "seeed": 1}
    paths = {p for p, _ in problems_of(write_yaml, job)}
    assert paths == {
        "spec.training.learningRate",
        "spec.training.precision",
        "spec.training.seeed",
    }
