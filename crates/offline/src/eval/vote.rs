//! Generation baselines that need no generator, so that the model's hashtags and categories are
//! judged against what a lookup would give:
//!
//! - [`Majority`]: the training split's most frequent category, and its most frequent hashtags.
//! - [`vote`]: the k training notes most similar to the note (by any encoder's scores) vote,
//!   each with its similarity as weight ([`notellm_model::vote`], the vote `/suggest-tags`
//!   serves from the index's nearest notes).
//!
//! Ties go to the name that sorts first, so results are deterministic.

use notellm_model::vote::{Ballot, VoteRule, Voter};
use notellm_model::Suggestion;
use notellm_note::Note;

/// The majority baseline.
#[derive(Debug, Clone)]
pub struct Majority {
    suggestion: Suggestion,
}

impl Majority {
    pub fn fit<'a>(notes: impl IntoIterator<Item = &'a Note>) -> Self {
        let mut ballot = Ballot::default();
        for n in notes {
            ballot.add(voter(n, 1.0));
        }
        Self { suggestion: ballot.result(usize::MAX) }
    }

    /// The same answer for every note: the top category and the `hashtags` most common tags.
    pub fn suggest(&self, hashtags: usize) -> Suggestion {
        Suggestion {
            hashtags: self.suggestion.hashtags.iter().take(hashtags).cloned().collect(),
            category: self.suggestion.category.clone(),
        }
    }
}

/// The plain vote ([`VoteRule::default`]) of the `k` highest-scoring notes of `train`
/// (`scores[i]` is the similarity of `train[i]` to the note), suggesting up to `hashtags`
/// hashtags.
pub fn vote(train: &[&Note], scores: &[f32], k: usize, hashtags: usize) -> Suggestion {
    vote_by(VoteRule::default(), train, scores, k, hashtags)
}

/// [`vote`] counted by `rule`.
pub fn vote_by(rule: VoteRule, train: &[&Note], scores: &[f32], k: usize, hashtags: usize) -> Suggestion {
    let mut order: Vec<usize> = (0..train.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    notellm_model::vote::vote_by(rule, order.iter().take(k).map(|&i| voter(train[i], scores[i])), hashtags)
}

fn voter(n: &Note, similarity: f32) -> Voter<'_> {
    Voter { hashtags: &n.hashtags, category: n.category.as_deref(), similarity }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(tags: &[&str], cat: &str) -> Note {
        Note {
            title: "t".into(),
            content: "c".into(),
            hashtags: tags.iter().map(|s| s.to_string()).collect(),
            category: Some(cat.into()),
        }
    }

    #[test]
    fn the_nearest_notes_vote_by_similarity() {
        let pool = [
            note(&["role::program", "interface::x11"], "games"),
            note(&["role::program"], "games"),
            note(&["devel::library"], "libs"),
            note(&["devel::library", "role::devel-lib"], "libdevel"),
        ];
        let train: Vec<&Note> = pool.iter().collect();
        // Close to the two games; the library notes are far.
        let s = vote(&train, &[0.9, 0.8, 0.1, 0.05], 3, 2);
        assert_eq!(s.category.as_deref(), Some("games"));
        assert_eq!(s.hashtags, vec!["role::program", "interface::x11"]);
        // k = 1 takes the single nearest note only.
        let s = vote(&train, &[0.1, 0.2, 0.3, 0.9], 1, 5);
        assert_eq!(s.category.as_deref(), Some("libdevel"));
        assert_eq!(s.hashtags, vec!["devel::library", "role::devel-lib"]);
        // weights, not counts: one very close "libs" note outweighs two distant "games" notes
        let s = vote(&train, &[0.2, 0.2, 0.9, -1.0], 3, 1);
        assert_eq!(s.category.as_deref(), Some("libs"));
        // no hashtags asked for, none given
        assert!(vote(&train, &[0.9, 0.8, 0.1, 0.05], 3, 0).hashtags.is_empty());
        assert_eq!(vote(&[], &[], 3, 2), Suggestion { hashtags: vec![], category: None });
    }

    #[test]
    fn majority_gives_the_most_common_answer_with_ties_by_name() {
        let pool = [note(&["b", "a"], "x"), note(&["a"], "y"), note(&["c"], "y")];
        let m = Majority::fit(&pool);
        assert_eq!(m.suggest(2), Suggestion { hashtags: vec!["a".into(), "b".into()], category: Some("y".into()) });
        assert_eq!(m.suggest(0).hashtags, Vec::<String>::new());
    }
}
