// Reference ids from Hugging Face's tokenizers (npm `tokenizers`, the Rust library's Node binding).
//   node tokenize_reference.js TOKENIZER_JSON CORPUS_JSON OUT_JSON
// CORPUS_JSON is an array of strings; OUT_JSON gets, per text, the ids with and without special tokens
// and the decoding of the former.
const fs = require('fs');
const path = require('path');
const modules = process.env.RLHF_NODE_MODULES;
const { Tokenizer } = require(path.join(modules, 'tokenizers'));

(async () => {
  const [tokFile, corpusFile, outFile] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokFile);
  const corpus = JSON.parse(fs.readFileSync(corpusFile, 'utf8'));
  const out = [];
  for (const text of corpus) {
    const withSpecial = await tok.encode(text, null, { addSpecialTokens: true });
    const without = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = Array.from(withSpecial.getIds());
    out.push({
      with_special: ids,
      without_special: Array.from(without.getIds()),
      decoded: await tok.decode(ids, false),
      decoded_skip: await tok.decode(ids, true),
    });
  }
  fs.writeFileSync(outFile, JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
