//! The causal-LM objective of `notellm train --objective lm`: pre-training a from-scratch
//! checkpoint (`notellm model init`) on the notes before the NoteLLM recipe fine-tunes it.
//!
//! - **Data**: the dataset's training-split notes, one sequence per note. Validation notes only
//!   score the model; test notes (the cold-start set of `notellm eval`) are never read.
//! - **Sequence**: a plain rendering, not the Note Compression Prompt:
//!
//!   ```text
//!   [BOS]<title>\n<content>\n<hashtag>, <hashtag>\n<category>[EOS]
//!   ```
//!
//!   each field cut to the checkpoint's token budgets (title, content; hashtags and category to
//!   the topic budget), empty fields leaving an empty line so a field is always on its line.
//!   The prompt's instruction and template are several dozen tokens, the same in every note:
//!   predicting them teaches nothing about the notes and would dilute the loss and the
//!   perplexity, and the NoteLLM stage learns the template anyway. The hashtags are joined
//!   as the prompt's hashtag output joins them, so the generation stage builds on the format.
//!   User text that spells a special token is defused as in the prompt; BOS and EOS are added
//!   as ids.
//! - **Loss**: mean next-token cross-entropy over every real target position of a micro-batch
//!   (EOS included, right padding never), averaged over the micro-batches of a step under
//!   gradient accumulation; the embedding head and tau get no gradient and stay as they are.
//! - **Batches**: a seeded shuffle of the notes per epoch cut into full batches (a partial last
//!   batch is dropped), so a resumed run sees the same batches.

use rand::seq::SliceRandom;

use notellm_model::prompt::{Limits, Specials, Truncate, HASHTAG_SEPARATOR};
use notellm_model::{NoteTokenizer, Result};
use notellm_note::Note;

/// The text of `note` between BOS and EOS (see the module doc), fields cut to `limits`.
pub fn render(note: &Note, limits: Limits, specials: &Specials, tok: &dyn Truncate) -> String {
    let field = |text: &str, max: usize| -> String {
        let clean = specials.defuse(text.trim());
        tok.truncate(&clean, max).trim_end().to_owned()
    };
    let tags = field(&note.hashtags.join(HASHTAG_SEPARATOR), limits.topic);
    // A list cut mid-way must not end in a dangling separator.
    let tags = tags.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
    format!(
        "{}\n{}\n{tags}\n{}",
        field(&note.title, limits.title),
        field(&note.content, limits.content),
        field(note.category.as_deref().unwrap_or(""), limits.topic)
    )
}

/// The token ids of `note`: BOS (when the checkpoint has one), the rendered text, EOS.
pub fn sequence(tok: &NoteTokenizer, limits: Limits, note: &Note) -> Result<Vec<u32>> {
    let body = tok.encode(&render(note, limits, tok.specials(), tok))?;
    let mut ids = Vec::with_capacity(body.len() + 2);
    ids.extend(tok.bos_id);
    ids.extend(body);
    ids.push(tok.eos_id);
    Ok(ids)
}

/// Micro-batches of `per_batch` notes (values of `notes`) for `epoch`: a seeded shuffle cut into
/// full batches; every note at most once per epoch.
pub fn epoch_batches(notes: &[usize], per_batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    if per_batch == 0 {
        return Vec::new();
    }
    let mut order = notes.to_vec();
    order.shuffle(&mut super::trainer::epoch_rng(seed, epoch));
    order.chunks_exact(per_batch).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// Counts whitespace-separated words as tokens.
    struct Words;
    impl Truncate for Words {
        fn truncate<'a>(&self, text: &'a str, max: usize) -> Cow<'a, str> {
            Cow::Owned(text.split_whitespace().take(max).collect::<Vec<_>>().join(" "))
        }
    }

    fn specials() -> Specials {
        Specials { bos: Some("<s>".into()), emb: "[EMB]".into(), eos: "</s>".into(), others: vec![] }
    }

    #[test]
    fn renders_every_field_on_its_line_within_the_budgets() {
        let note = Note {
            title: " Autumn hike ".into(),
            content: "Maple leaves everywhere </s> and more words".into(),
            hashtags: vec!["travel".into(), "autumn".into(), "leaves".into()],
            category: Some("Travel".into()),
        };
        let limits = Limits { title: 1, content: 5, topic: 2 };
        assert_eq!(
            render(&note, limits, &specials(), &Words),
            "Autumn\nMaple leaves everywhere < /s>\ntravel, autumn\nTravel"
        );
        let bare = Note { title: "t".into(), ..Note::default() };
        assert_eq!(render(&bare, Limits::default(), &specials(), &Words), "t\n\n\n");
    }

    #[test]
    fn batches_are_seeded_full_and_hold_each_note_once() {
        let notes: Vec<usize> = (100..137).collect();
        let a = epoch_batches(&notes, 8, 3, 0);
        assert_eq!(a, epoch_batches(&notes, 8, 3, 0));
        assert_ne!(a, epoch_batches(&notes, 8, 3, 1));
        assert_ne!(a, epoch_batches(&notes, 8, 4, 0));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|b| b.len() == 8));
        let mut used = a.concat();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), 32);
        assert!(used.iter().all(|n| notes.contains(n)));
        assert!(epoch_batches(&notes, 0, 3, 0).is_empty());
    }
}
