//! `POST /suggest-tags`: hashtags and a category for a draft.
//!
//! Two sources, chosen by [`SuggestFrom`]:
//! - **neighbours** (the default): the draft is embedded by the serving model (the embedding
//!   queue), its nearest indexed notes are found, and they vote with their stored hashtags and
//!   category, each weighted by its similarity ([`notellm_model::vote`]), so the answer speaks the
//!   deployment's own vocabulary (not the checkpoint's training lists). When the index is still
//!   being restored, or no neighbour carries a label, the answer is generated instead. How
//!   similarities become votes, and which tags are answered, is the [`VoteRule`]
//!   (`--suggest-temperature`, `--suggest-floor`, `--suggest-min-share`): a draft far from every
//!   stored note gets few or no hashtags, never the deployment's majority.
//! - **generate**: the LLM generates them with the generation half of the Note Compression
//!   Prompt (the generation queue).
//!
//! A sentence-encoder checkpoint cannot generate: it answers from the neighbours only (an
//! empty answer when none carries a label), and `generate` is refused with a 422.
//!
//! The answer says which source it came from; `notellm_suggestions_total{source}` counts them.

use std::str::FromStr;

use serde::Serialize;
use tracing::Instrument;

use super::{App, AppError};
use notellm_model::vote::{Ballot, VoteRule, Voter};
use notellm_model::Suggestion;
use notellm_note::Note;

/// `--suggest-neighbours`' default: the k of the vote `notellm eval` measures.
pub const DEFAULT_SUGGEST_NEIGHBOURS: usize = 10;
/// Most neighbours a vote may ask for.
pub const MAX_SUGGEST_NEIGHBOURS: usize = 200;

/// Where `/suggest-tags` answers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuggestFrom {
    /// The vote of the nearest indexed notes, generation as the fallback.
    #[default]
    Neighbours,
    /// Generation by the LLM only.
    Generate,
}

impl FromStr for SuggestFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "neighbours" | "neighbors" => Ok(Self::Neighbours),
            "generate" => Ok(Self::Generate),
            other => Err(format!("unknown suggestion source {other:?}: expected \"neighbours\" or \"generate\"")),
        }
    }
}

/// The vote `/suggest-tags` counts by default ([`notellm_model::vote::DEFAULT_SUGGEST_RULE`]).
pub const DEFAULT_VOTE_RULE: VoteRule = notellm_model::vote::DEFAULT_SUGGEST_RULE;
/// `--suggest-temperature`'s default (0: the plain, similarity-weighted vote).
pub const DEFAULT_SUGGEST_TEMPERATURE: f64 = match DEFAULT_VOTE_RULE.temperature {
    Some(t) => t,
    None => 0.0,
};
/// `--suggest-floor`'s default.
pub const DEFAULT_SUGGEST_FLOOR: f32 = DEFAULT_VOTE_RULE.floor;
/// `--suggest-min-share`'s default.
pub const DEFAULT_SUGGEST_MIN_SHARE: f64 = DEFAULT_VOTE_RULE.min_share;

/// How `/suggest-tags` answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuggestConfig {
    pub from: SuggestFrom,
    /// Nearest notes that vote (1..=[`MAX_SUGGEST_NEIGHBOURS`]).
    pub neighbours: usize,
    /// How their similarities count, and which tags are answered.
    pub rule: VoteRule,
}

impl Default for SuggestConfig {
    fn default() -> Self {
        Self { from: SuggestFrom::default(), neighbours: DEFAULT_SUGGEST_NEIGHBOURS, rule: DEFAULT_VOTE_RULE }
    }
}

impl SuggestConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_SUGGEST_NEIGHBOURS).contains(&self.neighbours) {
            return Err(format!(
                "suggestion neighbours must be between 1 and {MAX_SUGGEST_NEIGHBOURS}, got {}",
                self.neighbours
            ));
        }
        self.rule.validate()
    }
}

/// Which source an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SuggestionSource {
    Neighbours,
    Generated,
}

impl SuggestionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Neighbours => "neighbours",
            Self::Generated => "generated",
        }
    }
}

/// `/suggest-tags`' answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggested {
    #[serde(flatten)]
    pub suggestion: Suggestion,
    pub source: SuggestionSource,
}

impl App {
    /// Hashtags (at most `max_hashtags`) and a category for a draft (its own hashtags and
    /// category are not looked at).
    pub async fn suggest(&self, note: Note, max_hashtags: usize) -> Result<Suggested, AppError> {
        let span = tracing::debug_span!("suggest", from = ?self.suggest.from, max_hashtags);
        let answer = self.suggest_from(note.draft(), max_hashtags).instrument(span).await?;
        self.metrics.suggestions.with_label_values(&[answer.source.as_str()]).inc();
        Ok(answer)
    }

    async fn suggest_from(&self, note: Note, max_hashtags: usize) -> Result<Suggested, AppError> {
        if self.suggest.from == SuggestFrom::Neighbours && self.is_ready() {
            if let Some(suggestion) = self.vote_of_neighbours(&note, max_hashtags).await? {
                return Ok(Suggested { suggestion, source: SuggestionSource::Neighbours });
            }
            // A sentence encoder has no generation to fall back on: no labelled neighbour means
            // nothing to suggest, which is an answer, not an error.
            if !self.serving().batcher.can_generate() {
                let suggestion = Suggestion { hashtags: Vec::new(), category: None };
                return Ok(Suggested { suggestion, source: SuggestionSource::Neighbours });
            }
        }
        self.generated(note, max_hashtags).await
    }

    async fn generated(&self, note: Note, max_hashtags: usize) -> Result<Suggested, AppError> {
        let suggestion = self.serving().batcher.suggest(note, max_hashtags).await?;
        Ok(Suggested { suggestion, source: SuggestionSource::Generated })
    }

    /// The vote of the draft's nearest indexed notes; `None` when none has a label.
    async fn vote_of_neighbours(&self, note: &Note, max_hashtags: usize) -> Result<Option<Suggestion>, AppError> {
        let serving = self.serving();
        let query = serving.batcher.embed(note).await?;
        let hits = self.search(&serving, &query, self.suggest.neighbours, None).await?;
        if hits.is_empty() {
            return Ok(None);
        }
        let ids: Vec<_> = hits.iter().map(|h| h.id.clone()).collect();
        let labels = self.store.labels(&ids).await.map_err(|e| self.store_err("labels", e))?;
        let mut ballot = Ballot::new(self.suggest.rule);
        // A note deleted since the search has no labels left and does not vote.
        for (id, l) in &labels {
            let Some(hit) = hits.iter().find(|h| &h.id == id) else { continue };
            ballot.add(Voter { hashtags: &l.hashtags, category: l.category.as_deref(), similarity: hit.score });
        }
        tracing::debug!(neighbours = hits.len(), labelled = labels.len(), "neighbours voted");
        Ok((!ballot.is_empty()).then(|| ballot.result(max_hashtags)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_neighbours_are_bounded() {
        assert_eq!("neighbours".parse::<SuggestFrom>(), Ok(SuggestFrom::Neighbours));
        assert_eq!(" Neighbors ".parse::<SuggestFrom>(), Ok(SuggestFrom::Neighbours));
        assert_eq!("generate".parse::<SuggestFrom>(), Ok(SuggestFrom::Generate));
        assert!("llm".parse::<SuggestFrom>().unwrap_err().contains("\"llm\""));
        assert!(SuggestConfig::default().validate().is_ok());
        assert!(SuggestConfig { neighbours: 0, ..Default::default() }.validate().is_err());
        assert!(SuggestConfig { neighbours: MAX_SUGGEST_NEIGHBOURS + 1, ..Default::default() }.validate().is_err());
        let rule = VoteRule { min_share: 2.0, ..DEFAULT_VOTE_RULE };
        assert_eq!((DEFAULT_SUGGEST_TEMPERATURE, DEFAULT_SUGGEST_FLOOR, DEFAULT_SUGGEST_MIN_SHARE), (0.0, 0.3, 0.0));
        assert!(SuggestConfig { rule, ..Default::default() }.validate().unwrap_err().contains("share"));
        let s = Suggested {
            suggestion: Suggestion { hashtags: vec!["a".into()], category: None },
            source: SuggestionSource::Neighbours,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"hashtags": ["a"], "category": null, "source": "neighbours"})
        );
    }
}
