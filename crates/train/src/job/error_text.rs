//! An error as the user reads it: its causes joined by ": ", each said once, and capped in length.

/// The longest message printed; past it, what is left is counted.
const MAX_CHARS: usize = 2000;

/// `e` and its causes joined by ": " (as anyhow's `{:#}`), less each cause that the message so
/// far already ends with: an error whose text includes its source (`cannot read X: {source}`)
/// would otherwise say "(os error 2)" twice. Cut at [`MAX_CHARS`].
pub fn user_message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    capped(message)
}

fn capped(message: String) -> String {
    match message.char_indices().nth(MAX_CHARS) {
        None => message,
        Some((cut, _)) => {
            let left = message[cut..].chars().count();
            format!("{} ... ({left} more characters)", &message[..cut])
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadError {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(ReadError { path: "/x", source: io }).context("loading the data");
        let message = user_message(&e);
        assert_eq!(message.matches("(os error 2)").count(), 1, "{message}");
        assert!(message.starts_with("loading the data: cannot read /x: "), "{message}");
        let plain: anyhow::Result<()> = Err(std::io::Error::from_raw_os_error(28)).context("cannot append to m.jsonl");
        assert_eq!(user_message(&plain.unwrap_err()), format!("cannot append to m.jsonl: {}", std::io::Error::from_raw_os_error(28)));
    }

    #[test]
    fn a_long_message_is_cut_and_counted() {
        let message = user_message(&anyhow::anyhow!("{}", "x".repeat(MAX_CHARS + 500)));
        assert!(message.ends_with(" ... (500 more characters)") && message.len() < MAX_CHARS + 40, "{}", message.len());
    }
}
