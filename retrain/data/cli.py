"""`flywheel data ...`: the training-data tools as one command group, and `flywheel eval`.

    flywheel data crawl PAGE... --question CSS --answer CSS --out faq.jsonl     # collect
    flywheel data filter faq.jsonl --out clean.jsonl --dropped dropped.jsonl   # clean, each drop with its reason
    flywheel data dedup clean.jsonl --out unique.jsonl --clusters clusters.jsonl
    flywheel data synth --method self-instruct --seeds unique.jsonl --out synth.jsonl
    flywheel data judge answers.jsonl --out pairs.jsonl [--publish]          # AI preference pairs
    flywheel data format unique.jsonl --to sharegpt --system "..." --dataset DIR --llamafactory DIR
    flywheel data stats unique.jsonl --out report/                           # quality report with PNGs
    flywheel eval perplexity|golden|winrate ...                               # offline evaluation

The commands load their modules only when run (click's lazy-loading pattern): together they import datasketch,
BeautifulSoup, openai, jieba and matplotlib, seconds that every other `flywheel` command would otherwise pay.
"""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """A group whose subcommands are `module:attribute` names, imported when listed in help or run."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, _, attribute = self.lazy[name].partition(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(
    "data",
    cls=LazyGroup,
    lazy={
        "crawl": "retrain.data.crawl:crawl_command",
        "filter": "retrain.data.filters:filter_command",
        "dedup": "retrain.data.dedup:dedup_command",
        "synth": "retrain.data.synth:synth_command",
        "judge": "retrain.data.judge:judge_command",
        "format": "retrain.data.formats:format_command",
        "stats": "retrain.data.stats:stats_command",
    },
)
def data_group() -> None:
    """Training data: collect, filter, deduplicate, synthesize, judge, format and report (JSON lines)."""


@click.group(
    "eval",
    cls=LazyGroup,
    lazy={
        "perplexity": "retrain.data.evaluate:perplexity_command",
        "golden": "retrain.data.evaluate:golden_command",
        "winrate": "retrain.data.evaluate:winrate_command",
    },
)
def eval_command() -> None:
    """Evaluate models: perplexity of local models, exact match and ROUGE-L on a golden set, pairwise win rate."""
