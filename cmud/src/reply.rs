//! What the game says back: lines of styled spans, with pauses for story pacing.
//!
//! The library never prints. A [`Reply`] is data; the binary renders it with or without colour
//! ([`Line::render`]) and sleeps `--story-ms` at each [`Item::Pause`]; tests read
//! [`Reply::text`].

use std::fmt::Write as _;

/// The role of a piece of text; the renderer picks the colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Ordinary text.
    Plain,
    /// Headings.
    Title,
    /// Good news.
    Good,
    /// Refusals and bad news.
    Bad,
    /// Warnings (bad stored values, an unreachable server).
    Warn,
    /// Secondary text.
    Dim,
    /// A player's name.
    Name,
    /// An amount of coins.
    Coin,
    /// A place.
    Place,
    /// A chat message's text.
    Chat,
}

impl Tone {
    fn ansi(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Title => Some("1"),
            Tone::Good => Some("32"),
            Tone::Bad => Some("31"),
            Tone::Warn => Some("33"),
            Tone::Dim => Some("2"),
            Tone::Name => Some("1;36"),
            Tone::Coin => Some("1;33"),
            Tone::Place => Some("35"),
            Tone::Chat => Some("97"),
        }
    }
}

/// A piece of text in one tone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// How it is shown.
    pub tone: Tone,
    /// The text, free of control characters.
    pub text: String,
}

/// One line of output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// The pieces, in order.
    pub spans: Vec<Span>,
}

impl Line {
    /// An empty line.
    pub fn new() -> Line {
        Line::default()
    }

    /// Appends `text` in `tone`. Control characters (escape sequences from a hostile stored
    /// value, say) are replaced by spaces, so nothing stored can drive the terminal.
    pub fn push(mut self, tone: Tone, text: impl AsRef<str>) -> Line {
        let text = sanitize(text.as_ref());
        if !text.is_empty() {
            self.spans.push(Span { tone, text });
        }
        self
    }

    /// Appends plain text.
    pub fn plain(self, text: impl AsRef<str>) -> Line {
        self.push(Tone::Plain, text)
    }

    /// The text without styling.
    pub fn text(&self) -> String {
        self.spans.iter().map(|s| s.text.as_str()).collect()
    }

    /// The text, with ANSI colours when `color`.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for span in &self.spans {
            match (color, span.tone.ansi()) {
                (true, Some(code)) => {
                    let _ = write!(out, "\x1b[{code}m{}\x1b[0m", span.text);
                }
                _ => out.push_str(&span.text),
            }
        }
        out
    }
}

/// One element of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A line to print.
    Line(Line),
    /// A beat of the story: the binary waits `--story-ms` here.
    Pause,
}

/// Everything one input produces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Lines and pauses, in order.
    pub items: Vec<Item>,
}

impl Reply {
    /// An empty reply.
    pub fn new() -> Reply {
        Reply::default()
    }

    /// A reply of one line.
    pub fn line(line: Line) -> Reply {
        let mut r = Reply::new();
        r.push(line);
        r
    }

    /// A reply of one line in one tone.
    pub fn say(tone: Tone, text: impl AsRef<str>) -> Reply {
        Reply::line(Line::new().push(tone, text))
    }

    /// Appends a line.
    pub fn push(&mut self, line: Line) -> &mut Reply {
        self.items.push(Item::Line(line));
        self
    }

    /// Appends a line of one tone.
    pub fn add(&mut self, tone: Tone, text: impl AsRef<str>) -> &mut Reply {
        self.push(Line::new().push(tone, text))
    }

    /// Appends a story beat.
    pub fn pause(&mut self) -> &mut Reply {
        self.items.push(Item::Pause);
        self
    }

    /// Appends another reply.
    pub fn extend(&mut self, other: Reply) -> &mut Reply {
        self.items.extend(other.items);
        self
    }

    /// The lines.
    pub fn lines(&self) -> impl Iterator<Item = &Line> {
        self.items.iter().filter_map(|i| match i {
            Item::Line(l) => Some(l),
            Item::Pause => None,
        })
    }

    /// All lines as plain text, one per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in self.lines() {
            out.push_str(&l.text());
            out.push('\n');
        }
        out
    }
}

/// Replaces control characters with spaces.
pub fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `1234567` → `1,234,567`.
pub fn num(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number and its noun, singular for exactly one: `1 coin`, `0 coins`, `1,200 units`.
pub fn count(n: impl Into<i128>, one: &str, many: &str) -> String {
    let n: i128 = n.into();
    format!("{} {}", num(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_sanitize() {
        let line = Line::new().plain("You have ").push(Tone::Coin, "5 coins").plain("\x1b[2J!");
        assert_eq!(line.text(), "You have 5 coins [2J!");
        assert_eq!(line.render(false), line.text());
        assert_eq!(line.render(true), "You have \x1b[1;33m5 coins\x1b[0m [2J!");
        let mut r = Reply::say(Tone::Good, "a");
        r.pause().add(Tone::Bad, "b");
        assert_eq!(r.text(), "a\nb\n");
        assert_eq!(r.items.len(), 3);
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(10_000_000), "10,000,000");
        assert_eq!(num(-1234), "-1,234");
    }

    #[test]
    fn one_is_singular() {
        assert_eq!(count(1, "coin", "coins"), "1 coin");
        assert_eq!(count(0, "coin", "coins"), "0 coins");
        assert_eq!(count(-1, "coin", "coins"), "-1 coins");
        assert_eq!(count(2500, "unit", "units"), "2,500 units");
    }
}
