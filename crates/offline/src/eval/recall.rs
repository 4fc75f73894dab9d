//! Recall@k on related pairs, the paper's protocol: for each test pair (A, B), rank every note of
//! the test pool except A by similarity to A; Recall@k is the share of pairs whose B is among
//! A's top k. Search is exact (brute force over the pool), so the numbers measure the encoder,
//! not an ANN index.
//!
//! - Similarity comes from a [`Scorer`]: [`DenseScorer`] (cosine of unit embeddings, one matrix
//!   product per chunk of queries) or the sparse TF-IDF index in `eval::tfidf`.
//! - Queries are deduplicated: the pairs that share A share one row of scores.
//! - Rank of B = the number of pool notes other than A and B that score **at least** as high as
//!   B (ties count against B). A scorer that gives many notes the same score (TF-IDF gives 0 to
//!   every note sharing no word with A) so earns no recall from ties.
//! - Exposure of a note = the number of test pairs it takes part in, as A or as B (a pair listed
//!   both ways counts twice). Pairs are bucketed by the exposure of their B, as the paper splits
//!   by the ground-truth note's exposure; see [`Buckets`] for the thresholds.
//!
//! Measured (debug profile, deps optimised, 2-core CPU): 5,000 notes x 384 dims, 5,000 queries,
//! one pair each: the whole [`evaluate`] takes 0.7 s (the chunked matrix product about 0.7-1 s
//! of it varies run to run); the same scores by plain f32 loops took 13.7 s. Repeat with
//! `cargo test -p notellm-offline --lib eval::recall::tests::dense_speed -- --ignored --nocapture`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::error::{EvalError, Result};
use crate::data::Pair;
use notellm_note::{Embedding, NoteId};

/// The k of Recall@k unless told otherwise.
pub const DEFAULT_KS: [usize; 3] = [10, 100, 1000];

/// Scores pool items against the whole pool. Higher means more similar.
pub trait Scorer {
    /// Number of items in the pool.
    fn pool_len(&self) -> usize;

    /// Scores of the pool items `queries` (indices into the pool) against every pool item,
    /// written row-major into `out` (`queries.len() x pool_len()`, replacing its contents).
    fn score_rows(&self, queries: &[usize], out: &mut Vec<f32>) -> Result<()>;

    /// How many queries [`evaluate`] asks for at once.
    fn chunk_size(&self) -> usize {
        256
    }
}

/// Cosine over unit-norm embeddings, as a matrix product per chunk of queries (candle on CPU;
/// its gemm uses every core).
#[derive(Debug, Clone)]
pub struct DenseScorer {
    /// `[n, dim]`, f32, CPU.
    matrix: Tensor,
    n: usize,
}

impl DenseScorer {
    /// All embeddings must have the same dimension; the pool may not be empty.
    pub fn new(embeddings: &[Embedding]) -> Result<Self> {
        let dim = embeddings.first().map(Embedding::dim).ok_or_else(|| EvalError::Input("empty pool".into()))?;
        if let Some(i) = embeddings.iter().position(|e| e.dim() != dim) {
            return Err(EvalError::Input(format!(
                "embedding {i} has {} dimensions, the first has {dim}",
                embeddings[i].dim()
            )));
        }
        let flat: Vec<f32> = embeddings.iter().flat_map(|e| e.as_slice().iter().copied()).collect();
        let matrix = Tensor::from_vec(flat, (embeddings.len(), dim), &Device::Cpu)?;
        Ok(Self { matrix, n: embeddings.len() })
    }
}

impl Scorer for DenseScorer {
    fn pool_len(&self) -> usize {
        self.n
    }

    fn score_rows(&self, queries: &[usize], out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        if queries.is_empty() {
            return Ok(());
        }
        if let Some(&q) = queries.iter().find(|&&q| q >= self.n) {
            return Err(EvalError::Input(format!("query {q} is outside the pool of {}", self.n)));
        }
        let ids: Vec<u32> = queries.iter().map(|&q| q as u32).collect();
        let ids = Tensor::from_vec(ids, queries.len(), &Device::Cpu)?;
        let q = self.matrix.index_select(&ids, 0)?;
        let scores = q.matmul(&self.matrix.t()?)?;
        *out = scores.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    }
}

/// How pairs are split by the exposure of their ground-truth note B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "rule")]
pub enum Buckets {
    /// low: exposure <= `low_max`; medium: in between; high: exposure >= `high_min`.
    Fixed { low_max: usize, high_min: usize },
    /// Thresholds at the tertiles of the B exposures over the pairs: low <= the 1/3 quantile,
    /// high >= the 2/3 quantile (at least low_max + 1). Exposures are small integers with many
    /// ties, so the buckets are only roughly equal; the report gives the resolved thresholds.
    Tertiles,
}

impl Default for Buckets {
    /// low 1-2, medium 3-9, high 10+ pairs.
    fn default() -> Self {
        Self::Fixed { low_max: 2, high_min: 10 }
    }
}

impl FromStr for Buckets {
    type Err = String;
    /// `tertiles`, or `LOW_MAX,HIGH_MIN` (e.g. `2,10`: low 1-2, medium 3-9, high 10+).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("tertiles") {
            return Ok(Self::Tertiles);
        }
        let bad = || format!("{s:?} is not `tertiles` or `LOW_MAX,HIGH_MIN` (e.g. `2,10`)");
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let low_max: usize = a.trim().parse().map_err(|_| bad())?;
        let high_min: usize = b.trim().parse().map_err(|_| bad())?;
        if high_min <= low_max {
            return Err(format!("{s:?}: HIGH_MIN must be greater than LOW_MAX"));
        }
        Ok(Self::Fixed { low_max, high_min })
    }
}

impl fmt::Display for Buckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed { low_max, high_min } => write!(f, "{low_max},{high_min}"),
            Self::Tertiles => f.write_str("tertiles"),
        }
    }
}

impl Buckets {
    /// The fixed thresholds `(low_max, high_min)` for these exposures of B (one per pair).
    pub fn resolve(self, exposures: &[usize]) -> (usize, usize) {
        match self {
            Self::Fixed { low_max, high_min } => (low_max, high_min),
            Self::Tertiles => {
                let mut e = exposures.to_vec();
                e.sort_unstable();
                let q = |num: usize| e.get((e.len() * num / 3).min(e.len().saturating_sub(1))).copied().unwrap_or(0);
                let low_max = q(1);
                (low_max, q(2).max(low_max + 1))
            }
        }
    }
}

/// What [`evaluate`] computes.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallOptions {
    /// The k of Recall@k, each >= 1.
    pub ks: Vec<usize>,
    pub buckets: Buckets,
    /// Show a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for RecallOptions {
    fn default() -> Self {
        Self { ks: DEFAULT_KS.to_vec(), buckets: Buckets::default(), progress: true }
    }
}

/// Recall@k over one group of pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketRecall {
    /// `low`, `medium` or `high`.
    pub name: String,
    /// Exposures of B in this bucket: `min_exposure..=max_exposure` (`None`: unbounded).
    pub min_exposure: usize,
    pub max_exposure: Option<usize>,
    pub pairs: usize,
    /// One per k of the report, in the same order; 0 when the bucket is empty.
    pub recall: Vec<f64>,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecallReport {
    pub ks: Vec<usize>,
    /// Recall@k for each of `ks`, in [0, 1].
    pub recall: Vec<f64>,
    /// The mean of `recall` (the paper also reports it).
    pub mean_recall: f64,
    pub pool: usize,
    pub pairs: usize,
    /// Distinct A notes.
    pub queries: usize,
    /// The rule and the thresholds it resolved to.
    pub bucket_rule: Buckets,
    pub low_max: usize,
    pub high_min: usize,
    /// low, medium, high.
    pub buckets: Vec<BucketRecall>,
    /// 0-based rank of B among the pool without A, one per pair in input order.
    #[serde(skip)]
    pub ranks: Vec<usize>,
    /// Exposure of B, one per pair in input order.
    #[serde(skip)]
    pub exposures: Vec<usize>,
    /// Wall time of the search (scoring + ranking).
    pub seconds: f64,
}

impl RecallReport {
    /// Recall@k for a k of the report.
    pub fn at(&self, k: usize) -> Option<f64> {
        self.ks.iter().position(|&x| x == k).map(|i| self.recall[i])
    }

    /// The bucket called `name` (`low`, `medium`, `high`).
    pub fn bucket(&self, name: &str) -> Option<&BucketRecall> {
        self.buckets.iter().find(|b| b.name == name)
    }
}

/// Number of pairs each note of the pool takes part in, as A or as B.
pub fn exposures(pool_len: usize, pairs: &[(usize, usize)]) -> Vec<usize> {
    let mut e = vec![0usize; pool_len];
    for &(a, b) in pairs {
        e[a] += 1;
        e[b] += 1;
    }
    e
}

/// Recall@k of `scorer` (over the notes `pool`, in the same order) on `pairs`.
pub fn evaluate<S: Scorer + ?Sized>(
    pool: &[NoteId],
    scorer: &S,
    pairs: &[Pair],
    opts: &RecallOptions,
) -> Result<RecallReport> {
    let idx = pair_indices(pool, pairs)?;
    evaluate_indices(scorer, &idx, opts)
}

/// [`evaluate`] with a [`DenseScorer`] over `embeddings` (one per note of `pool`, same order).
pub fn evaluate_dense(
    pool: &[NoteId],
    embeddings: &[Embedding],
    pairs: &[Pair],
    opts: &RecallOptions,
) -> Result<RecallReport> {
    if pool.len() != embeddings.len() {
        return Err(EvalError::Input(format!("{} notes but {} embeddings", pool.len(), embeddings.len())));
    }
    evaluate(pool, &DenseScorer::new(embeddings)?, pairs, opts)
}

/// Pool indices `(A, B)` of each pair; fails on a note outside the pool, a duplicate pool id or
/// a pair of a note with itself.
pub fn pair_indices(pool: &[NoteId], pairs: &[Pair]) -> Result<Vec<(usize, usize)>> {
    let mut index: HashMap<&NoteId, usize> = HashMap::with_capacity(pool.len());
    for (i, id) in pool.iter().enumerate() {
        if index.insert(id, i).is_some() {
            return Err(EvalError::Input(format!("note {id} appears twice in the pool")));
        }
    }
    pairs
        .iter()
        .map(|p| {
            let find = |id: &NoteId| {
                index.get(id).copied().ok_or_else(|| EvalError::NotInPool {
                    a: p.a.to_string(),
                    b: p.b.to_string(),
                    missing: id.to_string(),
                    pool: pool.len(),
                })
            };
            let (a, b) = (find(&p.a)?, find(&p.b)?);
            if a == b {
                return Err(EvalError::Input(format!("pair {} -> {} relates a note to itself", p.a, p.b)));
            }
            Ok((a, b))
        })
        .collect()
}

/// [`evaluate`] on pairs already given as pool indices.
pub fn evaluate_indices<S: Scorer + ?Sized>(
    scorer: &S,
    pairs: &[(usize, usize)],
    opts: &RecallOptions,
) -> Result<RecallReport> {
    let start = std::time::Instant::now();
    let n = scorer.pool_len();
    if opts.ks.is_empty() || opts.ks.contains(&0) {
        return Err(EvalError::Input(format!("Recall@k needs one or more k >= 1, got {:?}", opts.ks)));
    }
    if let Some(&(a, b)) = pairs.iter().find(|&&(a, b)| a >= n || b >= n || a == b) {
        return Err(EvalError::Input(format!("pair ({a}, {b}) is not two distinct notes of the pool of {n}")));
    }

    // Group the pairs by A so that each query is scored once.
    let mut by_query: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &(a, _)) in pairs.iter().enumerate() {
        by_query.entry(a).or_default().push(i);
    }
    let mut queries: Vec<usize> = by_query.keys().copied().collect();
    queries.sort_unstable();

    let bar = opts.progress.then(|| crate::progress::bar("recall", queries.len() as u64));
    let mut ranks = vec![0usize; pairs.len()];
    let mut rows = Vec::new();
    for chunk in queries.chunks(scorer.chunk_size().max(1)) {
        scorer.score_rows(chunk, &mut rows)?;
        if rows.len() != chunk.len() * n {
            return Err(EvalError::Input(format!(
                "scorer returned {} scores for {} queries over {n} notes",
                rows.len(),
                chunk.len()
            )));
        }
        for (row, &a) in rows.chunks_exact(n).zip(chunk) {
            for &i in &by_query[&a] {
                ranks[i] = rank_of(row, a, pairs[i].1);
            }
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let exposure = exposures(n, pairs);
    let b_exposures: Vec<usize> = pairs.iter().map(|&(_, b)| exposure[b]).collect();
    let (low_max, high_min) = opts.buckets.resolve(&b_exposures);
    let all: Vec<usize> = (0..pairs.len()).collect();
    let recall = recall_at(&ranks, &all, &opts.ks);
    let bucket = |name: &str, lo: usize, hi: Option<usize>| {
        let members: Vec<usize> =
            (0..pairs.len()).filter(|&i| b_exposures[i] >= lo && hi.is_none_or(|h| b_exposures[i] <= h)).collect();
        BucketRecall {
            name: name.into(),
            min_exposure: lo,
            max_exposure: hi,
            pairs: members.len(),
            recall: recall_at(&ranks, &members, &opts.ks),
        }
    };
    let buckets = vec![
        bucket("low", 1, Some(low_max)),
        bucket("medium", low_max + 1, Some(high_min.saturating_sub(1))),
        bucket("high", high_min, None),
    ];
    let mean_recall = recall.iter().sum::<f64>() / recall.len() as f64;
    Ok(RecallReport {
        ks: opts.ks.clone(),
        recall,
        mean_recall,
        pool: n,
        pairs: pairs.len(),
        queries: queries.len(),
        bucket_rule: opts.buckets,
        low_max,
        high_min,
        buckets,
        ranks,
        exposures: b_exposures,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// 0-based rank of `b` in `row` among all items but `a`: the number of other items scoring at
/// least as high (ties count against `b`; a NaN score of `b` ranks it last).
pub fn rank_of(row: &[f32], a: usize, b: usize) -> usize {
    let sb = row[b];
    if sb.is_nan() {
        return row.len().saturating_sub(2);
    }
    let ahead = row.iter().filter(|&&s| s >= sb).count();
    // `ahead` counts b itself and a when a scores at least as high; neither is a competitor.
    ahead - 1 - usize::from(row[a] >= sb)
}

/// Share of `members` (indices into `ranks`) whose rank is below each k; 0 when there are none.
fn recall_at(ranks: &[usize], members: &[usize], ks: &[usize]) -> Vec<f64> {
    ks.iter()
        .map(|&k| {
            if members.is_empty() {
                0.0
            } else {
                members.iter().filter(|&&i| ranks[i] < k).count() as f64 / members.len() as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(v: &[f32]) -> Embedding {
        Embedding::normalised(v.to_vec()).unwrap()
    }

    fn ids(n: usize) -> Vec<NoteId> {
        (0..n).map(|i| NoteId::parse(&format!("n{i}")).unwrap()).collect()
    }

    fn pair(a: usize, b: usize) -> Pair {
        Pair { a: NoteId::parse(&format!("n{a}")).unwrap(), b: NoteId::parse(&format!("n{b}")).unwrap(), score: 1.0 }
    }

    fn opts(ks: &[usize]) -> RecallOptions {
        RecallOptions { ks: ks.to_vec(), buckets: Buckets::default(), progress: false }
    }

    /// Five notes on a circle at angles 0, 10, 20, 90, 180 degrees: from note 0 the others rank
    /// 1 (10°), 2 (20°), 3 (90°), 4 (180°).
    fn circle() -> Vec<Embedding> {
        [0.0f32, 10.0, 20.0, 90.0, 180.0]
            .iter()
            .map(|d| {
                let r = d.to_radians();
                emb(&[r.cos(), r.sin()])
            })
            .collect()
    }

    #[test]
    fn recall_by_hand() {
        let e = circle();
        let scorer = DenseScorer::new(&e).unwrap();
        // From 0: B=1 rank 0, B=3 rank 2. From 4 (180°): order 3 (90°), 2, 1, 0 -> B=0 rank 3.
        // From 2 (20°): 1 (10°) and 0 (0°)... 1 is 10° away, 0 is 20°, 3 is 70° -> B=3 rank 2.
        let pairs = [pair(0, 1), pair(0, 3), pair(4, 0), pair(2, 3)];
        let r = evaluate(&ids(5), &scorer, &pairs, &opts(&[1, 2, 3, 4])).unwrap();
        assert_eq!(r.ranks, vec![0, 2, 3, 2]);
        assert_eq!(r.recall, vec![0.25, 0.25, 0.75, 1.0]);
        assert_eq!(r.queries, 3, "pairs sharing A share one query");
        assert_eq!(r.pairs, 4);
        assert!((r.mean_recall - 0.5625).abs() < 1e-12);
        assert_eq!(r.at(3), Some(0.75));
        assert_eq!(r.at(7), None);
    }

    #[test]
    fn a_is_never_a_candidate() {
        // B is the farthest note from A but for A itself: with A excluded, rank = 3 of 4 others.
        let e = circle();
        let scorer = DenseScorer::new(&e).unwrap();
        let r = evaluate(&ids(5), &scorer, &[pair(0, 4)], &opts(&[3, 4])).unwrap();
        assert_eq!(r.ranks, vec![3]);
        assert_eq!(r.recall, vec![0.0, 1.0]);
    }

    #[test]
    fn ties_count_against_b() {
        // Notes 1, 2 and 3 are the same vector: B = 2 has two rivals tied with it.
        let e = vec![emb(&[1.0, 0.0]), emb(&[1.0, 1.0]), emb(&[1.0, 1.0]), emb(&[1.0, 1.0]), emb(&[0.0, 1.0])];
        let scorer = DenseScorer::new(&e).unwrap();
        let r = evaluate(&ids(5), &scorer, &[pair(0, 2)], &opts(&[1, 2, 3])).unwrap();
        assert_eq!(r.ranks, vec![2]);
        assert_eq!(r.recall, vec![0.0, 0.0, 1.0]);
        assert_eq!(rank_of(&[0.5, 0.5, 0.5], 0, 1), 1);
        assert_eq!(rank_of(&[0.9, f32::NAN, 0.1], 0, 1), 1);
        assert_eq!(rank_of(&[0.1, 0.2, f32::NAN, 0.3], 0, 1), 1, "a NaN rival is not ahead");
    }

    #[test]
    fn exposure_buckets_by_hand() {
        // 6 notes; pairs: (0,1) (2,1) (3,1) (4,1) (0,5) (5,0).
        // Exposure: n0 = 3, n1 = 4, n2..n4 = 1, n5 = 2. B exposures: 4,4,4,4,2,3.
        let e: Vec<Embedding> = (0..6).map(|i| emb(&[1.0, i as f32])).collect();
        let scorer = DenseScorer::new(&e).unwrap();
        let pairs = [pair(0, 1), pair(2, 1), pair(3, 1), pair(4, 1), pair(0, 5), pair(5, 0)];
        let o = RecallOptions { ks: vec![1, 5], buckets: Buckets::Fixed { low_max: 2, high_min: 4 }, progress: false };
        let r = evaluate(&ids(6), &scorer, &pairs, &o).unwrap();
        assert_eq!(r.exposures, vec![4, 4, 4, 4, 2, 3]);
        let low = r.bucket("low").unwrap();
        let medium = r.bucket("medium").unwrap();
        let high = r.bucket("high").unwrap();
        assert_eq!((low.pairs, medium.pairs, high.pairs), (1, 1, 4));
        assert_eq!((low.min_exposure, low.max_exposure), (1, Some(2)));
        assert_eq!((medium.min_exposure, medium.max_exposure), (3, Some(3)));
        assert_eq!((high.min_exposure, high.max_exposure), (4, None));
        // The ranks themselves are checked against a direct computation.
        for (i, &(a, b)) in [(0, 1), (2, 1), (3, 1), (4, 1), (0, 5), (5, 0)].iter().enumerate() {
            let row: Vec<f32> = e.iter().map(|x| e[a].cosine(x)).collect();
            assert_eq!(r.ranks[i], rank_of(&row, a, b));
        }
        // Every bucket's recall at k = 5 (all candidates) is 1.
        assert!(r.buckets.iter().all(|b| b.recall[1] == 1.0));
        assert_eq!(high.recall[0], [0, 1, 2, 3].iter().filter(|&&i| r.ranks[i] < 1).count() as f64 / 4.0);
    }

    #[test]
    fn tertiles_and_parsing() {
        assert_eq!(Buckets::Tertiles.resolve(&[1, 1, 1, 2, 2, 3, 5, 8, 9]), (2, 5));
        // All exposures equal: high_min is pushed above low_max, medium and high are empty.
        assert_eq!(Buckets::Tertiles.resolve(&[1, 1, 1, 1]), (1, 2));
        assert_eq!(Buckets::Tertiles.resolve(&[]), (0, 1));
        assert_eq!(Buckets::default().resolve(&[7]), (2, 10));
        assert_eq!("tertiles".parse::<Buckets>(), Ok(Buckets::Tertiles));
        assert_eq!("2, 10".parse::<Buckets>(), Ok(Buckets::Fixed { low_max: 2, high_min: 10 }));
        assert!("10,2".parse::<Buckets>().is_err());
        assert!("x".parse::<Buckets>().is_err());
        assert_eq!(Buckets::default().to_string(), "2,10");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let e = circle();
        let scorer = DenseScorer::new(&e).unwrap();
        let missing = Pair { a: NoteId::parse("n0").unwrap(), b: NoteId::parse("zz").unwrap(), score: 1.0 };
        let err = evaluate(&ids(5), &scorer, &[missing], &opts(&[1])).unwrap_err().to_string();
        assert!(err.contains("zz") && err.contains("not in the pool"), "{err}");
        assert!(evaluate(&ids(5), &scorer, &[pair(1, 1)], &opts(&[1])).is_err());
        assert!(evaluate(&ids(5), &scorer, &[pair(0, 1)], &opts(&[])).is_err());
        assert!(evaluate(&ids(5), &scorer, &[pair(0, 1)], &opts(&[0])).is_err());
        let mut dup = ids(5);
        dup[4] = dup[0].clone();
        assert!(evaluate(&dup, &scorer, &[pair(0, 1)], &opts(&[1])).is_err());
        assert!(DenseScorer::new(&[]).is_err());
        assert!(evaluate_dense(&ids(4), &e, &[pair(0, 1)], &opts(&[1])).is_err(), "4 ids, 5 embeddings");
        assert_eq!(evaluate_dense(&ids(5), &e, &[pair(0, 3)], &opts(&[2, 3])).unwrap().recall, vec![0.0, 1.0]);
        assert!(DenseScorer::new(&[emb(&[1.0, 0.0]), emb(&[1.0, 0.0, 0.0])]).is_err());
        // No pairs: recall 0, no panic.
        let r = evaluate(&ids(5), &scorer, &[], &opts(&[1])).unwrap();
        assert_eq!((r.pairs, r.recall[0]), (0, 0.0));
    }

    /// Plain loops over the same embeddings, for comparison with the matrix product.
    fn naive_rows(e: &[Embedding], queries: &[usize]) -> Vec<f32> {
        queries.iter().flat_map(|&q| e.iter().map(|x| e[q].cosine(x)).collect::<Vec<_>>()).collect()
    }

    fn random_embeddings(n: usize, dim: usize, seed: u64) -> Vec<Embedding> {
        let mut rng = notellm_index::recall::Rng::new(seed);
        (0..n).map(|_| emb(&(0..dim).map(|_| rng.normal()).collect::<Vec<_>>())).collect()
    }

    #[test]
    fn dense_matches_plain_loops() {
        let e = random_embeddings(300, 24, 7);
        let scorer = DenseScorer::new(&e).unwrap();
        let queries = [0, 5, 299, 17];
        let mut got = Vec::new();
        scorer.score_rows(&queries, &mut got).unwrap();
        let want = naive_rows(&e, &queries);
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(scorer.score_rows(&[300], &mut got).is_err());
    }

    /// `cargo test -p notellm-offline --lib eval::recall::tests::dense_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn dense_speed() {
        let (n, dim) = (5000, 384);
        let e = random_embeddings(n, dim, 1);
        let scorer = DenseScorer::new(&e).unwrap();
        let queries: Vec<usize> = (0..n).collect();
        let t = std::time::Instant::now();
        let mut rows = Vec::new();
        for c in queries.chunks(256) {
            scorer.score_rows(c, &mut rows).unwrap();
        }
        let matmul = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for c in queries.chunks(64) {
            std::hint::black_box(naive_rows(&e, c));
        }
        let loops = t.elapsed().as_secs_f64();
        let pairs: Vec<(usize, usize)> = (0..n).map(|i| (i, (i * 7 + 1) % n)).filter(|(a, b)| a != b).collect();
        let t = std::time::Instant::now();
        let o = RecallOptions { progress: false, ..RecallOptions::default() };
        let r = evaluate_indices(&scorer, &pairs, &o).unwrap();
        let full = t.elapsed().as_secs_f64();
        eprintln!(
            "{n} x {dim}: matmul rows {matmul:.2} s, plain loops {loops:.2} s, full evaluate {full:.2} s ({} queries)",
            r.queries
        );
    }
}
