//! Generation quality: what NoteLLM generates for a note (its hashtags and category) against the
//! note's own.
//!
//! Definitions (all shares in [0, 1]):
//! - Hashtags are compared after normalisation: trimmed, a leading `#` dropped, lowercased;
//!   empty ones are ignored and duplicates within a note collapse (set semantics).
//! - **Category accuracy**: over the notes that have a category, the share whose generated
//!   category equals it (trimmed, case-insensitive); no generated category counts as wrong.
//!   **Illusion**: over the same notes, the share whose generated category is not in the
//!   closed category list (the paper's "illusion"); **missing**: the share with none generated.
//! - **Hashtag precision / recall / F1**: set-based per note, `P = |G ∩ T| / |G|` (0 when nothing
//!   was generated), `R = |G ∩ T| / |T|`, `F1 = 2PR / (P + R)` (0 when both are 0); averaged
//!   over the notes that have hashtags (macro average; F1 is the mean of the per-note F1s).
//! - **ROUGE-L**: per note, over *tokens*: the generated hashtags in generation order, each split
//!   into lowercase alphanumeric words (`devel::lang:python` -> `devel lang python`), joined
//!   into one sequence; the same for the note's hashtags in their stored order. With L the
//!   length of their longest common subsequence, `P = L / |gen|`, `R = L / |ref|`,
//!   `F = 2PR / (P + R)` (beta = 1). Averaged over the notes that have hashtags.
//! - **Invented**: over every generated hashtag (all notes; after per-note dedup), the share
//!   found neither in the hashtag vocabulary (all hashtags of the training notes, normalised)
//!   nor in the note's text: its words do not occur as a contiguous run in the words of the
//!   note's title + content (words as in `eval::tfidf::tokenize`).

use std::collections::HashSet;

use serde::Serialize;

use super::error::Result;
use super::tfidf::{note_text, tokenize};
use notellm_model::{GenerateOptions, NoteLlm, Suggestion};
use notellm_note::Note;

/// Trimmed, without a leading `#`, lowercased.
pub fn normalise_hashtag(tag: &str) -> String {
    tag.trim().trim_start_matches('#').trim().to_lowercase()
}

/// Normalised, non-empty, deduplicated, in first-seen order.
fn hashtag_set(tags: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    tags.iter().map(|t| normalise_hashtag(t)).filter(|t| !t.is_empty() && seen.insert(t.clone())).collect()
}

/// The known hashtags (normalised): every hashtag of the training notes.
#[derive(Debug, Clone, Default)]
pub struct HashtagVocab(HashSet<String>);

impl HashtagVocab {
    pub fn from_notes<'a>(notes: impl IntoIterator<Item = &'a Note>) -> Self {
        Self(notes.into_iter().flat_map(|n| n.hashtags.iter()).map(|t| normalise_hashtag(t)).collect())
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.0.contains(&normalise_hashtag(tag))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CategoryMetrics {
    /// Notes that have a category (the denominator).
    pub notes: usize,
    pub accuracy: f64,
    pub illusion: f64,
    pub missing: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HashtagMetrics {
    /// Notes that have hashtags (the denominator of P/R/F1/ROUGE-L).
    pub notes: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub rouge_l: f64,
    /// Generated hashtags over all notes (after per-note dedup).
    pub generated: usize,
    /// Of those, the share found neither in the vocabulary nor in the note's text.
    pub invented: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationReport {
    pub notes: usize,
    pub category: CategoryMetrics,
    pub hashtags: HashtagMetrics,
}

/// Scores `generated[i]` against `truth[i]`. `categories` is the closed category list, `vocab`
/// the training hashtags.
pub fn evaluate_generation<'a>(
    cases: impl IntoIterator<Item = (&'a Note, &'a Suggestion)>,
    categories: &[String],
    vocab: &HashtagVocab,
) -> GenerationReport {
    let closed: HashSet<String> = categories.iter().map(|c| c.trim().to_lowercase()).collect();
    let mut r = GenerationReport::default();
    let (mut correct, mut illusion, mut missing) = (0usize, 0usize, 0usize);
    let (mut p_sum, mut r_sum, mut f_sum, mut rouge_sum) = (0.0, 0.0, 0.0, 0.0);
    let mut invented = 0usize;
    for (truth, gen) in cases {
        r.notes += 1;
        if let Some(want) = truth.category.as_deref().map(|c| c.trim().to_lowercase()).filter(|c| !c.is_empty()) {
            r.category.notes += 1;
            match gen.category.as_deref().map(|c| c.trim().to_lowercase()) {
                None => missing += 1,
                Some(got) => {
                    correct += usize::from(got == want);
                    illusion += usize::from(!closed.contains(&got));
                }
            }
        }

        let g = hashtag_set(&gen.hashtags);
        let t = hashtag_set(&truth.hashtags);
        if !t.is_empty() {
            r.hashtags.notes += 1;
            let (p, rc, f) = set_prf(&g, &t);
            p_sum += p;
            r_sum += rc;
            f_sum += f;
            rouge_sum += rouge_l(&hashtag_tokens(&gen.hashtags), &hashtag_tokens(&truth.hashtags));
        }
        if !g.is_empty() {
            let words: Vec<String> = tokenize(&note_text(truth)).collect();
            r.hashtags.generated += g.len();
            invented += g.iter().filter(|h| !vocab.contains(h) && !occurs_in(h, &words)).count();
        }
    }
    let share = |x: f64, n: usize| if n == 0 { 0.0 } else { x / n as f64 };
    r.category.accuracy = share(correct as f64, r.category.notes);
    r.category.illusion = share(illusion as f64, r.category.notes);
    r.category.missing = share(missing as f64, r.category.notes);
    r.hashtags.precision = share(p_sum, r.hashtags.notes);
    r.hashtags.recall = share(r_sum, r.hashtags.notes);
    r.hashtags.f1 = share(f_sum, r.hashtags.notes);
    r.hashtags.rouge_l = share(rouge_sum, r.hashtags.notes);
    r.hashtags.invented = share(invented as f64, r.hashtags.generated);
    r
}

/// Set precision, recall and F1 of `generated` against `truth` (both normalised sets).
pub fn set_prf(generated: &[String], truth: &[String]) -> (f64, f64, f64) {
    let truth_set: HashSet<&String> = truth.iter().collect();
    let hits = generated.iter().filter(|g| truth_set.contains(g)).count() as f64;
    let p = if generated.is_empty() { 0.0 } else { hits / generated.len() as f64 };
    let r = if truth.is_empty() { 0.0 } else { hits / truth.len() as f64 };
    let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    (p, r, f)
}

/// The words of the hashtags, in order, as one sequence.
pub fn hashtag_tokens(tags: &[String]) -> Vec<String> {
    tags.iter().flat_map(|t| tokenize(t).collect::<Vec<_>>()).collect()
}

/// Length of the longest common subsequence.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1 (beta = 1) of a candidate token sequence against a reference; 0 if either is empty.
pub fn rouge_l<T: PartialEq>(candidate: &[T], reference: &[T]) -> f64 {
    let l = lcs_len(candidate, reference) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, r) = (l / candidate.len() as f64, l / reference.len() as f64);
    2.0 * p * r / (p + r)
}

/// Whether the words of `tag` occur as a contiguous run in `words`.
fn occurs_in(tag: &str, words: &[String]) -> bool {
    let t: Vec<String> = tokenize(tag).collect();
    !t.is_empty() && words.windows(t.len()).any(|w| w == t.as_slice())
}

/// How many hashtags to ask for per note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashtagBudget {
    /// The same number for every note.
    Fixed(usize),
    /// As many as the note has (so precision and recall weigh alike), at least 1, at most `max`.
    TruthCount { max: usize },
}

impl Default for HashtagBudget {
    fn default() -> Self {
        Self::TruthCount { max: 10 }
    }
}

impl HashtagBudget {
    pub fn for_note(self, note: &Note) -> usize {
        match self {
            Self::Fixed(j) => j,
            Self::TruthCount { max } => hashtag_set(&note.hashtags).len().clamp(1, max.max(1)),
        }
    }
}

/// Runs `model.suggest` on every note (their hashtags and category are hidden from the model),
/// with a progress bar. Returns one suggestion per note, in order.
pub fn suggest_all(
    model: &NoteLlm,
    notes: &[Note],
    budget: HashtagBudget,
    opts: &GenerateOptions,
) -> Result<Vec<Suggestion>> {
    let bar = crate::progress::bar("generate", notes.len() as u64);
    let out = notes
        .iter()
        .map(|n| {
            let s = model.suggest(n, budget.for_note(n), opts);
            bar.inc(1);
            s
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    bar.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn note(title: &str, content: &str, tags: &[&str], cat: Option<&str>) -> Note {
        Note { title: title.into(), content: content.into(), hashtags: s(tags), category: cat.map(Into::into) }
    }

    fn sugg(tags: &[&str], cat: Option<&str>) -> Suggestion {
        Suggestion { hashtags: s(tags), category: cat.map(Into::into) }
    }

    #[test]
    fn lcs_and_rouge_by_hand() {
        assert_eq!(lcs_len(&s(&["a", "b", "c", "d"]), &s(&["a", "c", "d", "e"])), 3);
        assert_eq!(lcs_len::<String>(&[], &s(&["a"])), 0);
        // LCS 3, P = 3/4, R = 3/5, F = 2 * 0.75 * 0.6 / 1.35 = 2/3.
        let f = rouge_l(&s(&["a", "b", "c", "d"]), &s(&["a", "x", "c", "d", "y"]));
        assert!((f - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rouge_l(&s(&["a"]), &s(&["b"])), 0.0);
        assert_eq!(rouge_l(&s(&["a", "b"]), &s(&["a", "b"])), 1.0);
        assert_eq!(hashtag_tokens(&s(&["devel::lang:python", "#Web"])), s(&["devel", "lang", "python", "web"]));
    }

    #[test]
    fn set_prf_by_hand() {
        let (p, r, f) = set_prf(&s(&["a", "b", "c"]), &s(&["b", "c", "d", "e"]));
        assert!((p - 2.0 / 3.0).abs() < 1e-12 && (r - 0.5).abs() < 1e-12);
        assert!((f - 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)).abs() < 1e-12);
        assert_eq!(set_prf(&[], &s(&["a"])), (0.0, 0.0, 0.0));
    }

    #[test]
    fn report_by_hand() {
        let categories = s(&["devel", "games", "web"]);
        let train = [note("t", "c", &["role::program", "Use::Gaming"], None)];
        let vocab = HashtagVocab::from_notes(&train);
        assert!(vocab.contains("#use::gaming") && vocab.len() == 2);
        let truth = [
            // Note 1: category right; hashtags {a, b}, generated {A, c} (case-insensitive).
            note("Python debugger", "step through code", &["a", "b"], Some("Devel")),
            // Note 2: category outside the list (illusion); hashtags {x}, generated {x, y, x}.
            note("Chess game", "play chess online", &["x"], Some("games")),
            // Note 3: no category generated; no truth hashtags (excluded from P/R/F1/ROUGE).
            note("Web server", "serves static files", &[], Some("web")),
            // Note 4: no truth category (excluded from category metrics).
            note("misc", "", &["q"], None),
        ];
        let gen = [
            sugg(&["A", "c"], Some(" devel ")),
            sugg(&["x", "y", "x"], Some("board games")),
            sugg(&["static files", "role::program", "nginx"], None),
            sugg(&[], Some("web")),
        ];
        let r = evaluate_generation(truth.iter().zip(&gen), &categories, &vocab);
        assert_eq!(r.notes, 4);
        assert_eq!(r.category.notes, 3);
        assert!((r.category.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.category.illusion - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.category.missing - 1.0 / 3.0).abs() < 1e-12);
        // P: note1 1/2, note2 1/2 ({x,y}), note4 0 (nothing generated) -> 1/3.
        // R: note1 1/2, note2 1, note4 0 -> 1/2.  F1: note1 1/2, note2 2/3, note4 0 -> 7/18.
        assert_eq!(r.hashtags.notes, 3);
        assert!((r.hashtags.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.hashtags.recall - 0.5).abs() < 1e-12);
        assert!((r.hashtags.f1 - 7.0 / 18.0).abs() < 1e-12);
        // ROUGE-L: note1 [a c] vs [a b]: LCS 1 -> 1/2; note2 [x y x] vs [x]: LCS 1, P 1/3, R 1
        // -> 1/2; note4 empty -> 0. Mean 1/3.
        assert!((r.hashtags.rouge_l - 1.0 / 3.0).abs() < 1e-12);
        // Generated after dedup: 2 + 2 + 3 + 0 = 7. Invented: a, c (not in "python debugger
        // step through code" nor vocab), y, nginx -> 4; "x" is not in "chess game play chess
        // online" either -> 5. "static files" is in note 3's text, role::program in the vocab.
        assert_eq!(r.hashtags.generated, 7);
        assert!((r.hashtags.invented - 5.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn words_must_be_contiguous_and_whole() {
        let words: Vec<String> = tokenize("Install python3 and the static file server").collect();
        assert!(occurs_in("static-file", &words));
        assert!(!occurs_in("python", &words), "python3 is one word");
        assert!(!occurs_in("file static", &words));
        assert!(!occurs_in("::", &words));
    }

    #[test]
    fn empty_input_is_all_zero() {
        let r = evaluate_generation(std::iter::empty(), &[], &HashtagVocab::default());
        assert_eq!(r, GenerationReport::default());
    }

    #[test]
    fn budget() {
        let n = note("t", "", &["a", "A", "b"], None);
        assert_eq!(HashtagBudget::TruthCount { max: 10 }.for_note(&n), 2);
        assert_eq!(HashtagBudget::TruthCount { max: 1 }.for_note(&n), 1);
        assert_eq!(HashtagBudget::TruthCount { max: 5 }.for_note(&Note::default()), 1);
        assert_eq!(HashtagBudget::Fixed(3).for_note(&n), 3);
    }
}
