//! Suggestions by the vote of labelled neighbours: each neighbour votes for its category and
//! its hashtags with a weight that grows with its similarity ([`VoteRule`]); the category with
//! the largest summed weight wins and the hashtags with the largest summed weights are
//! suggested (as many as asked for, and only those whose share of the vote clears the rule's
//! threshold).
//!
//! `/suggest-tags` votes with the nearest indexed notes under the serving model's embeddings,
//! and `notellm eval` measures the same vote (with any encoder's scores) as a baseline. Ties go
//! to the name that sorts first, so results are deterministic.
//!
//! Why a rule and not plain similarity weights: in a small deployment every stored note is among
//! a draft's nearest, so every note votes and the deployment's majority wins every draft. A
//! floor keeps notes that are not similar at all out of the vote (a draft far from every note
//! gets no neighbour answer), a temperature (`exp((s - 1) / T)`) makes the nearest notes count
//! far more than the rest, and a share threshold answers only tags that a real part of the vote
//! carries. Measured on Debian's validation notes, only the floor is free: temperatures and
//! shares cost hashtag F1 there ([`DEFAULT_SUGGEST_RULE`]). The floor is a cosine, so it belongs
//! to a model's embeddings: all-MiniLM-L6-v2 scores unrelated notes 0.0-0.2, NoteLLM v3 0.4-0.5.

use std::collections::HashMap;

use super::Suggestion;

/// Weight of a neighbour whose similarity is not positive: it still counts, barely (one whose
/// similarity is not a number does not vote).
pub const MIN_WEIGHT: f64 = 1e-6;

/// How neighbours' similarities become votes, and which results are answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoteRule {
    /// `None`: a neighbour's weight is its similarity (at least [`MIN_WEIGHT`]). `Some(t)`: it is
    /// `exp((similarity - 1) / t)`, so with a small `t` the nearest notes dominate.
    pub temperature: Option<f64>,
    /// Neighbours less similar than this do not vote (`f32::NEG_INFINITY`: all vote).
    pub floor: f32,
    /// A hashtag is answered only when its weight is at least this share of all voters' weight
    /// (0: every hashtag any neighbour carries may be answered).
    pub min_share: f64,
}

/// The vote `/suggest-tags` counts unless told otherwise: similarity weights, neighbours under a
/// cosine of 0.3 left out. Chosen for hashtag F1 on Debian's validation notes among 64 rules
/// (temperatures 0.02-0.1, floors up to 0.4, shares up to 0.3; docs/training.md, "Tags a creator
/// keeps"): under all-MiniLM-L6-v2 the plain vote scored 51.48, this rule 51.31, every temperature
/// and share lower (a share of 0.1 cost 1.0 point, a temperature 1.5-3.4). The floor is what
/// keeps a small deployment's unrelated notes out of a draft's answer.
pub const DEFAULT_SUGGEST_RULE: VoteRule = VoteRule { temperature: None, floor: 0.3, min_share: 0.0 };

impl Default for VoteRule {
    /// The plain vote: similarity weights, no floor, no threshold.
    fn default() -> Self {
        Self { temperature: None, floor: f32::NEG_INFINITY, min_share: 0.0 }
    }
}

impl VoteRule {
    /// Checks the rule's numbers (a flag's or a config's).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = self.temperature {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!("the vote temperature must be a positive number, got {t}"));
            }
        }
        if self.floor.is_nan() || self.floor > 1.0 {
            return Err(format!("the vote's similarity floor must be at most 1, got {}", self.floor));
        }
        if !(0.0..=1.0).contains(&self.min_share) {
            return Err(format!("the vote's hashtag share must be between 0 and 1, got {}", self.min_share));
        }
        Ok(())
    }

    /// A neighbour's weight, or `None` when it does not vote.
    pub fn weight(&self, similarity: f32) -> Option<f64> {
        if similarity.is_nan() || similarity < self.floor {
            return None;
        }
        let s = f64::from(similarity);
        let w = match self.temperature {
            None => s,
            // Cosines are at most 1, so the weight is at most 1 and never overflows.
            Some(t) => ((s.min(1.0) - 1.0) / t).exp(),
        };
        Some(if w > MIN_WEIGHT { w } else { MIN_WEIGHT })
    }

    /// Whether this is the plain vote: similarity weights, every neighbour (a floor of -1 or
    /// less lets every cosine through), every tag.
    pub fn is_plain(&self) -> bool {
        self.temperature.is_none() && self.floor <= -1.0 && self.min_share == 0.0
    }

    /// A short label for tables and logs, e.g. `T 0.05, floor 0.3, share 0.2`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        match self.temperature {
            Some(t) => parts.push(format!("T {t}")),
            None => parts.push("linear".to_owned()),
        }
        if self.floor > -1.0 {
            parts.push(format!("floor {}", self.floor));
        }
        if self.min_share > 0.0 {
            parts.push(format!("share {}", self.min_share));
        }
        parts.join(", ")
    }
}

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
    rule: VoteRule,
    categories: HashMap<&'a str, f64>,
    hashtags: HashMap<&'a str, f64>,
    /// Summed weight of every voter that voted (labelled or not): the hashtag shares' base.
    total: f64,
}

impl<'a> Ballot<'a> {
    /// An empty ballot counted by `rule`.
    pub fn new(rule: VoteRule) -> Self {
        Self { rule, ..Default::default() }
    }

    /// Counts one voter: blank labels are ignored, a hashtag repeated on one note counts once;
    /// a voter below the rule's floor is not counted at all.
    pub fn add(&mut self, v: Voter<'a>) {
        let Some(w) = self.rule.weight(v.similarity) else { return };
        self.total += w;
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

    /// The winning category and the `hashtags` best-voted hashtags whose share of the vote
    /// clears the rule's threshold.
    pub fn result(self, hashtags: usize) -> Suggestion {
        let floor = self.rule.min_share * self.total;
        Suggestion {
            hashtags: ranked(self.hashtags)
                .into_iter()
                .take_while(|(_, w)| *w >= floor)
                .take(hashtags)
                .map(|(k, _)| k)
                .collect(),
            category: ranked(self.categories).into_iter().next().map(|(k, _)| k),
        }
    }
}

/// The plain vote of `voters` ([`VoteRule::default`]), suggesting up to `hashtags` hashtags.
pub fn vote<'a>(voters: impl IntoIterator<Item = Voter<'a>>, hashtags: usize) -> Suggestion {
    vote_by(VoteRule::default(), voters, hashtags)
}

/// The vote of `voters` counted by `rule`, suggesting up to `hashtags` hashtags.
pub fn vote_by<'a>(rule: VoteRule, voters: impl IntoIterator<Item = Voter<'a>>, hashtags: usize) -> Suggestion {
    let mut ballot = Ballot::new(rule);
    for v in voters {
        ballot.add(v);
    }
    ballot.result(hashtags)
}

/// Keys with their weights, by descending weight, ties by name.
fn ranked(weights: HashMap<&str, f64>) -> Vec<(String, f64)> {
    let mut v: Vec<(&str, f64)> = weights.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(k, w)| (k.to_owned(), w)).collect()
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

    #[test]
    fn a_temperature_lets_the_nearest_outvote_the_many() {
        let (travel, code) = (tags(&["travel", "city"]), tags(&["programming"]));
        // one close travel note against three programming notes a little further away
        let voters = || {
            [v(&travel, "travel", 0.62), v(&code, "programming", 0.45), v(&code, "programming", 0.44)]
                .into_iter()
                .chain([v(&code, "programming", 0.43)])
        };
        // linear weights: a head count, the majority wins
        assert_eq!(vote(voters(), 1).category.as_deref(), Some("programming"));
        let rule = VoteRule { temperature: Some(0.05), ..Default::default() };
        let s = vote_by(rule, voters(), 3);
        assert_eq!(s.category.as_deref(), Some("travel"));
        // exp(-0.38 / 0.05) vs 3 x ~exp(-0.56 / 0.05): travel holds ~92% of the vote
        let sharp = VoteRule { min_share: 0.2, ..rule };
        assert_eq!(vote_by(sharp, voters(), 3).hashtags, tags(&["city", "travel"]));
        // without the threshold the stragglers' tag is still answered, last
        assert_eq!(s.hashtags, tags(&["city", "travel", "programming"]));
    }

    #[test]
    fn the_floor_keeps_strangers_out_and_shares_count_every_voter() {
        let (a, b) = (tags(&["a"]), tags(&["b"]));
        let rule = VoteRule { floor: 0.3, ..Default::default() };
        // nobody above the floor: no answer at all, never the strangers' majority
        let s = vote_by(rule, [v(&a, "x", 0.1), v(&a, "x", 0.2)], 3);
        assert_eq!(s, Suggestion { hashtags: vec![], category: None });
        let s = vote_by(rule, [v(&a, "x", 0.5), v(&b, "y", 0.29), v(&b, "y", f32::NAN)], 3);
        assert_eq!(s, Suggestion { hashtags: tags(&["a"]), category: Some("x".into()) });
        // shares are of every voter's weight, unlabelled ones included: 0.5 of 1.0 clears 0.5,
        // 0.25 does not
        let none: Vec<String> = Vec::new();
        let rule = VoteRule { min_share: 0.5, ..Default::default() };
        let s = vote_by(
            rule,
            [v(&a, "x", 0.5), v(&b, "x", 0.25), Voter { hashtags: &none, category: None, similarity: 0.25 }],
            3,
        );
        assert_eq!(s.hashtags, tags(&["a"]));
    }

    #[test]
    fn rules_are_validated_and_labelled() {
        assert!(VoteRule::default().validate().is_ok());
        assert_eq!(VoteRule::default().label(), "linear");
        assert!(VoteRule::default().is_plain() && VoteRule { floor: -1.0, ..Default::default() }.is_plain());
        assert!(!DEFAULT_SUGGEST_RULE.is_plain());
        assert_eq!(DEFAULT_SUGGEST_RULE.label(), "linear, floor 0.3");
        let r = VoteRule { temperature: Some(0.05), floor: 0.3, min_share: 0.2 };
        assert!(r.validate().is_ok());
        assert_eq!(r.label(), "T 0.05, floor 0.3, share 0.2");
        for bad in [
            VoteRule { temperature: Some(0.0), ..Default::default() },
            VoteRule { temperature: Some(f64::NAN), ..Default::default() },
            VoteRule { floor: 1.5, ..Default::default() },
            VoteRule { floor: f32::NAN, ..Default::default() },
            VoteRule { min_share: 1.5, ..Default::default() },
            VoteRule { min_share: -0.1, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // weights: at most 1 with a temperature, never below MIN_WEIGHT
        let t = VoteRule { temperature: Some(0.1), ..Default::default() };
        assert_eq!(t.weight(1.0), Some(1.0));
        assert_eq!(t.weight(-1.0), Some(MIN_WEIGHT));
        assert_eq!(t.weight(f32::NAN), None);
    }
}
