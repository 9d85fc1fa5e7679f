"""The evaluation gate: may a candidate adapter replace the one in production? Judged on what it answers.

The verdict reads greedy generations (retrain.generate), scored by ROUGE-L (retrain.rouge, CJK-aware):
- corrected: on the prompts the job trained on, the candidate's answer against the chosen answer (the
  user's correction): did it learn what it was taught?
- paraphrases: on the job's held-out pairs (other wordings of corrected questions, split off by pair id),
  the candidate's answer against the chosen answer: did it learn the fact, not the sentence?
- kept: on the regression set (other questions, JSONL of {"prompt": [messages], "expected"?: reference}), did
  everything else stay? Where the set gives a reference, over the questions the current version answers
  right (ROUGE-L >= `right_rouge` against the reference), the share the candidate still answers right: a
  regression is a right answer lost, while a wrong answer that changes is no loss (measured: a turn that
  raised the held-out accuracy from 45% to 52% changed the wording of 58% of the answers). Without a
  reference, the candidate's answer against the current version's (ROUGE-L >= `keep_rouge`).
An answer counts as learned at ROUGE-L >= `learn_rouge`; each share must reach its minimum (`Thresholds`).
A check with no prompts passes and says so. The verdict names every figure.

Diagnostics, not the verdict: DPO's implicit reward on the held-out pairs (preference accuracy, mean
margin, with the base model as reference) and the mean log-likelihood per token of the golden answers,
for candidate and current alike; they go into the version's metadata and the job's metrics.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrain.dataset import Pair
from retrain.generate import Generator
from retrain.rouge import rouge_l

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
    learn_rouge: float = 0.8  # an answer equals its correction from here on
    keep_rouge: float = 0.9  # an answer is unchanged from here on (regression prompts without a reference)
    right_rouge: float = 0.7  # an answer is right against its reference from here on
    min_corrected: float = 0.8  # share of trained prompts answered with their correction
    min_paraphrases: float = 0.3  # share of held-out paraphrases answered with their correction
    min_kept: float = 0.9  # share of regression prompts answered as before


@dataclass(frozen=True)
class Generations:
    """ROUGE-L per prompt of one candidate: `corrected` and `paraphrases` against the chosen answers; `kept` holds
    1.0 / 0.0 per regression prompt with a reference that the current version answers right (still right or not),
    and the ROUGE-L against the current version's answer for those without one."""

    corrected: tuple[float, ...] = ()
    paraphrases: tuple[float, ...] = ()
    kept: tuple[float, ...] = ()

    @staticmethod
    def share(scores: Sequence[float], at_least: float) -> float | None:
        return sum(s >= at_least for s in scores) / len(scores) if scores else None

    def shares(self, t: Thresholds) -> dict[str, float | None]:
        return {
            "corrected": self.share(self.corrected, t.learn_rouge),
            "paraphrases": self.share(self.paraphrases, t.learn_rouge),
            "kept": self.share(self.kept, t.keep_rouge),
        }  # 1.0 / 0.0 flags pass / fail at any keep_rouge


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)  # the failed checks
    figures: tuple[str, ...] = field(default_factory=tuple)  # every check's figure, failed or not

    @property
    def name(self) -> str:
        return "accepted" if self.accepted else "rejected"


def decide(generations: Generations, t: Thresholds) -> Verdict:
    """The gate's decision over the candidate's generations: a reason per failed check, every figure named."""
    shares = generations.shares(t)
    minimum = {"corrected": t.min_corrected, "paraphrases": t.min_paraphrases, "kept": t.min_kept}
    counts = {
        "corrected": len(generations.corrected),
        "paraphrases": len(generations.paraphrases),
        "kept": len(generations.kept),
    }
    reasons, figures = [], []
    for name, share in shares.items():
        if share is None:
            figures.append(f"{name}: no prompts")
            continue
        text = f"{name} {share:.2f} of {counts[name]} (min {minimum[name]:.2f})"
        figures.append(text)
        if share < minimum[name]:
            reasons.append(text)
    if not generations.corrected and not generations.paraphrases:
        reasons.append("nothing to learn: no corrected prompts")
    return Verdict(not reasons, tuple(reasons), tuple(figures))


def load_golden(path: str | Path, need_expected: bool = True) -> list[GoldenItem]:
    """JSONL of {"prompt": [messages] | "text", "expected": "answer"} ("question" stands for a user prompt)."""
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        prompt = rec.get("prompt", rec.get("question"))
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not prompt:
            raise ValueError(f"{path}:{n}: item without `prompt`")
        if need_expected and not rec.get("expected"):
            raise ValueError(f"{path}:{n}: golden item without `expected`")
        messages = tuple({"role": m["role"], "content": m["content"]} for m in prompt)
        items.append(GoldenItem(messages, rec.get("expected", "")))
    return items


# -- scoring with a model -------------------------------------------------------------------------------


class Scorer:
    """Log-likelihoods of answers under the base model or adapters of a `Generator` (one model in memory)."""

    def __init__(self, generator: Generator, max_length: int = 1024):
        self.gen = generator
        self.torch = generator.torch
        self.tokenizer = generator.tokenizer
        self.device = generator.device
        self.max_length = max_length
        self._cache: dict[tuple, float] = {}

    def _ids(self, prompt: Sequence[dict] | str, answer: str) -> tuple[list[int], list[int]]:
        """Prompt and answer token ids; a text prompt (a code completion's) as it is, its answer ended with the
        end-of-text token, as TRL trains standard rows."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            prompt_text, full_text = prompt, prompt + answer + (tok.eos_token or "")
        else:
            prompt_text = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
            full_text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("chat template does not extend the generation prompt with the answer")
        p = tok(prompt_text, add_special_tokens=False)["input_ids"]
        c = tok(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        keep_prompt = max(1, self.max_length - len(c))  # truncate the prompt from the left, as TRL keeps the end
        return p[len(p) - min(len(p), keep_prompt) :], c[: self.max_length]

    def logp(self, adapter: str | None, prompt: Sequence[dict] | str, answer: str) -> tuple[float, int]:
        """(sum of log p(answer tokens | prompt), number of answer tokens); adapter None: the base model."""
        messages = prompt if isinstance(prompt, str) else tuple(tuple(sorted(m.items())) for m in prompt)
        key = (adapter, messages, answer)
        p, c = self._ids(prompt, answer)
        if key not in self._cache:
            torch = self.torch
            ids = torch.tensor([p + c], device=self.device)
            with torch.no_grad(), self.gen.using(adapter):
                logits = self.gen.model(input_ids=ids).logits[0, :-1].float()
            logps = torch.log_softmax(logits, dim=-1)
            targets = ids[0, 1:]
            token_logp = logps.gather(1, targets[:, None])[:, 0]
            self._cache[key] = float(token_logp[len(p) - 1 :].sum())
        return self._cache[key], len(c)

    def evaluate(
        self, adapter: str | None, heldout: Sequence[Pair], golden: Sequence[GoldenItem], beta: float
    ) -> EvalResult:
        margins = []
        for pair in heldout:
            prompt = pair.model_prompt
            pol_c, _ = self.logp(adapter, prompt, pair.chosen)
            pol_r, _ = self.logp(adapter, prompt, pair.rejected)
            ref_c, _ = self.logp(None, prompt, pair.chosen)
            ref_r, _ = self.logp(None, prompt, pair.rejected)
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
    generations: Generations
    candidate: EvalResult  # diagnostics
    current: EvalResult
    current_name: str
    thresholds: Thresholds

    def metrics(self) -> dict[str, float]:
        shares = {f"{k}_share": v for k, v in self.generations.shares(self.thresholds).items() if v is not None}
        return {
            **shares,
            **self.candidate.to_metrics(""),
            **self.current.to_metrics("current_"),
            "accepted": float(self.verdict.accepted),
        }

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict.name,
            "reasons": list(self.verdict.reasons),
            "figures": list(self.verdict.figures),
            "current": self.current_name,
            "generations": asdict(self.generations),
            "thresholds": asdict(self.thresholds),
            "candidate_scores": asdict(self.candidate),
            "current_scores": asdict(self.current),
        }


def load_regression(path: str | Path | None) -> list[GoldenItem]:
    """Regression items: JSONL of {"prompt": [messages] or "question", "expected"?}; no path, no items."""
    return [] if path is None else load_golden(path, need_expected=False)


def kept_scores(
    candidate: Sequence[str], current: Sequence[str], items: Sequence[GoldenItem], t: Thresholds
) -> list[float]:
    """Per regression item (see the module docstring): right answers still right, or answers unchanged."""
    scores = []
    for new, old, item in zip(candidate, current, items, strict=True):
        if not item.expected:
            scores.append(rouge_l(new, old))
        elif rouge_l(old, item.expected) >= t.right_rouge:
            scores.append(1.0 if rouge_l(new, item.expected) >= t.right_rouge else 0.0)
    return scores


def run_gate(
    base_model: str | Path,
    candidate_dir: str | Path,
    current_dir: str | Path | None,
    current_name: str,
    trained: Sequence[Pair],
    heldout: Sequence[Pair],
    regression: Sequence[GoldenItem],
    golden: Sequence[GoldenItem],
    beta: float,
    thresholds: Thresholds,
    max_length: int = 1024,
    device: str = "cpu",
    job_id: str = "",
    max_new_tokens: int = 64,
) -> GateReport:
    """Generate with the candidate and the current adapter (None: the base model), score, decide."""
    gen = Generator(base_model, device=device, max_new_tokens=max_new_tokens)
    gen.load("candidate", candidate_dir)
    current = "current" if current_dir is not None else None
    if current_dir is not None:
        gen.load("current", current_dir)
    asked = [p.model_prompt for p in trained] + [p.model_prompt for p in heldout]
    answers = gen.answers([*asked, *(item.prompt for item in regression)], adapter="candidate")
    before = gen.answers([item.prompt for item in regression], adapter=current)
    chosen = [p.chosen for p in trained] + [p.chosen for p in heldout]
    learned = [rouge_l(a, c) for a, c in zip(answers, chosen, strict=False)]
    kept = kept_scores(answers[len(asked) :], before, regression, thresholds)
    generations = Generations(tuple(learned[: len(trained)]), tuple(learned[len(trained) :]), tuple(kept))
    scorer = Scorer(gen, max_length=max_length)
    candidate_scores = scorer.evaluate("candidate", heldout, golden, beta)
    current_scores = scorer.evaluate(current, heldout, golden, beta)
    verdict = decide(generations, thresholds)
    log.info(
        "gate verdict",
        extra={
            "job_id": job_id,
            "verdict": verdict.name,
            "reasons": list(verdict.reasons),
            "figures": list(verdict.figures),
            "current_name": current_name,
            "candidate": asdict(candidate_scores),
            "current": asdict(current_scores),
        },
    )
    return GateReport(verdict, generations, candidate_scores, current_scores, current_name, thresholds)
