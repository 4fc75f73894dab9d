//! Related-pair mining from a behaviour log, as NoteLLM builds its training pairs.
//!
//! For each session u with N_u distinct notes, every ordered pair (A, B), A != B, of its notes
//! adds 1/N_u to s(A -> B): a user who engages with many notes says less about each pair
//! than one who engages with few. Then, per note A, the candidates B are filtered and the top t
//! by score (ties broken by B's note id) become the related pairs A -> B.
//!
//! The paper (clicks on Xiaohongshu over a week) drops candidates whose score is above u = 30
//! or below l = 0.01. Those thresholds are tuned to click volumes; on a log such as Debian's
//! dependency lists (see `docs/data.md`) they map as follows:
//! - **u** removes pairs that everyone co-clicks, i.e. pairs with a hub note. A pair's score
//!   cannot exceed the number of sessions its notes occur in, so we filter the notes directly:
//!   a note in more than `max_occurrences` sessions (libc6, python3, ...) takes part in no pair.
//!   `min_occurrences` likewise drops notes seen in too few sessions to say anything.
//! - **l** drops pairs too weakly supported; `min_score` is that threshold as is.
//! - Sessions longer than `max_session_len` are skipped entirely (counted): 1/N_u already
//!   discounts them, and they would cost N_u^2 pair updates for little signal.
//!
//! N_u counts every distinct note of the session, hubs included (the user's activity does not
//! change because some of the notes are filtered afterwards). Occurrences are counted over the
//! sessions used. Scores of one pair are summed in session order, so the result is
//! deterministic, and the output is sorted by A, then score (descending), then B.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::{Pair, Session};
use notellm_note::NoteId;

/// Co-occurrence mining parameters (flags of `notellm data debian`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct MiningOptions {
    /// Skip sessions with more distinct notes than this.
    #[arg(long, env = "NOTELLM_MINE_MAX_SESSION_LEN", default_value_t = 60)]
    pub max_session_len: usize,
    /// Hub filter: notes occurring in more sessions than this get no pairs.
    #[arg(long, env = "NOTELLM_MINE_MAX_OCCURRENCES", default_value_t = 500)]
    pub max_occurrences: usize,
    /// Notes occurring in fewer sessions than this get no pairs.
    #[arg(long, env = "NOTELLM_MINE_MIN_OCCURRENCES", default_value_t = 1)]
    pub min_occurrences: usize,
    /// Drop candidate pairs whose score s(A -> B) is below this (the paper's l).
    #[arg(long, env = "NOTELLM_MINE_MIN_SCORE", default_value_t = 0.01)]
    pub min_score: f64,
    /// Keep at most this many related notes per note (the paper's t).
    #[arg(long, env = "NOTELLM_MINE_TOP_T", default_value_t = 10)]
    pub top_t: usize,
}

impl Default for MiningOptions {
    fn default() -> Self {
        Self { max_session_len: 60, max_occurrences: 500, min_occurrences: 1, min_score: 0.01, top_t: 10 }
    }
}

/// What mining did, for the logs and the dataset manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiningStats {
    pub sessions: usize,
    pub sessions_used: usize,
    /// Fewer than 2 distinct notes.
    pub sessions_too_short: usize,
    /// More than `max_session_len` distinct notes.
    pub sessions_too_long: usize,
    /// Distinct notes in the sessions used.
    pub notes_seen: usize,
    pub hub_notes: usize,
    pub rare_notes: usize,
    /// Distinct (A, B) with both notes eligible, before the score threshold and top-t.
    pub candidate_pairs: usize,
    pub pairs_kept: usize,
    pub notes_with_pairs: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mined {
    pub pairs: Vec<Pair>,
    pub stats: MiningStats,
}

/// Mines related pairs from `sessions`; see the module documentation.
pub fn mine(sessions: &[Session], opts: &MiningOptions) -> Mined {
    let mut stats = MiningStats { sessions: sessions.len(), ..MiningStats::default() };

    // Note ids numbered in sorted order, so that comparing numbers compares ids.
    let mut ids: Vec<&NoteId> = sessions.iter().flat_map(|s| &s.notes).collect();
    ids.sort_unstable();
    ids.dedup();
    let number: HashMap<&NoteId, u32> = ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();

    let mut used: Vec<Vec<u32>> = Vec::new();
    for s in sessions {
        let mut notes: Vec<u32> = s.notes.iter().map(|id| number[id]).collect();
        notes.sort_unstable();
        notes.dedup();
        if notes.len() < 2 {
            stats.sessions_too_short += 1;
        } else if notes.len() > opts.max_session_len {
            stats.sessions_too_long += 1;
        } else {
            used.push(notes);
        }
    }
    stats.sessions_used = used.len();

    // Which sessions each note occurs in, in session order.
    let mut postings: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    for (si, notes) in used.iter().enumerate() {
        for &n in notes {
            postings[n as usize].push(si as u32);
        }
    }
    let eligible: Vec<bool> = postings
        .iter()
        .map(|p| {
            stats.notes_seen += usize::from(!p.is_empty());
            stats.hub_notes += usize::from(p.len() > opts.max_occurrences);
            stats.rare_notes += usize::from(!p.is_empty() && p.len() < opts.min_occurrences);
            !p.is_empty() && (opts.min_occurrences..=opts.max_occurrences).contains(&p.len())
        })
        .collect();

    // One row of the score matrix at a time: a dense accumulator plus the columns touched.
    let mut score = vec![0.0f64; ids.len()];
    let mut touched: Vec<u32> = Vec::new();
    let mut pairs = Vec::new();
    for a in (0..ids.len()).filter(|&a| eligible[a]) {
        for &si in &postings[a] {
            let notes = &used[si as usize];
            let w = 1.0 / notes.len() as f64;
            for &b in notes.iter().filter(|&&b| b as usize != a && eligible[b as usize]) {
                if score[b as usize] == 0.0 {
                    touched.push(b);
                }
                score[b as usize] += w;
            }
        }
        stats.candidate_pairs += touched.len();
        let mut row: Vec<(u32, f64)> =
            touched.iter().map(|&b| (b, score[b as usize])).filter(|&(_, s)| s >= opts.min_score).collect();
        row.sort_unstable_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        row.truncate(opts.top_t);
        stats.notes_with_pairs += usize::from(!row.is_empty());
        pairs.extend(row.into_iter().map(|(b, s)| Pair { a: ids[a].clone(), b: ids[b as usize].clone(), score: s }));
        for b in touched.drain(..) {
            score[b as usize] = 0.0;
        }
    }
    stats.pairs_kept = pairs.len();
    tracing::info!(
        sessions = stats.sessions,
        used = stats.sessions_used,
        too_short = stats.sessions_too_short,
        too_long = stats.sessions_too_long,
        notes = stats.notes_seen,
        hubs = stats.hub_notes,
        rare = stats.rare_notes,
        candidates = stats.candidate_pairs,
        kept = stats.pairs_kept,
        notes_with_pairs = stats.notes_with_pairs,
        "co-occurrence pairs mined"
    );
    Mined { pairs, stats }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, notes: &[&str]) -> Session {
        Session { session: id.into(), notes: notes.iter().map(|n| NoteId::parse(n).unwrap()).collect() }
    }

    /// A hand-made log; the scores below are worked out by hand from it.
    fn log() -> Vec<Session> {
        vec![
            session("u1", &["a", "b", "c"]),           // 1/3 to every ordered pair
            session("u2", &["b", "a"]),                // 1/2
            session("u3", &["b", "c", "d", "a"]),      // 1/4
            session("u4", &["x"]),                     // too short
            session("u5", &["a", "b", "c", "d", "e"]), // too long for max_session_len = 4
            session("u6", &["c", "d", "c"]),           // distinct notes {c, d}: 1/2
            session("u7", &["e", "f"]),                // 1/2
            session("u8", &["f", "e"]),                // 1/2
        ]
    }

    fn opts() -> MiningOptions {
        MiningOptions { max_session_len: 4, max_occurrences: 100, min_occurrences: 1, min_score: 0.0, top_t: 10 }
    }

    fn got(m: &Mined) -> Vec<(String, String, f64)> {
        m.pairs.iter().map(|p| (p.a.to_string(), p.b.to_string(), p.score)).collect()
    }

    fn assert_pairs(m: &Mined, want: &[(&str, &str, f64)]) {
        let got = got(m);
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.0 == w.0 && g.1 == w.1 && (g.2 - w.2).abs() < 1e-12, "got {g:?}, want {w:?}");
        }
    }

    const AB: f64 = 1.0 / 3.0 + 1.0 / 2.0 + 1.0 / 4.0; // u1, u2, u3
    const AC: f64 = 1.0 / 3.0 + 1.0 / 4.0; // u1, u3 (and b-c alike)
    const AD: f64 = 1.0 / 4.0; // u3 (and b-d alike)
    const CD: f64 = 1.0 / 4.0 + 1.0 / 2.0; // u3, u6
    const EF: f64 = 1.0 / 2.0 + 1.0 / 2.0; // u7, u8

    #[test]
    fn scores_sum_one_over_session_length() {
        let m = mine(&log(), &opts());
        assert_pairs(
            &m,
            &[
                ("a", "b", AB),
                ("a", "c", AC),
                ("a", "d", AD),
                ("b", "a", AB),
                ("b", "c", AC),
                ("b", "d", AD),
                ("c", "d", CD),
                ("c", "a", AC), // tie with b, broken by id
                ("c", "b", AC),
                ("d", "c", CD),
                ("d", "a", AD),
                ("d", "b", AD),
                ("e", "f", EF),
                ("f", "e", EF),
            ],
        );
        let s = &m.stats;
        assert_eq!((s.sessions, s.sessions_used, s.sessions_too_short, s.sessions_too_long), (8, 6, 1, 1));
        // u5 is skipped, so x (too short a session) and nothing else is unseen.
        assert_eq!((s.notes_seen, s.candidate_pairs, s.pairs_kept, s.notes_with_pairs), (6, 14, 14, 6));
    }

    #[test]
    fn top_t_and_min_score() {
        let m = mine(&log(), &MiningOptions { top_t: 2, ..opts() });
        assert_pairs(
            &m,
            &[
                ("a", "b", AB),
                ("a", "c", AC),
                ("b", "a", AB),
                ("b", "c", AC),
                ("c", "d", CD),
                ("c", "a", AC),
                ("d", "c", CD),
                ("d", "a", AD),
                ("e", "f", EF),
                ("f", "e", EF),
            ],
        );
        let m = mine(&log(), &MiningOptions { min_score: 0.7, ..opts() });
        assert_pairs(
            &m,
            &[("a", "b", AB), ("b", "a", AB), ("c", "d", CD), ("d", "c", CD), ("e", "f", EF), ("f", "e", EF)],
        );
        assert_eq!(m.stats.candidate_pairs, 14);
    }

    #[test]
    fn occurrence_filters() {
        // a, b, c occur in 3 sessions, d, e, f in 2: a hub threshold of 2 leaves d, e, f, and d's
        // partners are all hubs; N_u still counts the hubs, so e -> f keeps its score.
        let m = mine(&log(), &MiningOptions { max_occurrences: 2, ..opts() });
        assert_pairs(&m, &[("e", "f", EF), ("f", "e", EF)]);
        assert_eq!((m.stats.hub_notes, m.stats.rare_notes), (3, 0));

        let m = mine(&log(), &MiningOptions { min_occurrences: 3, ..opts() });
        assert_pairs(
            &m,
            &[("a", "b", AB), ("a", "c", AC), ("b", "a", AB), ("b", "c", AC), ("c", "a", AC), ("c", "b", AC)],
        );
        assert_eq!((m.stats.hub_notes, m.stats.rare_notes), (0, 3));
    }

    #[test]
    fn long_sessions_count_when_allowed() {
        let m = mine(&log(), &MiningOptions { max_session_len: 5, ..opts() });
        assert_eq!(m.stats.sessions_too_long, 0);
        let ab = got(&m).into_iter().find(|p| p.0 == "a" && p.1 == "b").unwrap().2;
        assert!((ab - (AB + 1.0 / 5.0)).abs() < 1e-12);
    }

    #[test]
    fn empty_log() {
        let m = mine(&[], &MiningOptions::default());
        assert!(m.pairs.is_empty());
        assert_eq!(m.stats, MiningStats::default());
    }
}
