//! The terminal: rendering replies with the story's pauses, and tab completion.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cmud::{Hardware, Item, Place, Reply};
use rustyline::Context;
use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;

use crate::feed::lock;

/// Whether to colour: stdout is a terminal and NO_COLOR is unset or empty.
pub(crate) fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Renders replies to stdout.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    pub color: bool,
    pub story: Duration,
}

impl Output {
    /// Prints a reply, pausing at the story's beats.
    pub(crate) fn print(&self, reply: &Reply) {
        let mut stdout = std::io::stdout().lock();
        for item in &reply.items {
            match item {
                Item::Line(l) => {
                    let _ = writeln!(stdout, "{}", l.render(self.color));
                }
                Item::Pause => {
                    let _ = stdout.flush();
                    if !self.story.is_zero() {
                        thread::sleep(self.story);
                    }
                }
            }
        }
        let _ = stdout.flush();
    }

    /// A reply's lines as one text, without the pauses (for the external printer).
    pub(crate) fn render(&self, reply: &Reply) -> String {
        let mut text = String::new();
        for item in &reply.items {
            if let Item::Line(l) = item {
                text.push_str(&l.render(self.color));
                text.push('\n');
            }
        }
        text
    }
}

/// Tab completion: command words, then places after `move` and hardware after `buy`.
pub(crate) struct Completion {
    pub words: Arc<Mutex<&'static [&'static str]>>,
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        let start =
            before.char_indices().rev().find(|(_, c)| c.is_whitespace()).map_or(0, |(i, c)| i + c.len_utf8());
        let word = before[start..].to_ascii_lowercase();
        let earlier: Vec<String> = before[..start].split_whitespace().map(str::to_ascii_lowercase).collect();
        let options: Vec<String> = match earlier.as_slice() {
            [] => lock(&self.words).iter().map(|w| (*w).to_owned()).collect(),
            [verb] if matches!(verb.as_str(), "move" | "go" | "walk") => {
                Place::all().map(Place::id).collect()
            }
            [verb] if verb == "buy" => Hardware::ALL.iter().map(|h| h.name().to_owned()).collect(),
            [verb, _] if verb == "buy" => vec!["max".to_owned()],
            _ => Vec::new(),
        };
        Ok((start, options.into_iter().filter(|o| o.starts_with(&word)).collect()))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl rustyline::Helper for Completion {}
