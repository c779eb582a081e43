// Encode throughput of Hugging Face's tokenizers (npm `tokenizers`) on the same documents as
// bench/tokenizer_bench: node tokenizer_bench.js TOKENIZER_JSON DOCS_JSON
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(process.env.RLHF_NODE_MODULES, 'tokenizers'));
(async () => {
  const tok = Tokenizer.fromFile(process.argv[2]);
  const docs = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, 'utf8'), 0);
  await tok.encodeBatch(docs.slice(0, 10));  // warm-up
  let best = Infinity, tokens = 0;
  for (let r = 0; r < 3; ++r) {
    const t = process.hrtime.bigint();
    const out = await tok.encodeBatch(docs, { addSpecialTokens: false });
    best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
    tokens = out.reduce((n, e) => n + e.getIds().length, 0);
  }
  console.log(JSON.stringify({ seconds: best, bytes, tokens }));
})().catch((e) => { console.error(e); process.exit(1); });
