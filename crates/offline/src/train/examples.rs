//! Training sequences: a note rendered with one of the two prompt variants, followed by its
//! output and `[EOS]`, with the position whose final state is the note's embedding (the token
//! right before `[EMB]`) and where the labelled output starts.
//!
//! The variant is drawn once per note and run from `(seed, note id)`: a share `r` of the notes
//! that have hashtags use the hashtag variant with `j` drawn from `1..=n` and `j` of the note's
//! hashtags (a random subset, in the note's order) as the output; the others use the category
//! variant. Drawing once per run (the paper trains one epoch, where this is the same thing) keeps a
//! note's sequence fixed, so the frozen layers' output for it can be computed once and cached.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use notellm_model::prompt::{self, Limits, Variant};
use notellm_model::{ModelError, NoteTokenizer, Result};
use notellm_note::hash::Fnv1a64;
use notellm_note::Note;

/// One tokenised training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// The embedding is the final state at this position (the token before `[EMB]`).
    pub emb_pos: usize,
    /// Tokens `ids[labels_from..]` (the output and `[EOS]`) are predicted from the state one
    /// position earlier; `labels_from == ids.len()` means no generation target.
    pub labels_from: usize,
}

impl Example {
    pub fn label_count(&self) -> usize {
        self.ids.len() - self.labels_from
    }
}

/// FNV-1a 64 seeded by `seed`: the same choice for a note in every run with that seed.
pub fn stable_hash(seed: u64, text: &str) -> u64 {
    Fnv1a64::with_state(Fnv1a64::OFFSET_BASIS ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .write(text.as_bytes())
        .finish()
}

/// The variant and output for `note` in a run with `seed`.
pub fn choose_variant(note: &Note, note_id: &str, hashtag_share: f64, seed: u64) -> (Variant, Option<String>) {
    let mut rng = StdRng::seed_from_u64(stable_hash(seed, note_id));
    let n = note.hashtags.len();
    if n > 0 && rng.random::<f64>() < hashtag_share {
        let j = rng.random_range(1..=n);
        let mut picked = rand::seq::index::sample(&mut rng, n, j).into_vec();
        picked.sort_unstable();
        let tags: Vec<String> = picked.into_iter().map(|i| note.hashtags[i].clone()).collect();
        (Variant::Hashtags { j }, Some(prompt::hashtag_output(&tags)))
    } else {
        let output = note.category.as_ref().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
        (Variant::Category, output)
    }
}

/// Tokenises `note` in `variant` with `output` (the generation target, if any).
pub fn build(
    tok: &NoteTokenizer,
    limits: Limits,
    note: &Note,
    variant: Variant,
    output: Option<&str>,
) -> Result<Example> {
    // The hashtag variant leaves the hashtags out of its input.
    let input = match variant {
        Variant::Hashtags { .. } => Note { hashtags: Vec::new(), ..note.clone() },
        Variant::Category => note.clone(),
    };
    let p = prompt::render(&input, variant, limits, tok.specials(), tok);
    let through = tok.encode(&p.through_emb)?;
    let emb_at = match through.iter().rposition(|&t| t == tok.emb_id) {
        Some(i) if i > 0 => i,
        _ => return Err(ModelError::Tokenizer("the prompt did not produce the [EMB] token".into())),
    };
    let Some(output) = output else {
        return Ok(Example { labels_from: through.len(), ids: through, emb_pos: emb_at - 1 });
    };
    let prefix = tok.encode(&p.for_generation())?;
    let ids = tok.encode(&p.with_output(&specials_free(tok, output), &tok.specials().eos))?;
    // The output must tokenise on its own after the guidance; the guidance ends in ':' and the
    // output starts with a space, so the byte-level pre-tokeniser splits there.
    if !ids.starts_with(&prefix) || ids.len() <= prefix.len() || ids[..=emb_at] != through[..=emb_at] {
        return Err(ModelError::Tokenizer("the output does not tokenise apart from its prompt".into()));
    }
    Ok(Example { labels_from: prefix.len(), ids, emb_pos: emb_at - 1 })
}

fn specials_free(tok: &NoteTokenizer, text: &str) -> String {
    tok.specials().defuse(text)
}

/// The sequence the service embeds for `note` (category variant, up to the token before
/// `[EMB]`), as an example without labels.
pub fn for_embedding(tok: &NoteTokenizer, limits: Limits, note: &Note) -> Result<Example> {
    let mut ex = build(tok, limits, note, Variant::Category, None)?;
    ex.ids.truncate(ex.emb_pos + 1);
    ex.labels_from = ex.ids.len();
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(tags: &[&str]) -> Note {
        Note {
            title: "t".into(),
            content: "c".into(),
            hashtags: tags.iter().map(|s| s.to_string()).collect(),
            category: Some("utils".into()),
        }
    }

    #[test]
    fn variants_are_deterministic_and_respect_the_share() {
        let n = note(&["a", "b", "c"]);
        let mut hashtag = 0;
        for i in 0..2000 {
            let id = format!("note-{i}");
            let first = choose_variant(&n, &id, 0.4, 7);
            assert_eq!(first, choose_variant(&n, &id, 0.4, 7));
            if let (Variant::Hashtags { j }, Some(out)) = &first {
                hashtag += 1;
                assert!((1..=3).contains(j));
                assert_eq!(out.split(", ").count(), *j);
            }
        }
        let share = hashtag as f64 / 2000.0;
        assert!((0.35..0.45).contains(&share), "{share}");
        // No hashtags: always the category variant.
        assert!(matches!(choose_variant(&note(&[]), "x", 1.0, 7).0, Variant::Category));
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(0, ""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(stable_hash(1, "a"), stable_hash(2, "a"));
    }
}
