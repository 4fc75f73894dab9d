//! A streaming reader for deb822 control files (Debian's `Packages`, `Translation-*`, ...).
//!
//! Stanzas are separated by one or more blank (or whitespace-only) lines. A stanza is a list of
//! `Field: value` lines; a line starting with a space or a tab continues the previous field.
//! Field names are matched case-insensitively and may appear only once per stanza. Comments
//! (`#` lines) are not part of the Debian indices and are rejected.
//!
//! A field's value is the text after the colon with surrounding whitespace trimmed, followed by
//! each continuation line as `"\n" + line` (leading whitespace kept, trailing whitespace
//! trimmed), so callers can still tell a description's ` .` paragraph separators and verbatim
//! lines apart. [`Stanzas`] reads one stanza at a time, so a 50 MB `Packages` file is never held
//! in memory whole.

use std::fmt;
use std::io::BufRead;

#[derive(Debug, thiserror::Error)]
pub enum Deb822Error {
    #[error("line {line}: cannot read: {source}")]
    Io {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: not valid UTF-8")]
    Utf8 { line: usize },
    #[error("line {line}: continuation line without a field before it")]
    Orphan { line: usize },
    #[error("line {line}: expected `Field: value`, got {text:?}")]
    NotAField { line: usize, text: String },
    #[error("line {line}: field {name:?} appears twice in one stanza")]
    Duplicate { line: usize, name: String },
}

impl Deb822Error {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            Self::Io { line, .. }
            | Self::Utf8 { line }
            | Self::Orphan { line }
            | Self::NotAField { line, .. }
            | Self::Duplicate { line, .. } => *line,
        }
    }
}

/// One `Field: value` of a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
    /// 1-based line of the field name.
    pub line: usize,
}

/// One paragraph of a deb822 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// 1-based line of the first field.
    pub line: usize,
    pub fields: Vec<Field>,
}

impl Stanza {
    /// The field named `name` (case-insensitive).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The value of the field named `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.value.as_str())
    }
}

/// Renders the stanza back in deb822 syntax (without the separating blank line).
impl fmt::Display for Stanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for field in &self.fields {
            writeln!(f, "{}: {}", field.name, field.value)?;
        }
        Ok(())
    }
}

/// An iterator over the stanzas of a deb822 stream. It stops after the first error.
pub struct Stanzas<R> {
    reader: R,
    buf: Vec<u8>,
    line: usize,
    done: bool,
}

impl<R: BufRead> Stanzas<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, buf: Vec::new(), line: 0, done: false }
    }

    fn fail(&mut self, e: Deb822Error) -> Option<Result<Stanza, Deb822Error>> {
        self.done = true;
        Some(Err(e))
    }
}

impl<R: BufRead> Iterator for Stanzas<R> {
    type Item = Result<Stanza, Deb822Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut fields: Vec<Field> = Vec::new();
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(_) => self.line += 1,
                Err(source) => return self.fail(Deb822Error::Io { line: self.line + 1, source }),
            }
            let line = self.line;
            let Ok(text) = std::str::from_utf8(&self.buf) else {
                return self.fail(Deb822Error::Utf8 { line });
            };
            let text = text.trim_end();
            if text.is_empty() {
                if fields.is_empty() {
                    continue;
                }
                break;
            }
            if text.starts_with([' ', '\t']) {
                let Some(last) = fields.last_mut() else {
                    return self.fail(Deb822Error::Orphan { line });
                };
                last.value.push('\n');
                last.value.push_str(text);
                continue;
            }
            let Some((name, value)) = text.split_once(':').filter(|(name, _)| valid_name(name)) else {
                let text = text.chars().take(80).collect();
                return self.fail(Deb822Error::NotAField { line, text });
            };
            if fields.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
                return self.fail(Deb822Error::Duplicate { line, name: name.to_owned() });
            }
            fields.push(Field { name: name.to_owned(), value: value.trim().to_owned(), line });
        }
        let line = fields.first()?.line;
        Some(Ok(Stanza { line, fields }))
    }
}

/// deb822 field names: printable ASCII without spaces or colons, not starting with `#` or `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(['#', '-']) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Vec<Stanza>, Deb822Error> {
        Stanzas::new(text.as_bytes()).collect()
    }

    fn pairs(s: &Stanza) -> Vec<(&str, &str)> {
        s.fields.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect()
    }

    #[test]
    fn stanzas_fields_and_continuations() {
        let text = "\n\nPackage: foo\nDescription: short\n long line\n .\n  verbatim\r\nTag: a::b,\n c::d\n\n \t\nPACKAGE:bar\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].line, 3);
        assert_eq!(
            pairs(&s[0]),
            [("Package", "foo"), ("Description", "short\n long line\n .\n  verbatim"), ("Tag", "a::b,\n c::d")]
        );
        assert_eq!(s[0].field("tag").unwrap().line, 8);
        assert_eq!(s[1].get("package"), Some("bar"));
        assert_eq!(s[1].line, 12);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&[u8], usize); 5] = [
            (b" orphan\n", 1),
            (b"A: 1\n\nno colon here\n", 3),
            (b"A: 1\nB: 2\na: 3\n", 3),
            (b"# comment\n", 1),
            (b"A: 1\n\xff: x\n", 2),
        ];
        for (text, line) in cases {
            let err = Stanzas::new(text).find_map(Result::err).unwrap();
            assert_eq!(err.line(), line, "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}:")), "{err}");
        }
    }

    #[test]
    fn stops_after_an_error() {
        let mut it = Stanzas::new("A: 1\n\n bad\n\nB: 2\n".as_bytes());
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    fn arb_stanza() -> impl Strategy<Value = Vec<(String, String)>> {
        let first = "([!-~]([ -~]{0,20}[!-~])?)?";
        let cont = "[ \t][ -~]{0,20}[!-~]";
        let value = (first, prop::collection::vec(cont, 0..4)).prop_map(|(f, c)| {
            c.iter().fold(f, |mut v, l| {
                v.push('\n');
                v.push_str(l);
                v
            })
        });
        let name = "[A-Za-z0-9][!-9;-~]{0,12}";
        prop::collection::vec((name, value), 1..6).prop_map(|fields| {
            let mut seen = std::collections::HashSet::new();
            fields.into_iter().filter(|(n, _)| seen.insert(n.to_ascii_lowercase())).collect()
        })
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            stanzas in prop::collection::vec(arb_stanza(), 0..5),
            gaps in prop::collection::vec("[ \t]{0,2}\n", 1..3),
        ) {
            let mut text = String::new();
            for s in &stanzas {
                for (n, v) in s {
                    text.push_str(&format!("{n}: {v}\n"));
                }
                text.push_str(&gaps.concat());
            }
            let parsed = parse(&text).unwrap();
            prop_assert_eq!(parsed.len(), stanzas.len());
            for (p, s) in parsed.iter().zip(&stanzas) {
                let want: Vec<(&str, &str)> = s.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                prop_assert_eq!(pairs(p), want);
                // Display renders what was parsed.
                let again = parse(&p.to_string()).unwrap();
                prop_assert_eq!(pairs(&again[0]), pairs(p));
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut n = 0;
            for r in Stanzas::new(bytes.as_slice()) {
                n += 1;
                if let Err(e) = r {
                    prop_assert!(e.line() >= 1);
                }
            }
            prop_assert!(n <= bytes.len() + 1);
        }

        #[test]
        fn never_panics_on_text(text in "([A-Za-z:# \t.]{0,12}\n){0,20}") {
            for r in Stanzas::new(text.as_bytes()) {
                if let Err(e) = r {
                    prop_assert!(e.line() >= 1 && e.line() <= text.lines().count());
                }
            }
        }
    }
}
