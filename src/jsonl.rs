//! Notes JSONL, the input format of `notellm embed` and `notellm ingest`: one JSON object per
//! line, `{"note_id", "title", "content", "hashtags", "category"}`. Every malformed line is
//! reported with its line number and either skipped or rejected, as `--on-error` says; none is
//! silently dropped. Blank lines are not notes and are passed over.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::note::{Note, NoteError, NoteId};

/// A note as it arrives on one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteLine {
    pub note_id: NoteId,
    #[serde(flatten)]
    pub note: Note,
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first malformed line with an error naming it.
    #[default]
    Reject,
    /// Report the line on stderr and go on.
    Skip,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: {msg}")]
    Malformed { line: usize, msg: String },
    #[error("line {line}: cannot read input: {source}")]
    Io {
        line: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Parses one line (1-based `line` for messages).
pub fn parse_line(text: &str, line: usize) -> Result<NoteLine, LineError> {
    let bad = |msg: String| LineError::Malformed { line, msg };
    let n: NoteLine = serde_json::from_str(text).map_err(|e| bad(format!("invalid note JSON: {e}")))?;
    n.note.validate().map_err(|e: NoteError| bad(e.to_string()))?;
    Ok(n)
}

/// Reads notes, applying `policy` to malformed lines. Skipped lines are handed to `on_skip`.
pub struct NoteReader<R> {
    lines: std::io::Lines<R>,
    line: usize,
    policy: OnError,
    pub skipped: usize,
}

impl<R: BufRead> NoteReader<R> {
    pub fn new(input: R, policy: OnError) -> Self {
        Self { lines: input.lines(), line: 0, policy, skipped: 0 }
    }

    /// The next well-formed note with its line number, `None` at the end.
    pub fn next_note(&mut self, on_skip: &mut dyn FnMut(&LineError)) -> Option<Result<(usize, NoteLine), LineError>> {
        loop {
            let text = self.lines.next()?;
            self.line += 1;
            let text = match text {
                Ok(t) => t,
                Err(source) => return Some(Err(LineError::Io { line: self.line, source })),
            };
            if text.trim().is_empty() {
                continue;
            }
            match parse_line(&text, self.line) {
                Ok(n) => return Some(Ok((self.line, n))),
                Err(e) if self.policy == OnError::Skip => {
                    self.skipped += 1;
                    on_skip(&e);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Up to `n` well-formed notes (fewer only at the end of the input; empty when it is done).
    pub fn next_chunk(&mut self, n: usize, on_skip: &mut dyn FnMut(&LineError)) -> Result<Vec<NoteLine>, LineError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_note(on_skip) {
                None => break,
                Some(r) => out.push(r?.1),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_reports_line_numbers() {
        let input = "{\"note_id\":\"a\",\"title\":\"t\"}\n\n{bad\n{\"note_id\":\"b c\",\"title\":\"t\"}\n{\"note_id\":\"d\"}\n{\"note_id\":\"e\",\"content\":\"x\",\"hashtags\":[\"h\"],\"category\":\"c\"}\n";
        let mut r = NoteReader::new(input.as_bytes(), OnError::Skip);
        let mut skipped = Vec::new();
        let mut ok = Vec::new();
        while let Some(n) = r.next_note(&mut |e| skipped.push(e.to_string())) {
            let (line, n) = n.unwrap();
            ok.push((line, n.note_id.to_string()));
        }
        assert_eq!(ok, vec![(1, "a".to_string()), (6, "e".to_string())]);
        assert_eq!(r.skipped, 3);
        assert!(skipped[0].starts_with("line 3: invalid note JSON"), "{}", skipped[0]);
        assert!(skipped[1].starts_with("line 4:") && skipped[1].contains("note id"), "{}", skipped[1]);
        assert!(skipped[2].starts_with("line 5:") && skipped[2].contains("neither a title nor content"));

        let mut r = NoteReader::new(input.as_bytes(), OnError::Reject);
        assert!(r.next_note(&mut |_| {}).unwrap().is_ok());
        let e = r.next_note(&mut |_| panic!("reject never skips")).unwrap().unwrap_err();
        assert!(e.to_string().starts_with("line 3:"));
    }

    proptest! {
        #[test]
        fn never_panics_and_counts_every_line(lines in proptest::collection::vec("\\PC{0,60}", 0..30)) {
            let input = lines.join("\n");
            let mut r = NoteReader::new(input.as_bytes(), OnError::Skip);
            let mut seen = 0usize;
            let mut skipped = 0usize;
            while let Some(n) = r.next_note(&mut |_| skipped += 1) {
                prop_assert!(n.is_ok());
                seen += 1;
            }
            let non_blank = input.lines().filter(|l| !l.trim().is_empty()).count();
            prop_assert_eq!(seen + skipped, non_blank);
            prop_assert_eq!(skipped, r.skipped);
        }
    }
}
