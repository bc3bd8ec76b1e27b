"""`python -m tune_ph COMMAND [flags]`: runs one of the command-line tools in tune_ph.commands."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "search": "search fine-tuning settings with Ray Tune; export and test the best trial",
    "train": "train one configuration and test it",
    "evaluate": "re-run the test evaluation of a checkpoint",
    "export": "export an experiment's best trial, its test evaluation and report.html",
    "predict": "predict pH for new samples (FASTA files or a dataset) with a checkpoint",
    "baseline": "the k-mer baselines on the DNA model's split",
    "pretrain": "next-token pretraining of the backbone on a dataset's train reads",
    "data": "build a dataset from FASTA files, summarise a source, manage the token cache",
    "monitor": "serve optuna-dashboard on an experiment's study (127.0.0.1)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: python -m tune_ph COMMAND [--help | flags]\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to tune_ph.commands.COMMAND.main (imported only then: `--help` stays fast)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"tune_ph.commands.{args[0]}").main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
