//! Generation with the same checkpoint and prompt: hashtags (the hashtag variant) and a category
//! (the category variant). Greedy by default, as the paper decodes, with its repetition penalty
//! of 1.2; seeded temperature / top-p sampling on request. A KV cache makes each new token one
//! single-position forward pass.
//!
//! When the checkpoint lists its categories, category decoding is constrained by a token trie of
//! `" <category>[EOS]"` sequences: at every step only tokens that continue some category are
//! allowed, so a category is never invented.
//!
//! When it lists a hashtag vocabulary (`hashtags` in `notellm.json`), hashtag decoding is
//! constrained the same way ([`HashtagDecoder`]): a trie of `" <hashtag>"` token sequences,
//! where a completed hashtag may be followed by the separator `,` (and the next hashtag from the
//! trie's root) or by `[EOS]`. A hashtag is never repeated, and none outside the vocabulary can be
//! produced. Hashtags whose tokens change when the separator follows them (the byte-level
//! pre-tokeniser would merge a trailing punctuation run with `,`) are left out of the trie.

use std::collections::HashMap;

use candle_core::{IndexOp, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use super::decoder::{PaddedBatch, Padding};
use super::error::{ModelError, Result};
use super::{KvCache, NoteLlm};
use crate::prompt::{self, Variant};
use notellm_note::Note;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most; `None` uses `notellm.json`'s `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0 = off). Only with temperature > 0.
    pub top_p: f64,
    pub seed: u64,
    /// Divides positive (multiplies negative) logits of tokens already generated; 1.0 = off.
    pub repetition_penalty: f32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: None, temperature: 0.0, top_p: 1.0, seed: 0, repetition_penalty: 1.2 }
    }
}

/// What `/suggest-tags` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub hashtags: Vec<String>,
    pub category: Option<String>,
}

/// A trie over token-id sequences; each complete sequence ends in a leaf carrying its value.
#[derive(Debug, Clone, Default)]
pub struct TokenTrie {
    children: Vec<HashMap<u32, usize>>,
    value: HashMap<usize, usize>,
}

impl TokenTrie {
    pub fn new() -> Self {
        Self { children: vec![HashMap::new()], value: HashMap::new() }
    }

    pub fn insert(&mut self, seq: &[u32], value: usize) {
        let mut node = 0;
        for &t in seq {
            node = match self.children[node].get(&t) {
                Some(&n) => n,
                None => {
                    self.children.push(HashMap::new());
                    let n = self.children.len() - 1;
                    self.children[node].insert(t, n);
                    n
                }
            };
        }
        self.value.insert(node, value);
    }

    pub fn allowed(&self, node: usize) -> impl Iterator<Item = u32> + '_ {
        self.children[node].keys().copied()
    }

    pub fn step(&self, node: usize, token: u32) -> Option<usize> {
        self.children[node].get(&token).copied()
    }

    pub fn value(&self, node: usize) -> Option<usize> {
        self.value.get(&node).copied()
    }
}

/// A closed-vocabulary hashtag decoder: the trie of the vocabulary's `" <hashtag>"` tokens and
/// the separator and end tokens.
#[derive(Debug, Clone)]
pub struct HashtagDecoder {
    trie: TokenTrie,
    /// Tokens of `","` (one token for byte-level BPE tokenizers).
    sep: Vec<u32>,
    eos: u32,
    /// Vocabulary entries in the trie (indices are the trie's values).
    tags: Vec<String>,
}

/// Where a closed hashtag decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagState {
    /// Inside a hashtag, at this trie node.
    Tag(usize),
    /// After `k` tokens of the separator.
    Sep(usize),
}

impl HashtagDecoder {
    /// Builds the trie from `vocab` with `encode`, leaving out hashtags that do not tokenise
    /// apart from a following separator.
    pub fn new(vocab: &[String], eos: u32, mut encode: impl FnMut(&str) -> Result<Vec<u32>>) -> Result<Option<Self>> {
        let sep = encode(",")?;
        if vocab.is_empty() || sep.is_empty() {
            return Ok(None);
        }
        let mut trie = TokenTrie::new();
        let mut tags = Vec::new();
        for tag in vocab {
            let ids = encode(&format!(" {tag}"))?;
            let with_sep = encode(&format!(" {tag},"))?;
            if ids.is_empty() || with_sep.len() != ids.len() + sep.len() || !with_sep.starts_with(&ids) {
                tracing::debug!(tag = %tag, "hashtag left out of the closed vocabulary (does not tokenise apart)");
                continue;
            }
            trie.insert(&ids, tags.len());
            tags.push(tag.clone());
        }
        Ok((!tags.is_empty()).then_some(Self { trie, sep, eos, tags }))
    }

    /// Entries in the trie.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Tokens allowed next, given the hashtags completed so far (`done`) and how many are wanted.
    fn allowed(&self, state: TagState, done: &[usize], max: usize) -> Vec<u32> {
        match state {
            TagState::Sep(k) => vec![self.sep[k]],
            TagState::Tag(node) => {
                let mut out: Vec<u32> = self.trie.allowed(node).collect();
                // A completed hashtag not emitted before may end here.
                if self.trie.value(node).is_some_and(|v| !done.contains(&v)) {
                    out.push(self.eos);
                    if done.len() + 1 < max {
                        out.push(self.sep[0]);
                    }
                }
                out.sort_unstable();
                out.dedup();
                out
            }
        }
    }

    /// Decodes up to `max` hashtags, asking `next` for the logits after each chosen token
    /// (`None` for the first call's already-computed logits).
    fn decode(
        &self,
        max: usize,
        max_new: usize,
        first: Vec<f32>,
        mut pick: impl FnMut(&mut Vec<f32>, &[u32]) -> u32,
        mut next: impl FnMut(u32) -> Result<Vec<f32>>,
    ) -> Result<Vec<String>> {
        let mut logits = first;
        let mut state = TagState::Tag(0);
        let mut done: Vec<usize> = Vec::new();
        let mut emitted: Vec<u32> = Vec::new();
        for _ in 0..max_new {
            let allowed = self.allowed(state, &done, max);
            if allowed.is_empty() {
                break;
            }
            restrict(&mut logits, &allowed);
            let tok = pick(&mut logits, &emitted);
            let finished = match state {
                TagState::Tag(node)
                    if tok == self.eos || (tok == self.sep[0] && self.trie.step(node, tok).is_none()) =>
                {
                    if let Some(v) = self.trie.value(node) {
                        done.push(v);
                    }
                    if tok == self.eos {
                        break;
                    }
                    state = if self.sep.len() > 1 { TagState::Sep(1) } else { TagState::Tag(0) };
                    false
                }
                TagState::Tag(node) => match self.trie.step(node, tok) {
                    Some(n) => {
                        state = TagState::Tag(n);
                        false
                    }
                    None => true,
                },
                TagState::Sep(k) => {
                    state = if k + 1 < self.sep.len() { TagState::Sep(k + 1) } else { TagState::Tag(0) };
                    false
                }
            };
            if finished || done.len() >= max {
                break;
            }
            emitted.push(tok);
            logits = next(tok)?;
        }
        // A hashtag complete when the token budget ran out counts too.
        if let TagState::Tag(node) = state {
            if let Some(v) = self.trie.value(node).filter(|v| !done.contains(v) && done.len() < max) {
                done.push(v);
            }
        }
        Ok(done.into_iter().map(|v| self.tags[v].clone()).collect())
    }
}

impl NoteLlm {
    /// The closed hashtag decoder (built at load), when the checkpoint lists a hashtag
    /// vocabulary.
    pub fn hashtag_decoder(&self) -> Option<&HashtagDecoder> {
        self.hashtags.as_ref()
    }

    /// The category trie: `" <category>" + [EOS]` for each category of the checkpoint.
    pub fn category_trie(&self) -> Result<Option<TokenTrie>> {
        if self.cfg.categories.is_empty() {
            return Ok(None);
        }
        let mut trie = TokenTrie::new();
        for (i, c) in self.cfg.categories.iter().enumerate() {
            let mut ids = self.tokenizer.encode(&format!(" {c}"))?;
            ids.push(self.tokenizer.eos_id);
            trie.insert(&ids, i);
        }
        Ok(Some(trie))
    }

    /// Hashtags and a category for `note` (its own hashtags and category are ignored).
    pub fn suggest(&self, note: &Note, max_hashtags: usize, opts: &GenerateOptions) -> Result<Suggestion> {
        let _span = tracing::debug_span!("suggest").entered();
        let input = note.draft();
        let hashtags = if max_hashtags == 0 {
            Vec::new()
        } else {
            let p = prompt::render(
                &input,
                Variant::Hashtags { j: max_hashtags },
                self.limits(),
                self.tokenizer.specials(),
                &self.tokenizer,
            );
            match self.hashtag_decoder() {
                Some(dec) => self.generate_hashtags(&p.for_generation(), dec, max_hashtags, opts)?,
                None => {
                    let (text, _) = self.generate(&p.for_generation(), opts, None)?;
                    prompt::parse_hashtags(&text, max_hashtags)
                }
            }
        };
        let p = prompt::render(&input, Variant::Category, self.limits(), self.tokenizer.specials(), &self.tokenizer);
        let trie = self.category_trie()?;
        let (text, leaf) = self.generate(&p.for_generation(), opts, trie.as_ref())?;
        let category = match leaf {
            Some(i) => self.cfg.categories.get(i).cloned(),
            None if trie.is_some() => None,
            None => prompt::parse_category(&text),
        };
        Ok(Suggestion { hashtags, category })
    }

    /// Generates a continuation of `prompt_text`. With a trie, decoding is constrained to it and
    /// the value of the completed sequence is returned too.
    pub fn generate(
        &self,
        prompt_text: &str,
        opts: &GenerateOptions,
        trie: Option<&TokenTrie>,
    ) -> Result<(String, Option<usize>)> {
        let (mut logits, mut cache, max_new) = self.prefill(prompt_text, opts)?;
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mut out: Vec<u32> = Vec::new();
        let mut node = 0usize;
        for _ in 0..max_new {
            penalise(&mut logits, &out, opts.repetition_penalty);
            if let Some(t) = trie {
                let allowed: Vec<u32> = t.allowed(node).collect();
                if allowed.is_empty() {
                    break;
                }
                restrict(&mut logits, &allowed);
            }
            let tok = choose(&logits, opts, &mut rng);
            if let Some(t) = trie {
                node = t.step(node, tok).unwrap_or(node);
                if let Some(v) = t.value(node) {
                    return Ok((self.tokenizer.decode(&out)?, Some(v)));
                }
            }
            if tok == self.tokenizer.eos_id {
                break;
            }
            out.push(tok);
            logits = self.next_logits(&[vec![tok]], &mut cache)?;
        }
        Ok((self.tokenizer.decode(&out)?, None))
    }

    /// Up to `max` hashtags from the closed vocabulary of `dec` for `prompt_text`.
    pub fn generate_hashtags(
        &self,
        prompt_text: &str,
        dec: &HashtagDecoder,
        max: usize,
        opts: &GenerateOptions,
    ) -> Result<Vec<String>> {
        let (first, cache, max_new) = self.prefill(prompt_text, opts)?;
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let cache = std::cell::RefCell::new(cache);
        dec.decode(
            max,
            max_new,
            first,
            |logits, seen| {
                penalise(logits, seen, opts.repetition_penalty);
                choose(logits, opts, &mut rng)
            },
            |tok| self.next_logits(&[vec![tok]], &mut cache.borrow_mut()),
        )
    }

    /// Runs the prompt: the logits of the first new token, the KV cache after the prompt and the
    /// token budget.
    fn prefill(&self, prompt_text: &str, opts: &GenerateOptions) -> Result<(Vec<f32>, KvCache, usize)> {
        let ids = self.tokenizer.encode(prompt_text)?;
        if ids.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        let mut cache = KvCache::new();
        let logits = self.next_logits(&[ids], &mut cache)?;
        Ok((logits, cache, opts.max_new_tokens.unwrap_or(self.cfg.max_new_tokens)))
    }

    /// Runs one chunk (batch 1) and returns the last position's logits.
    fn next_logits(&self, chunk: &[Vec<u32>], cache: &mut KvCache) -> Result<Vec<f32>> {
        let batch = PaddedBatch::new(chunk, Padding::Right, self.tokenizer.pad_id, self.device())?;
        let hidden = self.decoder.forward(&batch, cache)?;
        let last = batch.seq_len() - 1;
        let h: Tensor = hidden.i((0, last))?;
        Ok(self.decoder.logits(&h)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?)
    }
}

fn penalise(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &t in seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

fn restrict(logits: &mut [f32], allowed: &[u32]) {
    let mut keep = vec![false; logits.len()];
    for &a in allowed {
        if let Some(k) = keep.get_mut(a as usize) {
            *k = true;
        }
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f32::NEG_INFINITY;
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

fn choose(logits: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    if opts.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) as f64) / opts.temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (t, p) in probs {
        kept.push((t, p));
        mass += p / total;
        if mass >= opts.top_p {
            break;
        }
    }
    let kept_total: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * kept_total;
    for &(t, p) in &kept {
        if r < p {
            return t;
        }
        r -= p;
    }
    kept.last().map_or_else(|| argmax(logits), |k| k.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_walks_and_ends() {
        let mut t = TokenTrie::new();
        t.insert(&[5, 6, 2], 0);
        t.insert(&[5, 7, 2], 1);
        t.insert(&[5, 2], 2);
        let mut a: Vec<u32> = t.allowed(0).collect();
        a.sort();
        assert_eq!(a, vec![5]);
        let n = t.step(0, 5).unwrap();
        let mut a: Vec<u32> = t.allowed(n).collect();
        a.sort();
        assert_eq!(a, vec![2, 6, 7]);
        let leaf = t.step(t.step(n, 7).unwrap(), 2).unwrap();
        assert_eq!(t.value(leaf), Some(1));
        assert_eq!(t.value(t.step(n, 2).unwrap()), Some(2));
        assert_eq!(t.step(n, 9), None);
    }

    /// A decoder over a made-up tokenizer: each letter is a token (`a` = 1, ...), a leading
    /// space is token 30, `,` is 40, `[EOS]` 2.
    fn letters(vocab: &[&str]) -> HashtagDecoder {
        let encode = |t: &str| -> Result<Vec<u32>> {
            Ok(t.chars()
                .map(|c| {
                    if c == ' ' {
                        30
                    } else if c == ',' {
                        40
                    } else {
                        c as u32 - 'a' as u32 + 3
                    }
                })
                .collect())
        };
        let vocab: Vec<String> = vocab.iter().map(|s| s.to_string()).collect();
        HashtagDecoder::new(&vocab, 2, encode).unwrap().unwrap()
    }

    /// Decodes with logits from `score(step, token)`, greedily.
    fn run(dec: &HashtagDecoder, max: usize, score: impl Fn(usize, u32) -> f32) -> Vec<String> {
        let logits = |step: usize| (0..50u32).map(|t| score(step, t)).collect::<Vec<f32>>();
        let step = std::cell::Cell::new(0);
        dec.decode(
            max,
            64,
            logits(0),
            |l, _| argmax(l),
            |_| {
                step.set(step.get() + 1);
                Ok(logits(step.get()))
            },
        )
        .unwrap()
    }

    #[test]
    fn closed_hashtags_follow_the_vocabulary() {
        let dec = letters(&["ab", "abc", "b"]);
        assert_eq!(dec.len(), 3);
        // The model wants ' a b c , ...' then EOS: "abc" is produced, then the separator and "b".
        let want = [30, 3, 4, 5, 40, 30, 4, 2];
        let got = run(&dec, 3, |step, t| if want.get(step) == Some(&t) { 10.0 } else { 0.0 });
        assert_eq!(got, vec!["abc", "b"]);
        // A model that prefers a letter outside the vocabulary still gets a vocabulary item.
        let got = run(&dec, 1, |_, t| if t == 20 { 10.0 } else { t as f32 * 0.01 });
        assert_eq!(got.len(), 1);
        assert!(["ab", "abc", "b"].contains(&got[0].as_str()));
    }

    #[test]
    fn closed_hashtags_never_repeat_and_stop_at_max() {
        let dec = letters(&["ab", "b"]);
        // A model that would say "b, b, b, ..." forever.
        let got = run(&dec, 3, |step, t| match (step % 3, t) {
            (0, 30) | (1, 4) | (2, 40) => 10.0,
            _ => 0.0,
        });
        assert_eq!(got.iter().filter(|t| *t == "b").count(), 1, "{got:?}");
        assert!(got.len() <= 2);
        let got = run(&dec, 1, |_, t| if t == 40 { 10.0 } else { 1.0 });
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn hashtags_that_merge_with_the_separator_are_left_out() {
        // "c+" ends in a character this encoder merges with ',' into one token (99).
        let encode = |t: &str| -> Result<Vec<u32>> {
            let t = t.replace("+,", "\u{1}");
            Ok(t.chars()
                .map(|c| match c {
                    ' ' => 30,
                    ',' => 40,
                    '+' => 41,
                    '\u{1}' => 99,
                    c => c as u32 - 'a' as u32 + 3,
                })
                .collect())
        };
        let vocab = vec!["c+".to_string(), "d".to_string()];
        let dec = HashtagDecoder::new(&vocab, 2, encode).unwrap().unwrap();
        assert_eq!(dec.tags, vec!["d".to_string()]);
        assert!(HashtagDecoder::new(&[], 2, encode).unwrap().is_none());
    }

    mod closed_vocabulary {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the model prefers, the decoder emits only vocabulary items, never one
            /// twice, and at most as many as asked for.
            #[test]
            fn emits_only_distinct_vocabulary_items(
                vocab in proptest::collection::btree_set("[a-e]{1,4}", 1..12),
                prefs in proptest::collection::vec(proptest::collection::vec(-5.0f32..5.0, 50), 1..64),
                max in 1usize..5,
            ) {
                let vocab: Vec<&str> = vocab.iter().map(String::as_str).collect();
                let dec = letters(&vocab);
                let step = std::cell::Cell::new(0usize);
                let got = dec
                    .decode(max, 64, prefs[0].clone(), |l, _| argmax(l), |_| {
                        step.set(step.get() + 1);
                        Ok(prefs[step.get() % prefs.len()].clone())
                    })
                    .unwrap();
                prop_assert!(got.len() <= max);
                let mut seen = std::collections::HashSet::new();
                for t in &got {
                    prop_assert!(vocab.contains(&t.as_str()), "{} is not in {:?}", t, vocab);
                    prop_assert!(seen.insert(t.clone()), "{} twice in {:?}", t, got);
                }
            }
        }
    }

    #[test]
    fn greedy_and_restrict() {
        let mut l = vec![0.1, 3.0, 2.0, -1.0];
        assert_eq!(argmax(&l), 1);
        restrict(&mut l, &[2, 3]);
        assert_eq!(argmax(&l), 2);
    }

    #[test]
    fn penalty_discourages_repeats() {
        let mut l = vec![2.0, 1.9, -1.0];
        penalise(&mut l, &[0, 2], 1.2);
        assert_eq!(argmax(&l), 1);
        assert!(l[2] < -1.0);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_p() {
        let l = vec![5.0, 4.9, -10.0, -10.0];
        let o = GenerateOptions { temperature: 1.0, top_p: 0.9, seed: 7, ..Default::default() };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| choose(&l, &o, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).iter().all(|&t| t < 2));
        assert!(draw(7).contains(&0) && draw(7).contains(&1));
    }
}
