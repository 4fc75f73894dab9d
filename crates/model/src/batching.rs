//! Batches of similar length: every path that runs many notes through the model (the service's
//! micro-batcher, `notellm embed`, `notellm eval`, the re-index) sorts them by token count and
//! cuts the sorted run where a [`Budget`] closes, so a batch pads little.

use notellm_note::Embedding;

use crate::ModelError;

/// The rule that closes a batch: at most `max_notes` notes and `longest x count <= max_tokens`.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    max_notes: usize,
    max_tokens: usize,
    longest: usize,
    count: usize,
}

impl Budget {
    pub fn new(max_notes: usize, max_tokens: usize) -> Self {
        Self { max_notes: max_notes.max(1), max_tokens, longest: 0, count: 0 }
    }

    /// Admits a note of `len` tokens if it fits; the first note of a batch always fits.
    pub fn admit(&mut self, len: usize) -> bool {
        let longest = self.longest.max(len);
        let fits = self.count == 0 || (self.count < self.max_notes && longest * (self.count + 1) <= self.max_tokens);
        if fits {
            self.longest = longest;
            self.count += 1;
        }
        fits
    }
}

/// The indices of `lens`, shortest first (equal lengths in input order), cut into batches by
/// `Budget::new(max_notes, max_tokens)`. Every index is in exactly one batch.
pub fn by_length(lens: &[usize], max_notes: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut batches = Vec::new();
    let mut rest = order.into_iter().peekable();
    while rest.peek().is_some() {
        let mut budget = Budget::new(max_notes, max_tokens);
        let mut batch = Vec::new();
        while let Some(i) = rest.next_if(|&i| budget.admit(lens[i])) {
            batch.push(i);
        }
        batches.push(batch);
    }
    batches
}

/// Embeds token sequences in batches of similar length, at most `max_notes` each: `embed` runs
/// each batch (one embedding per sequence, in order) and `done(n)` follows it. Returns one
/// embedding per input, in input order.
pub fn embed_by_length<E: From<ModelError>>(
    seqs: &[Vec<u32>],
    max_notes: usize,
    mut embed: impl FnMut(&[Vec<u32>]) -> Result<Vec<Embedding>, E>,
    mut done: impl FnMut(usize),
) -> Result<Vec<Embedding>, E> {
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut out: Vec<Option<Embedding>> = vec![None; seqs.len()];
    for batch in by_length(&lens, max_notes, usize::MAX) {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|&i| seqs[i].clone()).collect();
        let embedded = embed(&inputs)?;
        if embedded.len() != batch.len() {
            return Err(ModelError::Input(format!(
                "a batch of {} notes came back with {} embeddings",
                batch.len(),
                embedded.len()
            ))
            .into());
        }
        for (&i, e) in batch.iter().zip(embedded) {
            out[i] = Some(e);
        }
        done(batch.len());
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Cutting a FIFO queue with `Budget` serves every note exactly once, in order, and no
        /// batch breaks a limit (a single note longer than the budget is refused up front, so
        /// lengths here stay within it).
        #[test]
        fn budget_cuts_queues_within_limits(lens in proptest::collection::vec(1usize..300, 1..200), max_notes in 1usize..40, max_tokens in 300usize..5000) {
            let mut batches: Vec<Vec<usize>> = Vec::new();
            let mut i = 0;
            while i < lens.len() {
                let mut b = Budget::new(max_notes, max_tokens);
                let mut cur = Vec::new();
                while i < lens.len() && b.admit(lens[i]) {
                    cur.push(lens[i]);
                    i += 1;
                }
                prop_assert!(!cur.is_empty());
                batches.push(cur);
            }
            prop_assert_eq!(batches.concat(), lens);
            for b in &batches {
                prop_assert!(b.len() <= max_notes);
                prop_assert!(b.iter().max().unwrap() * b.len() <= max_tokens);
            }
        }

        /// `by_length` places every index once, sorted by length across and within batches,
        /// and no batch breaks a limit.
        #[test]
        fn by_length_sorts_and_covers(lens in proptest::collection::vec(1usize..300, 0..200), max_notes in 1usize..40, max_tokens in 300usize..5000) {
            let batches = by_length(&lens, max_notes, max_tokens);
            let flat: Vec<usize> = batches.concat();
            let mut seen = flat.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
            prop_assert!(flat.windows(2).all(|w| lens[w[0]] <= lens[w[1]]));
            for b in &batches {
                prop_assert!(!b.is_empty() && b.len() <= max_notes);
                prop_assert!(b.iter().map(|&i| lens[i]).max().unwrap() * b.len() <= max_tokens);
            }
        }

        /// What comes back is in input order whatever order the batches ran in.
        #[test]
        fn embed_by_length_keeps_input_order(lens in proptest::collection::vec(1usize..50, 0..60), max_notes in 1usize..9) {
            let seqs: Vec<Vec<u32>> = lens.iter().enumerate().map(|(i, &n)| vec![i as u32; n]).collect();
            let key = |i: u32| Embedding::normalised(vec![1.0, i as f32]).unwrap();
            let out = embed_by_length::<ModelError>(
                &seqs,
                max_notes,
                |batch| {
                    assert!(batch.len() <= max_notes);
                    Ok(batch.iter().map(|s| key(s[0])).collect())
                },
                |_| {},
            ).unwrap();
            prop_assert_eq!(out.len(), seqs.len());
            for (i, e) in out.iter().enumerate() {
                prop_assert_eq!(e, &key(i as u32));
            }
        }
    }
}
