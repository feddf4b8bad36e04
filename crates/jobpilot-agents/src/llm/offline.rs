//! The offline provider: answers a chat with deterministic text derived from the prompt, with
//! no network, so jobpilot runs end to end on a laptop or in CI.
//!
//! When the prompt carries a draft block ([`super::draft_block`]) the answer is that draft;
//! otherwise it is a short note naming the prompt's most frequent words. It is not a language
//! model and does not pretend to be one: token counts are estimates from word counts.

use std::collections::BTreeMap;

use super::{ChatMessage, ChatResponse, OFFLINE_MODEL, Role, find_draft};
use crate::text::{tokens, word_count};

/// Rough tokens per word of English text, as a ratio (4 tokens for every 3 words).
const TOKENS_PER_WORD: (usize, usize) = (4, 3);
/// How many of the prompt's words the fallback answer names.
const TOPIC_WORDS: usize = 8;

/// Words too common to say what a prompt is about.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
    "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will", "with",
    "you", "your", "we", "our", "i", "my", "me", "not", "no", "do", "so", "if", "but", "they",
];

/// The estimated number of tokens in `text`.
fn estimate_tokens(text: &str) -> u64 {
    let words = word_count(text);
    let (num, den) = TOKENS_PER_WORD;
    u64::try_from((words * num).div_ceil(den)).unwrap_or(u64::MAX)
}

/// A 64-bit FNV-1a hash: a stable fingerprint of the prompt for the response id, the same on
/// every machine and every run (unlike the standard library's randomly seeded hasher).
fn fingerprint(messages: &[ChatMessage]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for message in messages {
        let role: &[u8] = match message.role {
            Role::System => b"s",
            Role::User => b"u",
            Role::Assistant => b"a",
        };
        for byte in role.iter().chain(message.content.as_bytes()).chain(b"\0") {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// The answer when the prompt has no draft: names what the prompt is about.
fn topic_note(prompt: &str) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for token in tokens(prompt) {
        if token.lower.chars().any(char::is_alphabetic)
            && !STOP_WORDS.contains(&token.lower.as_ref())
        {
            *counts.entry(token.lower.into_owned()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    // Most frequent first; ties in alphabetical order, so the answer never varies.
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let topics: Vec<String> = ranked
        .into_iter()
        .take(TOPIC_WORDS)
        .map(|(w, _)| w)
        .collect();
    if topics.is_empty() {
        "Offline reply: no language model is configured, and the request was empty.".to_owned()
    } else {
        format!(
            "Offline reply: no language model is configured. The request was about {}.",
            topics.join(", ")
        )
    }
}

/// Answers `messages` without a model.
pub(super) fn reply(messages: &[ChatMessage]) -> ChatResponse {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let content = match find_draft(last_user) {
        Some(draft) if !draft.is_empty() => draft.to_owned(),
        _ => topic_note(last_user),
    };
    let input_tokens = messages.iter().map(|m| estimate_tokens(&m.content)).sum();
    ChatResponse {
        id: format!("offline-{:016x}", fingerprint(messages)),
        model: OFFLINE_MODEL.to_owned(),
        output_tokens: Some(estimate_tokens(&content)),
        input_tokens: Some(input_tokens),
        content,
        finish_reason: Some("stop".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::draft_block;

    #[test]
    fn a_prompt_with_a_draft_is_answered_with_the_draft() {
        let messages = [
            ChatMessage::system("Rewrite the draft."),
            ChatMessage::user(format!("Facts: none.\n{}", draft_block("Dear Acme team,"))),
        ];
        assert_eq!(reply(&messages).content, "Dear Acme team,");
    }

    #[test]
    fn the_same_prompt_gets_the_same_answer_and_id() {
        let messages = [ChatMessage::user(
            "Summarise Rust and Kafka experience, Rust first",
        )];
        let a = reply(&messages);
        let b = reply(&messages);
        assert_eq!(a, b);
        assert!(a.id.starts_with("offline-"));
        assert!(a.content.starts_with("Offline reply"), "{}", a.content);
        assert!(
            a.content.contains("rust, experience, first"),
            "{}",
            a.content
        );
        let other = reply(&[ChatMessage::user("Something else")]);
        assert_ne!(a.id, other.id);
    }

    #[test]
    fn token_counts_are_estimated_from_words() {
        let messages = [
            ChatMessage::system("one two three"),
            ChatMessage::user("four five six"),
        ];
        let answer = reply(&messages);
        assert_eq!(answer.input_tokens, Some(8));
        assert_eq!(answer.model, "offline");
        assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
        assert_eq!(answer.output_tokens, Some(estimate_tokens(&answer.content)));
    }
}
