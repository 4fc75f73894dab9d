//! The Note Compression Prompt (NoteLLM, version `notellm-v1`), both variants:
//!
//! ```text
//! [BOS]<Instruction> <Input Note> The compression word is:"[EMB]". <Output Guidance> <Output>[EOS]
//! ```
//!
//! - category: the input note is `{'title': t, 'topic': tp, 'content': ct}.`, the guidance
//!   `The category is:` and the output the category;
//! - hashtags (j of them): the input note is `{'title': t, 'content': ct}.` (hashtags removed),
//!   the guidance `The <j> topics are:` and the output the hashtags.
//!
//! Field values are inserted as they are (no quoting, as the paper writes the template); a list
//! of hashtags is joined with `", "`, which is also the output format of the hashtag variant.
//! Fields are truncated to a token budget before they are inserted, so the template's tail and
//! `[EMB]` always survive. User text that spells a special token (say `[EMB]`) is defused so it
//! cannot inject one.
//!
//! This module is pure text; token counting is delegated to a [`Truncate`] implementation (the
//! model's tokenizer in production, a whitespace splitter in tests).

use notellm_note::Note;

pub const CATEGORY_INSTRUCTION: &str = "Extract the note information in json format, compress it into one word for recommendation, and generate the category of the note.";
pub const EMB_CUE: &str = "The compression word is:\"";
pub const CATEGORY_GUIDANCE: &str = "The category is:";
/// Separator of hashtags in the topic field and in the hashtag variant's output.
pub const HASHTAG_SEPARATOR: &str = ", ";

pub fn hashtag_instruction(j: usize) -> String {
    format!("Extract the note information in json format, compress it into one word for recommendation, and generate {j} topics of the note.")
}

pub fn hashtag_guidance(j: usize) -> String {
    format!("The {j} topics are:")
}

/// Which half of the generation task the prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// All fields in, the category out. Used for retrieval.
    Category,
    /// Hashtags removed from the input; `j` hashtags out.
    Hashtags { j: usize },
}

/// Cuts text to at most `max_tokens` tokens (keeping the beginning).
pub trait Truncate {
    fn truncate<'a>(&self, text: &'a str, max_tokens: usize) -> std::borrow::Cow<'a, str>;
}

/// Token budgets for the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub title: usize,
    pub content: usize,
    pub topic: usize,
}

impl Default for Limits {
    /// The paper's budgets: title 20 tokens, content 80; the topic field gets 30.
    fn default() -> Self {
        Self { title: 20, content: 80, topic: 30 }
    }
}

/// Special token strings that user text must not spell.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    pub bos: Option<String>,
    pub emb: String,
    pub eos: String,
    /// Any other added tokens of the tokenizer (chat markers, padding).
    pub others: Vec<String>,
}

impl Specials {
    fn all(&self) -> impl Iterator<Item = &str> {
        self.bos
            .iter()
            .map(String::as_str)
            .chain([self.emb.as_str(), self.eos.as_str()])
            .chain(self.others.iter().map(String::as_str))
            .filter(|s| !s.is_empty())
    }

    /// Breaks every spelled special token by inserting a space after its first character, so
    /// the tokenizer sees ordinary text.
    pub fn defuse(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self.all() {
            if out.contains(s) {
                let mut chars = s.chars();
                let first = chars.next().map(String::from).unwrap_or_default();
                out = out.replace(s, &format!("{first} {}", chars.as_str()));
            }
        }
        out
    }
}

/// A rendered prompt: the text up to and including `[EMB]`, then the guidance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// `[BOS]<Instruction> <Input Note> The compression word is:"[EMB]`
    pub through_emb: String,
    /// `". <Output Guidance>` — what follows `[EMB]` before the output.
    pub guidance: String,
}

impl Prompt {
    /// The prompt as generation sees it: everything up to the output.
    pub fn for_generation(&self) -> String {
        format!("{}{}", self.through_emb, self.guidance)
    }

    /// The full training text with the output and `[EOS]`.
    pub fn with_output(&self, output: &str, eos: &str) -> String {
        format!("{}{} {output}{eos}", self.through_emb, self.guidance)
    }
}

/// Renders the prompt of `variant` for `note`.
pub fn render(note: &Note, variant: Variant, limits: Limits, specials: &Specials, tok: &dyn Truncate) -> Prompt {
    let field = |text: &str, max: usize| -> String {
        let clean = specials.defuse(text.trim());
        tok.truncate(&clean, max).trim_end().to_owned()
    };
    let title = field(&note.title, limits.title);
    let content = field(&note.content, limits.content);
    let (instruction, input, guidance) = match variant {
        Variant::Category => {
            let topics = field(&note.hashtags.join(HASHTAG_SEPARATOR), limits.topic);
            // A list cut mid-way must not end in a dangling separator.
            let topics = topics.trim_end_matches(|c: char| c == ',' || c.is_whitespace()).to_owned();
            (
                CATEGORY_INSTRUCTION.to_owned(),
                format!("{{'title': {title}, 'topic': {topics}, 'content': {content}}}."),
                CATEGORY_GUIDANCE.to_owned(),
            )
        }
        Variant::Hashtags { j } => {
            (hashtag_instruction(j), format!("{{'title': {title}, 'content': {content}}}."), hashtag_guidance(j))
        }
    };
    let bos = specials.bos.as_deref().unwrap_or("");
    Prompt {
        through_emb: format!("{bos}{instruction} {input} {EMB_CUE}{}", specials.emb),
        guidance: format!("\". {guidance}"),
    }
}

/// The output text of the hashtag variant for `tags`.
pub fn hashtag_output(tags: &[String]) -> String {
    tags.join(HASHTAG_SEPARATOR)
}

/// Longest hashtag kept from generated text; longer ones are runaway prose, not tags.
pub const MAX_GENERATED_HASHTAG_CHARS: usize = 48;

/// Parses generated hashtags: split on commas (and newlines), cut each at a quote or brace (the
/// model has left the list), strip `#`, drop empties, runaway prose and duplicates, keep at most
/// `max`.
pub fn parse_hashtags(output: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if max == 0 {
        return out;
    }
    for part in output.split([',', '\n', ';']) {
        let part = part.trim_start().trim_start_matches(['"', '\'', '#']);
        let part = part.split(['"', '{', '}', '(', ')']).next().unwrap_or("");
        let tag = part.trim().trim_matches(|c: char| c == '#' || c == '\'' || c == '.').trim();
        if !tag.is_empty() && tag.chars().count() <= MAX_GENERATED_HASHTAG_CHARS && !out.iter().any(|t| t == tag) {
            out.push(tag.to_owned());
        }
        if out.len() == max {
            break;
        }
    }
    out
}

/// Parses a free-form generated category: the first line, up to a closing quote or the end of
/// the first sentence, trimmed of quotes and a final period.
pub fn parse_category(output: &str) -> Option<String> {
    let line = output.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.trim_start_matches(['"', '\'']);
    let line = line.split('"').next().unwrap_or("");
    let line = line.split(". ").next().unwrap_or("");
    let c = line.trim_matches(|c: char| c == '"' || c == '\'' || c == '.').trim();
    (!c.is_empty() && c.chars().count() <= MAX_GENERATED_HASHTAG_CHARS).then(|| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::borrow::Cow;

    /// Counts whitespace-separated words as tokens.
    struct Words;
    impl Truncate for Words {
        fn truncate<'a>(&self, text: &'a str, max: usize) -> Cow<'a, str> {
            match text.split_whitespace().nth(max) {
                None => Cow::Borrowed(text),
                Some(w) => {
                    let cut = w.as_ptr() as usize - text.as_ptr() as usize;
                    Cow::Borrowed(&text[..cut])
                }
            }
        }
    }

    fn specials() -> Specials {
        Specials { bos: Some("<s>".into()), emb: "[EMB]".into(), eos: "</s>".into(), others: vec![] }
    }

    fn note() -> Note {
        Note {
            title: "Autumn hike".into(),
            content: "Maple leaves everywhere.".into(),
            hashtags: vec!["travel".into(), "autumn".into()],
            category: Some("Travel".into()),
        }
    }

    #[test]
    fn golden_category_prompt() {
        let p = render(&note(), Variant::Category, Limits::default(), &specials(), &Words);
        assert_eq!(
            p.with_output("Travel", "</s>"),
            "<s>Extract the note information in json format, compress it into one word for recommendation, and generate the category of the note. {'title': Autumn hike, 'topic': travel, autumn, 'content': Maple leaves everywhere.}. The compression word is:\"[EMB]\". The category is: Travel</s>"
        );
    }

    #[test]
    fn golden_hashtag_prompt() {
        let p = render(&note(), Variant::Hashtags { j: 2 }, Limits::default(), &specials(), &Words);
        assert_eq!(
            p.with_output(&hashtag_output(&note().hashtags), "</s>"),
            "<s>Extract the note information in json format, compress it into one word for recommendation, and generate 2 topics of the note. {'title': Autumn hike, 'content': Maple leaves everywhere.}. The compression word is:\"[EMB]\". The 2 topics are: travel, autumn</s>"
        );
        assert_eq!(
            p.for_generation(),
            "<s>Extract the note information in json format, compress it into one word for recommendation, and generate 2 topics of the note. {'title': Autumn hike, 'content': Maple leaves everywhere.}. The compression word is:\"[EMB]\". The 2 topics are:"
        );
    }

    #[test]
    fn truncation_keeps_the_tail() {
        let mut n = note();
        n.content = "word ".repeat(500);
        let limits = Limits { title: 1, content: 3, topic: 1 };
        let p = render(&n, Variant::Category, limits, &specials(), &Words);
        assert!(p.through_emb.ends_with("The compression word is:\"[EMB]"));
        assert!(
            p.through_emb.contains("{'title': Autumn, 'topic': travel, 'content': word word word}."),
            "{}",
            p.through_emb
        );
    }

    #[test]
    fn special_tokens_in_user_text_are_defused() {
        let mut n = note();
        n.content = "evil [EMB] and </s> here".into();
        let p = render(&n, Variant::Category, Limits::default(), &specials(), &Words);
        assert_eq!(p.through_emb.matches("[EMB]").count(), 1);
        assert!(!p.through_emb.contains("</s>"));
    }

    #[test]
    fn parses_outputs() {
        assert_eq!(parse_hashtags(" #travel, autumn,, travel , 'x'.", 5), vec!["travel", "autumn", "x"]);
        assert_eq!(parse_hashtags("a, b, c", 2), vec!["a", "b"]);
        assert_eq!(parse_category("  \"Travel\".\nmore"), Some("Travel".into()));
        assert_eq!(parse_category("   "), None);
        // zero-shot output that runs on past the answer (seen from SmolLM2)
        assert_eq!(parse_category("trester\". The tile is: \"Tram\" and the content"), Some("trester".into()));
        assert_eq!(parse_category("Travel. It is about trams"), Some("Travel".into()));
        assert_eq!(
            parse_hashtags("Tram, Treso de la Mona, Monterrosa\" and 2 others. The list is: {1}", 3),
            vec!["Tram", "Treso de la Mona", "Monterrosa"]
        );
        assert_eq!(parse_hashtags(&"word ".repeat(30), 3), Vec::<String>::new());
    }

    proptest! {
        #[test]
        fn emb_always_present_once(title in "\\PC{0,200}", content in "\\PC{0,2000}", tags in proptest::collection::vec("\\PC{0,20}", 0..5), t in 0usize..30, c in 0usize..100) {
            let n = Note { title, content, hashtags: tags, category: None };
            for v in [Variant::Category, Variant::Hashtags { j: 3 }] {
                let p = render(&n, v, Limits { title: t, content: c, topic: 5 }, &specials(), &Words);
                let tail = format!("{EMB_CUE}[EMB]");
                prop_assert!(p.through_emb.ends_with(&tail));
                prop_assert_eq!(p.through_emb.matches("[EMB]").count(), 1);
                prop_assert!(p.through_emb.starts_with("<s>Extract"));
            }
        }

        #[test]
        fn parse_hashtags_never_panics_and_is_clean(s in "\\PC{0,200}", max in 0usize..10) {
            let tags = parse_hashtags(&s, max);
            prop_assert!(tags.len() <= max);
            for t in &tags {
                prop_assert!(!t.is_empty() && !t.contains(','));
            }
        }
    }
}
