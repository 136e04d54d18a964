//! Event topics (decision 12): dot-separated segments of `[A-Za-z0-9_-]`, at most 200 characters; in a pattern a
//! segment may be `*`, which matches exactly one segment.

use std::fmt;

use super::ScheduleError;

/// The longest topic or topic pattern accepted.
pub const MAX_TOPIC_LEN: usize = 200;

/// A topic pattern an event task subscribes to, e.g. `email.*` or `billing.invoice.paid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    text: String,
}

fn check(topic: &str, allow_wildcards: bool) -> Result<(), ScheduleError> {
    let what = if allow_wildcards {
        "topic pattern"
    } else {
        "topic"
    };
    if topic.is_empty() {
        return Err(ScheduleError::new(format!("{what} is empty")));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(ScheduleError::new(format!(
            "{what} is {} characters long; at most {MAX_TOPIC_LEN} are allowed",
            topic.len()
        )));
    }
    for (i, segment) in topic.split('.').enumerate() {
        let n = i + 1;
        if segment.is_empty() {
            return Err(ScheduleError::new(format!(
                "{what} {topic:?} has an empty segment {n} (segments are separated by single dots)"
            )));
        }
        if segment == "*" {
            if allow_wildcards {
                continue;
            }
            return Err(ScheduleError::new(format!(
                "topic {topic:?} contains the wildcard * in segment {n}; a published topic must be concrete"
            )));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ScheduleError::new(format!(
                "{what} {topic:?} has the character {bad:?} in segment {n}; segments use A-Z a-z 0-9 _ -{}",
                if allow_wildcards { " or are exactly *" } else { "" }
            )));
        }
    }
    Ok(())
}

/// Validates a concrete (published) topic: no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), ScheduleError> {
    check(topic, false)
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<TopicPattern, ScheduleError> {
        check(text, true)?;
        Ok(TopicPattern {
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no `*` segment.
    pub fn is_exact(&self) -> bool {
        !self.text.split('.').any(|s| s == "*")
    }

    /// Whether a concrete topic matches: same number of segments, each equal or matched by `*`.
    pub fn matches(&self, topic: &str) -> bool {
        let mut pattern = self.text.split('.');
        let mut concrete = topic.split('.');
        loop {
            match (pattern.next(), concrete.next()) {
                (None, None) => return true,
                (Some(p), Some(c)) if p == "*" || p == c => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
