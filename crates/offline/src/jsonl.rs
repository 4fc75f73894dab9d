//! Notes JSONL, the input format of `notellm embed` and `notellm ingest`: one JSON object per
//! line, `{"note_id", "title", "content", "hashtags", "category"}` and no other field. A line is
//! held to what `PUT /notes` holds a note to ([`Note::check`] with the same [`NoteLimits`]); a
//! line longer than any such note can be is refused unparsed, without being read into memory.
//! Every malformed line (bad JSON, not UTF-8, too long, out of bounds) is reported with its line
//! number and either skipped or rejected, as `--on-error` says; none is silently dropped. Blank
//! lines are not notes and are passed over.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use notellm_note::{Note, NoteId, NoteLimits};

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

/// An input line exactly: unknown fields are errors (a typo must not drop a field silently).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictLine {
    note_id: NoteId,
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    hashtags: Vec<String>,
    #[serde(default)]
    category: Option<String>,
}

/// Parses one line (1-based `line` for messages) and checks it against `limits`.
pub fn parse_line(text: &str, line: usize, limits: &NoteLimits) -> Result<NoteLine, LineError> {
    let bad = |msg: String| LineError::Malformed { line, msg };
    let l: StrictLine = serde_json::from_str(text).map_err(|e| bad(format!("invalid note JSON: {e}")))?;
    let note = Note { title: l.title, content: l.content, hashtags: l.hashtags, category: l.category };
    note.check(limits).map_err(|e| bad(e.to_string()))?;
    Ok(NoteLine { note_id: l.note_id, note })
}

/// Newlines in `r` (a progress bar's total), counted without holding a line in memory.
pub fn count_lines<R: BufRead>(mut r: R) -> std::io::Result<u64> {
    let mut n = 0u64;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(n);
        }
        n += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = chunk.len();
        r.consume(len);
    }
}

/// One line of input, read with a bound on its length.
enum RawLine {
    Text(Vec<u8>),
    /// Longer than the bound: the rest of it was read and dropped.
    TooLong,
}

/// Reads up to and without the next `\n` (and a `\r` before it), keeping at most `cap` bytes;
/// `None` at the end of the input.
fn read_line_capped<R: BufRead>(r: &mut R, cap: usize, buf: &mut Vec<u8>) -> std::io::Result<Option<RawLine>> {
    use std::io::Read;
    buf.clear();
    let n = r.by_ref().take(cap as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > cap {
        // Drop the rest of the line without holding it.
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    r.consume(i + 1);
                    break;
                }
                None => {
                    let len = chunk.len();
                    r.consume(len);
                }
            }
        }
        return Ok(Some(RawLine::TooLong));
    }
    Ok(Some(RawLine::Text(std::mem::take(buf))))
}

/// Reads notes, applying `policy` to malformed lines. Skipped lines are handed to `on_skip`.
pub struct NoteReader<R> {
    input: R,
    limits: NoteLimits,
    buf: Vec<u8>,
    line: usize,
    policy: OnError,
    pub skipped: usize,
}

impl<R: BufRead> NoteReader<R> {
    /// Notes held to `limits` (those of `PUT /notes`).
    pub fn new(input: R, policy: OnError, limits: NoteLimits) -> Self {
        Self { input, limits, buf: Vec::new(), line: 0, policy, skipped: 0 }
    }

    /// The next line as text, or why it is not one.
    fn next_text(&mut self) -> Option<Result<String, LineError>> {
        let cap = self.limits.max_json_bytes();
        let raw = match read_line_capped(&mut self.input, cap, &mut self.buf) {
            Ok(raw) => raw?,
            Err(source) => return Some(Err(LineError::Io { line: self.line + 1, source })),
        };
        self.line += 1;
        let line = self.line;
        Some(match raw {
            RawLine::TooLong => Err(LineError::Malformed {
                line,
                msg: format!("longer than {cap} bytes, more than a note within the limits can take"),
            }),
            RawLine::Text(bytes) => String::from_utf8(bytes)
                .map_err(|e| LineError::Malformed { line, msg: format!("not UTF-8: {}", e.utf8_error()) }),
        })
    }

    /// The next well-formed note with its line number, `None` at the end.
    pub fn next_note(&mut self, on_skip: &mut dyn FnMut(&LineError)) -> Option<Result<(usize, NoteLine), LineError>> {
        loop {
            let parsed = match self.next_text()? {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => parse_line(&text, self.line, &self.limits),
                Err(e @ LineError::Io { .. }) => return Some(Err(e)),
                Err(e) => Err(e),
            };
            match parsed {
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
        let mut r = NoteReader::new(input.as_bytes(), OnError::Skip, NoteLimits::default());
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

        let mut r = NoteReader::new(input.as_bytes(), OnError::Reject, NoteLimits::default());
        assert!(r.next_note(&mut |_| {}).unwrap().is_ok());
        let e = r.next_note(&mut |_| panic!("reject never skips")).unwrap().unwrap_err();
        assert!(e.to_string().starts_with("line 3:"));
    }

    #[test]
    fn the_limits_of_put_notes_apply_and_bad_lines_are_skippable() {
        let limits = NoteLimits { max_title_chars: 10, max_content_chars: 20, max_hashtags: 2, max_hashtag_chars: 8 };
        let huge = "x".repeat(limits.max_json_bytes() * 3);
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"note_id\":\"a\",\"title\":\"fine\"}\r\n");
        input.extend_from_slice(format!("{{\"note_id\":\"b\",\"title\":\"{huge}\"}}\n").as_bytes());
        input.extend_from_slice(b"{\"note_id\":\"c\",\"title\":\"t\",\"hashtags\":[\"1\",\"2\",\"3\"]}\n");
        input.extend_from_slice(b"{\"note_id\":\"d\",\"title\":\"t\",\"colour\":\"red\"}\n");
        input.extend_from_slice(b"{\"note_id\":\"e\",\"title\":\"\xff\xfe\"}\n");
        input.extend_from_slice(b"{\"note_id\":\"f\",\"title\":\"this title is too long\"}\n");
        input.extend_from_slice(b"{\"note_id\":\"g\",\"content\":\"last, no newline\"}");
        let mut r = NoteReader::new(&input[..], OnError::Skip, limits);
        let mut skipped = Vec::new();
        let mut ok = Vec::new();
        while let Some(n) = r.next_note(&mut |e| skipped.push(e.to_string())) {
            ok.push(n.unwrap().1.note_id.to_string());
        }
        assert_eq!(ok, ["a", "g"]);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped[0].starts_with("line 2: longer than"), "{}", skipped[0]);
        assert!(skipped[1].starts_with("line 3: more than 2 hashtags"), "{}", skipped[1]);
        assert!(skipped[2].starts_with("line 4: invalid note JSON: unknown field `colour`"), "{}", skipped[2]);
        assert!(skipped[3].starts_with("line 5: not UTF-8"), "{}", skipped[3]);
        assert!(skipped[4].starts_with("line 6: title is over 10 characters"), "{}", skipped[4]);
        // Rejecting stops at the first of them, naming it.
        let mut r = NoteReader::new(&input[..], OnError::Reject, limits);
        assert!(r.next_note(&mut |_| {}).unwrap().is_ok());
        let e = r.next_note(&mut |_| panic!("reject never skips")).unwrap().unwrap_err();
        assert!(e.to_string().starts_with("line 2: longer than"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics_and_counts_every_line(lines in proptest::collection::vec("\\PC{0,60}", 0..30)) {
            let input = lines.join("\n");
            let mut r = NoteReader::new(input.as_bytes(), OnError::Skip, NoteLimits::default());
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
