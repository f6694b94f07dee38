//! Shares as people write them: `5%` or `0.05` (the memory margin, the MFU).

/// A share that could not be read; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: expected a fraction in [0, 1], e.g. 0.05 or 5%")]
pub struct FractionError {
    pub text: String,
}

/// Parses `5%` or `0.05` into a number in [0, 1].
pub fn parse_fraction(text: &str) -> Result<f64, FractionError> {
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    };
    value.ok().filter(|x| (0.0..=1.0).contains(x)).ok_or_else(|| FractionError { text: text.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_or_plain() {
        assert_eq!(parse_fraction("5%"), Ok(0.05));
        assert_eq!(parse_fraction("0.4"), Ok(0.4));
        assert!(parse_fraction("150%").is_err() && parse_fraction("-0.1").is_err() && parse_fraction("half").is_err());
    }
}
