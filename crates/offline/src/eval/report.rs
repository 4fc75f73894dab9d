//! The results table of `notellm eval`: one row per system (NoteLLM checkpoints, the baselines),
//! rendered as Markdown (for the terminal and docs/training.md) and as JSON (for scripts).
//!
//! Markdown shows percentages with two decimals, as the paper does; JSON keeps fractions in
//! [0, 1] and every timing. Every row must come from the same pool, pairs, k and exposure
//! thresholds, so that the columns mean the same thing; [`ResultsTable::push`] checks it.

use std::fmt::Write as _;

use serde::Serialize;

use super::error::{EvalError, Result};
use super::generation::GenerationReport;
use super::recall::{Buckets, RecallReport};

/// How long a system took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Notes encoded (the pool).
    pub notes: usize,
    /// Wall time to encode (or, for TF-IDF, fit and vectorise) the pool.
    pub encode_seconds: f64,
    /// Wall time of the exact search and ranking.
    pub search_seconds: f64,
}

impl Timing {
    /// Notes encoded per second; `None` when no time was measured.
    pub fn notes_per_second(&self) -> Option<f64> {
        (self.encode_seconds > 0.0).then(|| self.notes as f64 / self.encode_seconds)
    }
}

/// Recall at `bucket_k` over one exposure bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketCell {
    pub name: String,
    pub min_exposure: usize,
    pub max_exposure: Option<usize>,
    pub pairs: usize,
    pub recall: f64,
}

/// One system's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemRow {
    pub name: String,
    /// Recall@k for each of the table's `ks`.
    pub recall: Vec<f64>,
    pub mean_recall: f64,
    /// Recall@`bucket_k` per exposure bucket (low, medium, high).
    pub buckets: Vec<BucketCell>,
    pub encode_seconds: f64,
    pub search_seconds: f64,
    pub notes_per_second: Option<f64>,
}

/// Generation metrics of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRow {
    pub name: String,
    #[serde(flatten)]
    pub report: GenerationReport,
    pub seconds: f64,
}

/// The results of one evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultsTable {
    pub ks: Vec<usize>,
    /// The k reported per exposure bucket.
    pub bucket_k: usize,
    pub pool: usize,
    pub pairs: usize,
    pub queries: usize,
    pub bucket_rule: Option<Buckets>,
    pub low_max: usize,
    pub high_min: usize,
    pub rows: Vec<SystemRow>,
    pub generation: Vec<GenerationRow>,
    /// Free lines printed under the tables: the command, the machine, the date, the dataset.
    pub context: Vec<String>,
}

impl ResultsTable {
    /// An empty table for Recall@`ks`, with buckets reported at `bucket_k` (one of `ks`).
    pub fn new(ks: &[usize], bucket_k: usize) -> Result<Self> {
        if !ks.contains(&bucket_k) {
            return Err(EvalError::Input(format!("the bucket k {bucket_k} is not one of the ks {ks:?}")));
        }
        Ok(Self {
            ks: ks.to_vec(),
            bucket_k,
            pool: 0,
            pairs: 0,
            queries: 0,
            bucket_rule: None,
            low_max: 0,
            high_min: 0,
            rows: Vec::new(),
            generation: Vec::new(),
            context: Vec::new(),
        })
    }

    /// Adds a system's recall. Fails when the report was made on other pairs, pool, k or
    /// exposure thresholds than the rows already in the table.
    pub fn push(&mut self, name: &str, recall: &RecallReport, timing: Timing) -> Result<()> {
        if recall.ks != self.ks {
            return Err(EvalError::Input(format!("{name}: ks {:?}, the table has {:?}", recall.ks, self.ks)));
        }
        let shape = (recall.pool, recall.pairs, recall.low_max, recall.high_min);
        if self.rows.is_empty() {
            (self.pool, self.pairs, self.low_max, self.high_min) = shape;
            self.queries = recall.queries;
            self.bucket_rule = Some(recall.bucket_rule);
        } else if shape != (self.pool, self.pairs, self.low_max, self.high_min) {
            return Err(EvalError::Input(format!(
                "{name}: pool {}, pairs {}, exposure thresholds {}/{} differ from the table's {}, {}, {}/{}",
                shape.0, shape.1, shape.2, shape.3, self.pool, self.pairs, self.low_max, self.high_min
            )));
        }
        let at = self.ks.iter().position(|&k| k == self.bucket_k).unwrap_or(0);
        let buckets = recall
            .buckets
            .iter()
            .map(|b| BucketCell {
                name: b.name.clone(),
                min_exposure: b.min_exposure,
                max_exposure: b.max_exposure,
                pairs: b.pairs,
                recall: b.recall.get(at).copied().unwrap_or(0.0),
            })
            .collect();
        self.rows.push(SystemRow {
            name: name.to_owned(),
            recall: recall.recall.clone(),
            mean_recall: recall.mean_recall,
            buckets,
            encode_seconds: timing.encode_seconds,
            search_seconds: timing.search_seconds,
            notes_per_second: timing.notes_per_second(),
        });
        Ok(())
    }

    /// Adds a system's generation metrics.
    pub fn push_generation(&mut self, name: &str, report: GenerationReport, seconds: f64) {
        self.generation.push(GenerationRow { name: name.to_owned(), report, seconds });
    }

    /// The tables in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Recall@k (%) on {} pairs ({} queries), exact search over a pool of {} notes.\n",
            self.pairs, self.queries, self.pool
        );
        let mut header = vec!["system".to_owned()];
        header.extend(self.ks.iter().map(|k| format!("R@{k}")));
        if let Some(first) = self.rows.first() {
            header.extend(first.buckets.iter().map(|b| {
                let range = match b.max_exposure {
                    Some(hi) => format!("{}-{hi}", b.min_exposure),
                    None => format!("{}+", b.min_exposure),
                };
                format!("R@{} {} ({range}; {} pairs)", self.bucket_k, b.name, b.pairs)
            }));
        }
        header.extend(["encode s".into(), "notes/s".into(), "search s".into()]);
        table_head(&mut s, &header);
        for r in &self.rows {
            let mut cells = vec![r.name.clone()];
            cells.extend(r.recall.iter().map(|&x| pct(x)));
            cells.extend(r.buckets.iter().map(|b| if b.pairs == 0 { "-".into() } else { pct(b.recall) }));
            cells.push(format!("{:.1}", r.encode_seconds));
            cells.push(r.notes_per_second.map_or("-".into(), |x| format!("{x:.0}")));
            cells.push(format!("{:.1}", r.search_seconds));
            table_row(&mut s, &cells);
        }
        if !self.rows.is_empty() {
            let _ = writeln!(
                s,
                "\nExposure = test pairs the ground-truth note takes part in; buckets {} (low <= {}, high >= {}).",
                self.bucket_rule.map_or_else(|| "-".into(), |b| b.to_string()),
                self.low_max,
                self.high_min
            );
        }
        if !self.generation.is_empty() {
            let _ = writeln!(s, "\nGeneration (%):\n");
            table_head(
                &mut s,
                &[
                    "system",
                    "category acc",
                    "illusion",
                    "no category",
                    "tag P",
                    "tag R",
                    "tag F1",
                    "ROUGE-L",
                    "invented tags",
                    "s",
                ]
                .map(String::from),
            );
            for g in &self.generation {
                let (c, h) = (&g.report.category, &g.report.hashtags);
                table_row(
                    &mut s,
                    &[
                        g.name.clone(),
                        pct(c.accuracy),
                        pct(c.illusion),
                        pct(c.missing),
                        pct(h.precision),
                        pct(h.recall),
                        pct(h.f1),
                        pct(h.rouge_l),
                        pct(h.invented),
                        format!("{:.1}", g.seconds),
                    ],
                );
            }
        }
        if !self.context.is_empty() {
            s.push('\n');
            for line in &self.context {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }

    /// The table as JSON (fractions, not percentages).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

fn table_head(s: &mut String, cells: &[String]) {
    table_row(s, cells);
    table_row(s, &cells.iter().map(|_| "---".to_owned()).collect::<Vec<_>>());
}

fn table_row(s: &mut String, cells: &[String]) {
    let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    let _ = writeln!(s, "| {} |", escaped.join(" | "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::generation::{CategoryMetrics, HashtagMetrics};
    use crate::eval::recall::BucketRecall;

    fn report(recall: Vec<f64>, pairs: usize) -> RecallReport {
        let b = |name: &str, lo, hi, n, r: f64| BucketRecall {
            name: name.into(),
            min_exposure: lo,
            max_exposure: hi,
            pairs: n,
            recall: vec![r / 2.0, r, 1.0],
        };
        RecallReport {
            ks: vec![10, 100, 1000],
            mean_recall: recall.iter().sum::<f64>() / 3.0,
            recall,
            pool: 500,
            pairs,
            queries: 40,
            bucket_rule: Buckets::default(),
            low_max: 2,
            high_min: 10,
            buckets: vec![
                b("low", 1, Some(2), 30, 0.5),
                b("medium", 3, Some(9), 20, 0.75),
                b("high", 10, None, 0, 0.0),
            ],
            ranks: vec![],
            exposures: vec![],
            seconds: 0.2,
        }
    }

    #[test]
    fn markdown_and_json() {
        let mut t = ResultsTable::new(&[10, 100, 1000], 100).unwrap();
        let timing = Timing { notes: 500, encode_seconds: 2.0, search_seconds: 0.3 };
        t.push("TF-IDF | sublinear", &report(vec![0.1, 0.4, 0.9], 50), timing).unwrap();
        t.push("MiniLM", &report(vec![0.2, 0.5, 0.95], 50), Timing { encode_seconds: 0.0, ..timing }).unwrap();
        t.push_generation(
            "NoteLLM",
            GenerationReport {
                notes: 3,
                category: CategoryMetrics { notes: 3, accuracy: 2.0 / 3.0, illusion: 0.0, missing: 0.0 },
                hashtags: HashtagMetrics { notes: 2, precision: 0.5, ..Default::default() },
            },
            1.5,
        );
        t.context.push("command: notellm eval".into());
        let md = t.to_markdown();
        assert!(md.contains("| system | R@10 | R@100 | R@1000 | R@100 low (1-2; 30 pairs) | R@100 medium (3-9; 20 pairs) | R@100 high (10+; 0 pairs) | encode s | notes/s | search s |"), "{md}");
        assert!(
            md.contains("| TF-IDF \\| sublinear | 10.00 | 40.00 | 90.00 | 50.00 | 75.00 | - | 2.0 | 250 | 0.3 |"),
            "{md}"
        );
        assert!(md.contains("| MiniLM | 20.00 | 50.00 | 95.00 | 50.00 | 75.00 | - | 0.0 | - | 0.3 |"), "{md}");
        assert!(md.contains("| NoteLLM | 66.67 | 0.00 | 0.00 | 50.00 |"), "{md}");
        assert!(md.ends_with("command: notellm eval\n"));

        let j = t.to_json();
        assert_eq!(j["rows"][0]["recall"][1], 0.4);
        assert_eq!(j["rows"][0]["notes_per_second"], 250.0);
        assert_eq!(j["rows"][1]["notes_per_second"], serde_json::Value::Null);
        assert_eq!(j["rows"][0]["buckets"][1]["pairs"], 20);
        assert_eq!(j["generation"][0]["category"]["accuracy"], 2.0 / 3.0);
        assert_eq!(j["bucket_rule"]["rule"], "fixed");
        assert_eq!(j["pairs"], 50);
    }

    #[test]
    fn rows_must_agree() {
        let timing = Timing { notes: 1, encode_seconds: 1.0, search_seconds: 1.0 };
        assert!(ResultsTable::new(&[10, 100], 50).is_err());
        let mut t = ResultsTable::new(&[10, 100, 1000], 100).unwrap();
        t.push("a", &report(vec![0.1, 0.2, 0.3], 50), timing).unwrap();
        assert!(t.push("b", &report(vec![0.1, 0.2, 0.3], 49), timing).is_err());
        let mut other_k = report(vec![0.1, 0.2], 50);
        other_k.ks = vec![10, 100];
        assert!(t.push("c", &other_k, timing).is_err());
        assert_eq!(t.rows.len(), 1);
    }
}
