//! Per-model conversation history of a session, trimmed to the last turns and a token budget
//! so a long thread never grows a request without bound.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Turns kept per model (SPEC §4.2).
pub const MAX_TURNS: usize = 10;
/// Approximate token budget per model's history (SPEC §4.2: "~8 K tokens").
pub const MAX_TOKENS: usize = 8 * 1024;

/// One chat message as sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// A user prompt and the model's answer to it (possibly partial, after a cancel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Turn {
    user: String,
    assistant: String,
}

/// Rough token estimate (4 characters a token), used for trimming and estimated usage when a
/// backend reports none. Deliberately simple: exact counts need the model's tokenizer.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Histories of every model of a session. Serialisable: a session's history is what its
/// stored copy carries across a restart (`session_store`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    per_model: HashMap<String, VecDeque<Turn>>,
}

impl History {
    /// The messages to send `model` for a new prompt: its own history, then the prompt.
    pub fn messages_for(&self, model: &str, prompt: &str) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(turns) = self.per_model.get(model) {
            for t in turns {
                out.push(Message {
                    role: "user",
                    content: t.user.clone(),
                });
                out.push(Message {
                    role: "assistant",
                    content: t.assistant.clone(),
                });
            }
        }
        out.push(Message {
            role: "user",
            content: prompt.to_string(),
        });
        out
    }

    /// Appends a finished (or cancelled) turn for `model`, then trims.
    pub fn append(&mut self, model: &str, user: &str, assistant: &str) {
        let turns = self.per_model.entry(model.to_string()).or_default();
        turns.push_back(Turn {
            user: user.to_string(),
            assistant: assistant.to_string(),
        });
        while turns.len() > MAX_TURNS {
            turns.pop_front();
        }
        let cost = |t: &Turn| estimate_tokens(&t.user) + estimate_tokens(&t.assistant);
        let mut total: usize = turns.iter().map(cost).sum();
        // Always keep the newest turn, even if it alone is over budget.
        while total > MAX_TOKENS && turns.len() > 1 {
            if let Some(old) = turns.pop_front() {
                total -= cost(&old);
            }
        }
    }

    /// Turns kept for `model`.
    pub fn turns(&self, model: &str) -> usize {
        self.per_model.get(model).map_or(0, VecDeque::len)
    }

    /// Forget everything (`clear`).
    pub fn clear(&mut self) {
        self.per_model.clear();
    }

    /// Models with any history, for the state route.
    pub fn summary(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .per_model
            .iter()
            .map(|(m, t)| (m.clone(), t.len()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_models_own_history() {
        let mut h = History::default();
        h.append("a", "q1", "a1");
        h.append("b", "q1", "b1");
        let msgs = h.messages_for("a", "q2");
        let text: Vec<(&str, &str)> = msgs.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(text, [("user", "q1"), ("assistant", "a1"), ("user", "q2")]);
        assert_eq!(h.messages_for("c", "x").len(), 1);
    }

    #[test]
    fn keeps_the_last_ten_turns() {
        let mut h = History::default();
        for i in 0..15 {
            h.append("m", &format!("q{i}"), "a");
        }
        assert_eq!(h.turns("m"), MAX_TURNS);
        assert_eq!(h.messages_for("m", "x")[0].content, "q5");
    }

    #[test]
    fn trims_to_the_token_budget_keeping_the_newest() {
        let mut h = History::default();
        let big = "x".repeat(MAX_TOKENS * 4 / 3);
        h.append("m", "q1", &big);
        h.append("m", "q2", &big);
        h.append("m", "q3", &big);
        assert_eq!(h.turns("m"), 2);
        let huge = "y".repeat(MAX_TOKENS * 8);
        h.append("m", "q4", &huge);
        assert_eq!(h.turns("m"), 1);
        assert_eq!(h.messages_for("m", "z")[0].content, "q4");
        h.clear();
        assert_eq!(h.turns("m"), 0);
    }
}
