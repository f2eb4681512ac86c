//! Durations as ops write them: `250ms`, `2s`, `1m30s`, `1h`.

use std::time::Duration;

/// Parses `"1m30s"`-style durations. Units: `ms`, `s`, `m`, `h`; at least one segment; no sign.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. \"2s\" or \"500ms\"".into());
    }
    if s.contains(char::is_whitespace) {
        return Err(format!("invalid duration `{text}`: no spaces allowed; write e.g. \"2s\", \"500ms\" or \"1m30s\""));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "invalid duration `{text}`: expected a number at `{}`",
                &s[start..]
            ));
        }
        let n: u64 = s[start..i]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let part = match &s[ustart..i] {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "invalid duration `{text}`: missing unit (us, ms, s, m or h) after {n}"
                ))
            }
            u => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{u}` (us, ms, s, m or h)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1ms500us"), Ok(Duration::from_micros(1500)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "2", "s", "2x", "-1s", "1.5s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }
}
