"""Training data construction (`flywheel data ...`): collect, filter, deduplicate, format, and report on
question-answer records, for Chinese as well as English text. Records are JSON lines; each command reads files
and writes files (or a `datasets.Dataset` directory), so the steps chain and can be rerun one at a time."""
