//! Suggestions by the vote of labelled neighbours: each neighbour votes for its category and
//! its hashtags with its similarity as weight; the category with the largest summed weight wins
//! and the hashtags with the largest summed weights are suggested (as many as asked for).
//!
//! `/suggest-tags` votes with the nearest indexed notes under the serving model's embeddings,
//! and `notellm eval` measures the same vote (with any encoder's scores) as a baseline. Ties go
//! to the name that sorts first, so results are deterministic.

use std::collections::HashMap;

use super::Suggestion;

/// Weight of a neighbour whose similarity is not positive (or not a number): it still counts,
/// barely.
pub const MIN_WEIGHT: f64 = 1e-6;

/// One neighbour's labels and its similarity to the note being suggested for.
#[derive(Debug, Clone, Copy)]
pub struct Voter<'a> {
    pub hashtags: &'a [String],
    pub category: Option<&'a str>,
    pub similarity: f32,
}

/// Summed votes; [`Ballot::result`] ranks them.
#[derive(Debug, Default)]
pub struct Ballot<'a> {
    categories: HashMap<&'a str, f64>,
    hashtags: HashMap<&'a str, f64>,
}

impl<'a> Ballot<'a> {
    /// Counts one voter: blank labels are ignored, a hashtag repeated on one note counts once.
    pub fn add(&mut self, v: Voter<'a>) {
        let w = f64::from(v.similarity);
        let w = if w > MIN_WEIGHT { w } else { MIN_WEIGHT };
        if let Some(c) = v.category.map(str::trim).filter(|c| !c.is_empty()) {
            *self.categories.entry(c).or_default() += w;
        }
        let mut tags: Vec<&str> = v.hashtags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
        tags.sort_unstable();
        tags.dedup();
        for t in tags {
            *self.hashtags.entry(t).or_default() += w;
        }
    }

    /// Whether any voter had a label to vote with.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty() && self.hashtags.is_empty()
    }

    /// The winning category and the `hashtags` best-voted hashtags.
    pub fn result(self, hashtags: usize) -> Suggestion {
        Suggestion {
            hashtags: ranked(self.hashtags).into_iter().take(hashtags).collect(),
            category: ranked(self.categories).into_iter().next(),
        }
    }
}

/// The vote of `voters`, suggesting up to `hashtags` hashtags.
pub fn vote<'a>(voters: impl IntoIterator<Item = Voter<'a>>, hashtags: usize) -> Suggestion {
    let mut ballot = Ballot::default();
    for v in voters {
        ballot.add(v);
    }
    ballot.result(hashtags)
}

/// Keys by descending weight, ties by name.
fn ranked(weights: HashMap<&str, f64>) -> Vec<String> {
    let mut v: Vec<(&str, f64)> = weights.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(k, _)| k.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn v<'a>(hashtags: &'a [String], category: &'a str, similarity: f32) -> Voter<'a> {
        Voter { hashtags, category: Some(category), similarity }
    }

    #[test]
    fn weights_not_counts_decide() {
        let (games, libs) = (tags(&["role::program", "interface::x11"]), tags(&["devel::library"]));
        // one close "libs" note outweighs two distant "games" notes
        let s = vote([v(&games, "games", 0.2), v(&games, "games", 0.2), v(&libs, "libs", 0.9)], 3);
        assert_eq!(s.category.as_deref(), Some("libs"));
        assert_eq!(s.hashtags, vec!["devel::library", "interface::x11", "role::program"]);
        // a negative similarity still counts, barely: it only breaks what would be no answer
        let s = vote([v(&libs, "libs", -0.5)], 1);
        assert_eq!(s, Suggestion { hashtags: tags(&["devel::library"]), category: Some("libs".into()) });
        let s = vote([v(&games, "games", f32::NAN), v(&libs, "libs", 0.1)], 1);
        assert_eq!(s.category.as_deref(), Some("libs"));
    }

    #[test]
    fn blank_and_repeated_labels_do_not_vote() {
        let twice = tags(&["a", " a ", "", "b"]);
        let mut ballot = Ballot::default();
        ballot.add(Voter { hashtags: &[], category: Some("  "), similarity: 1.0 });
        assert!(ballot.is_empty());
        ballot.add(Voter { hashtags: &twice, category: None, similarity: 1.0 });
        let other = tags(&["b"]);
        ballot.add(Voter { hashtags: &other, category: Some("x"), similarity: 0.5 });
        assert!(!ballot.is_empty());
        // "a" counted once on its note (1.0), "b" twice (1.5)
        assert_eq!(ballot.result(5), Suggestion { hashtags: tags(&["b", "a"]), category: Some("x".into()) });
        assert_eq!(vote(std::iter::empty(), 3), Suggestion { hashtags: vec![], category: None });
    }
}
