//! Byte sizes as people write them: `80GB` (10^9), `80GiB` (2^30), `512MiB`, `1.5TB`, `4096`.

/// A size that could not be read; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a size: expected a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 80GB or 80GiB")]
pub struct SizeError {
    pub text: String,
}

/// Parses `text` into bytes. SI units are powers of 10 (80GB = 80e9 bytes), IEC units powers of 2.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let error = || SizeError { text: text.to_owned() };
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| error())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0f64.powi(2),
        "gib" => 1024.0f64.powi(3),
        "tib" => 1024.0f64.powi(4),
        _ => return Err(error()),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(error());
    }
    Ok(bytes.round() as u64)
}

/// Bytes in binary units with three significant figures or so: `74.5 GiB`, `812 MiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    let (value, unit) = match bytes {
        0..1024 => return format!("{bytes} B"),
        1024..1_048_576 => (b / 1024.0, "KiB"),
        1_048_576..1_073_741_824 => (b / 1_048_576.0, "MiB"),
        _ => (b / 1_073_741_824.0, "GiB"),
    };
    if value >= 100.0 { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_and_iec_units() {
        assert_eq!(parse_size("80GB"), Ok(80_000_000_000));
        assert_eq!(parse_size("80GiB"), Ok(80 << 30));
        assert_eq!(parse_size(" 1.5 TB "), Ok(1_500_000_000_000));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "GB", "80 GX", "-1GB", "0", "1.2.3GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("80GX").unwrap_err().to_string().contains("\"80GX\" is not a size"));
    }

    #[test]
    fn human_readable() {
        assert_eq!(human(80 << 30), "80.0 GiB");
        assert_eq!(human(812 << 20), "812 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
