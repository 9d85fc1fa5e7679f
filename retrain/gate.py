"""The evaluation gate: may a candidate adapter replace the one in production?

Measured by the same code for the candidate and for the current adapter (or the base model):
- on the job's held-out pairs, DPO's implicit reward of an answer y to prompt x is
  r(x, y) = beta * (log p_policy(y|x) - log p_ref(y|x)) with the base model as the reference;
  the margin of a pair is r(chosen) - r(rejected); preference accuracy is the share of pairs with a
  positive margin, and the reward margin is the mean margin;
- on the golden set (JSONL of {"prompt": [messages], "expected": "answer"}), the mean
  log-likelihood per token of each expected answer.

Verdict (`decide`, a pure function): accepted when the candidate's accuracy and margin are each at
least the current's minus a small tolerance, its mean golden log-likelihood per token dropped by at
most `golden_tolerance`, and no golden prompt dropped by more than `golden_prompt_tolerance`;
otherwise rejected, with a reason per failed check. No held-out pairs: rejected.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrain.dataset import Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoldenItem:
    prompt: tuple[dict, ...]
    expected: str


@dataclass(frozen=True)
class EvalResult:
    """One adapter's scores; `golden` holds the per-prompt log-likelihood per token."""

    preference_accuracy: float
    reward_margin: float
    heldout_pairs: int
    golden: tuple[float, ...] = ()

    @property
    def golden_mean(self) -> float:
        return sum(self.golden) / len(self.golden) if self.golden else 0.0

    def to_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}preference_accuracy": self.preference_accuracy,
            f"{prefix}reward_margin": self.reward_margin,
            f"{prefix}golden_logp": self.golden_mean,
            f"{prefix}heldout_pairs": float(self.heldout_pairs),
        }


@dataclass(frozen=True)
class Thresholds:
    accuracy_tolerance: float = 0.02
    margin_tolerance: float = 0.02
    golden_tolerance: float = 0.05
    golden_prompt_tolerance: float = 0.5


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return "accepted" if self.accepted else "rejected"


def decide(candidate: EvalResult, current: EvalResult, t: Thresholds) -> Verdict:
    """The gate's decision table over two adapters' scores."""
    reasons = []
    if candidate.heldout_pairs == 0:
        reasons.append("no held-out pairs to evaluate on")
    if candidate.preference_accuracy < current.preference_accuracy - t.accuracy_tolerance:
        reasons.append(f"preference accuracy {candidate.preference_accuracy:.3f} < current "
                       f"{current.preference_accuracy:.3f} - {t.accuracy_tolerance}")  # fmt: skip
    if candidate.reward_margin < current.reward_margin - t.margin_tolerance:
        reasons.append(f"reward margin {candidate.reward_margin:.4f} < current {current.reward_margin:.4f} "
                       f"- {t.margin_tolerance}")  # fmt: skip
    if len(candidate.golden) != len(current.golden):
        reasons.append(f"golden sets differ in size ({len(candidate.golden)} vs {len(current.golden)})")
    elif candidate.golden:
        if candidate.golden_mean < current.golden_mean - t.golden_tolerance:
            reasons.append(f"golden log-likelihood per token {candidate.golden_mean:.4f} < current "
                           f"{current.golden_mean:.4f} - {t.golden_tolerance}")  # fmt: skip
        worst = [i for i, (c, p) in enumerate(zip(candidate.golden, current.golden, strict=True))
                 if c < p - t.golden_prompt_tolerance]  # fmt: skip
        if worst:
            reasons.append(
                f"golden prompts regressed by more than {t.golden_prompt_tolerance} nats/token: {worst[:10]}"
            )
    return Verdict(not reasons, tuple(reasons))


def load_golden(path: str | Path) -> list[GoldenItem]:
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        prompt = rec["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not rec.get("expected"):
            raise ValueError(f"{path}:{n}: golden item without `expected`")
        items.append(GoldenItem(tuple({"role": m["role"], "content": m["content"]} for m in prompt), rec["expected"]))
    return items


# -- scoring with a model -------------------------------------------------------------------------------


class Scorer:
    """Log-likelihoods of answers under the base model and under adapters loaded on it by name."""

    def __init__(self, base_model: str | Path, max_length: int = 1024, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_length = max_length
        self._adapters: set[str] = set()
        self._cache: dict[tuple, float] = {}

    def load(self, name: str, adapter_dir: str | Path) -> None:
        from peft import PeftModel

        if not self._adapters:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
        else:
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        self._adapters.add(name)

    def _ids(self, prompt: Sequence[dict], answer: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        prompt_text = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        full_text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("chat template does not extend the generation prompt with the answer")
        p = tok(prompt_text, add_special_tokens=False)["input_ids"]
        c = tok(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        keep_prompt = max(1, self.max_length - len(c))  # truncate the prompt from the left, as TRL keeps the end
        return p[len(p) - min(len(p), keep_prompt):], c[: self.max_length]

    def logp(self, adapter: str | None, prompt: Sequence[dict], answer: str) -> tuple[float, int]:
        """(sum of log p(answer tokens | prompt), number of answer tokens); adapter None: the base model."""
        key = (adapter, tuple(tuple(sorted(m.items())) for m in prompt), answer)
        p, c = self._ids(prompt, answer)
        if key not in self._cache:
            torch = self.torch
            ids = torch.tensor([p + c], device=self.device)
            with torch.no_grad(), self._using(adapter):
                logits = self.model(input_ids=ids).logits[0, :-1].float()
            logps = torch.log_softmax(logits, dim=-1)
            targets = ids[0, 1:]
            token_logp = logps.gather(1, targets[:, None])[:, 0]
            self._cache[key] = float(token_logp[len(p) - 1:].sum())
        return self._cache[key], len(c)

    def _using(self, adapter: str | None):
        from contextlib import nullcontext

        if not self._adapters:
            if adapter is not None:
                raise KeyError(adapter)
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()

    def evaluate(
        self, adapter: str | None, heldout: Sequence[Pair], golden: Sequence[GoldenItem], beta: float
    ) -> EvalResult:
        margins = []
        for pair in heldout:
            pol_c, _ = self.logp(adapter, pair.prompt, pair.chosen)
            pol_r, _ = self.logp(adapter, pair.prompt, pair.rejected)
            ref_c, _ = self.logp(None, pair.prompt, pair.chosen)
            ref_r, _ = self.logp(None, pair.prompt, pair.rejected)
            margins.append(beta * ((pol_c - ref_c) - (pol_r - ref_r)))
        per_prompt = []
        for item in golden:
            total, n = self.logp(adapter, item.prompt, item.expected)
            per_prompt.append(total / max(n, 1))
        accuracy = sum(m > 0 for m in margins) / len(margins) if margins else 0.0
        margin = sum(margins) / len(margins) if margins else 0.0
        if not all(math.isfinite(x) for x in [margin, *per_prompt]):
            raise ValueError(f"non-finite evaluation for {adapter or 'base'}")
        return EvalResult(accuracy, margin, len(margins), tuple(per_prompt))


@dataclass(frozen=True)
class GateReport:
    verdict: Verdict
    candidate: EvalResult
    current: EvalResult
    current_name: str

    def metrics(self) -> dict[str, float]:
        return {**self.candidate.to_metrics(""), **self.current.to_metrics("current_"),
                "accepted": float(self.verdict.accepted)}  # fmt: skip

    def to_json(self) -> dict:
        return {"verdict": self.verdict.name, "reasons": list(self.verdict.reasons), "current": self.current_name,
                "candidate_scores": asdict(self.candidate), "current_scores": asdict(self.current)}  # fmt: skip


def run_gate(base_model: str | Path, candidate_dir: str | Path, current_dir: str | Path | None, current_name: str,
             heldout: Sequence[Pair], golden: Sequence[GoldenItem], beta: float, thresholds: Thresholds,
             max_length: int = 1024, device: str = "cpu", job_id: str = "") -> GateReport:  # fmt: skip
    """Score the candidate and the current adapter (None: the base model) and decide."""
    scorer = Scorer(base_model, max_length=max_length, device=device)
    scorer.load("candidate", candidate_dir)
    if current_dir is not None:
        scorer.load("current", current_dir)
    candidate = scorer.evaluate("candidate", heldout, golden, beta)
    current = scorer.evaluate("current" if current_dir is not None else None, heldout, golden, beta)
    verdict = decide(candidate, current, thresholds)
    log.info("gate verdict", extra={"job_id": job_id, "verdict": verdict.name, "reasons": list(verdict.reasons),
                                    "candidate": asdict(candidate), "current": asdict(current),
                                    "current_name": current_name})  # fmt: skip
    return GateReport(verdict, candidate, current, current_name)
