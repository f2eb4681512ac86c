//! `[h3]`: the HTTP/3 entrypoint's limits and how it is advertised (a restart to change, like the
//! listeners; `alt_svc_max_age` is read per response and follows reloads).

use std::time::Duration;

use super::duration::parse_duration;
use super::file::H3File;
use super::{duration_or, one_of, positive, Diagnostic};

/// `Alt-Svc` max-age unless `[h3] alt_svc_max_age` says otherwise (a day, as Caddy and Cloudflare).
pub const DEFAULT_ALT_SVC_MAX_AGE: Duration = Duration::from_secs(86_400);
/// A QUIC connection with no packet either way for this long is closed (nginx: 3 min; we keep less
/// state per idle connection than nothing, so the same as HTTP/2's idle timeout by default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// The QUIC handshake's deadline, as `[limits] header_timeout` bounds a TCP client's head.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request streams open at once per connection (HTTP/2's `h2_streams_per_connection` default).
pub const DEFAULT_MAX_STREAMS: u64 = 100;
/// QUIC connections open at once from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 64;
/// Handshakes in progress above which new clients get a Retry (address validation) first.
pub const DEFAULT_RETRY_ABOVE: u64 = 64;
/// With 0-RTT on: how long a session ticket stays usable (once) after it was issued. A client that
/// comes back later resumes with a full handshake. An hour covers a mobile app's foreground sessions
/// while bounding how long a stolen first flight stays worth replaying (it cannot be replayed once
/// its ticket was used, see `crate::h3::early`).
pub const DEFAULT_ZERO_RTT_WINDOW: Duration = Duration::from_secs(3600);

/// The congestion controller of the gateway's QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    Cubic,
    Bbr,
}

/// `[h3] congestion`, the default first.
const CONGESTION_CHOICES: [(&str, Congestion); 2] =
    [("bbr", Congestion::Bbr), ("cubic", Congestion::Cubic)];
const DEFAULT_CONGESTION: Congestion = CONGESTION_CHOICES[0].1;

#[derive(Debug, Clone, PartialEq)]
pub struct H3Settings {
    /// `None`: `Alt-Svc` is not sent.
    pub alt_svc_max_age: Option<Duration>,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_streams: u64,
    pub max_connections_per_ip: u64,
    /// 0: every client that has not proven its address gets a Retry.
    pub retry_above: u64,
    pub congestion: Congestion,
    /// 0-RTT on (off by default): see `crate::h3::early`.
    pub zero_rtt: bool,
    /// How long a session ticket can resume, once, after it was issued (with `zero_rtt`).
    pub zero_rtt_window: Duration,
}

impl Default for H3Settings {
    fn default() -> Self {
        H3Settings {
            alt_svc_max_age: Some(DEFAULT_ALT_SVC_MAX_AGE),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams: DEFAULT_MAX_STREAMS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            retry_above: DEFAULT_RETRY_ABOVE,
            congestion: DEFAULT_CONGESTION,
            zero_rtt: false,
            zero_rtt_window: DEFAULT_ZERO_RTT_WINDOW,
        }
    }
}

/// Validates `[h3]` (absent: the defaults).
pub(super) fn validate_h3(raw: Option<&H3File>, diags: &mut Vec<Diagnostic>) -> H3Settings {
    let Some(raw) = raw else {
        return H3Settings::default();
    };
    let alt_svc_max_age = match &raw.alt_svc_max_age {
        None => Some(DEFAULT_ALT_SVC_MAX_AGE),
        Some(text) => match parse_duration(text.get_ref()) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                diags.push(Diagnostic::at(text, e));
                Some(DEFAULT_ALT_SVC_MAX_AGE)
            }
        },
    };
    let retry_above = match &raw.retry_above {
        None => DEFAULT_RETRY_ABOVE,
        Some(v) if *v.get_ref() >= 0 => *v.get_ref() as u64,
        Some(v) => {
            diags.push(Diagnostic::at(
                v,
                "h3.retry_above must be 0 (always) or a positive number of handshakes",
            ));
            DEFAULT_RETRY_ABOVE
        }
    };
    H3Settings {
        alt_svc_max_age,
        idle_timeout: duration_or(&raw.idle_timeout, DEFAULT_IDLE_TIMEOUT, diags),
        handshake_timeout: duration_or(&raw.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT, diags),
        max_streams: positive(
            &raw.max_streams,
            DEFAULT_MAX_STREAMS,
            "h3.max_streams",
            diags,
        ),
        max_connections_per_ip: positive(
            &raw.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP,
            "h3.max_connections_per_ip",
            diags,
        ),
        retry_above,
        congestion: one_of(
            &raw.congestion,
            "h3.congestion",
            &CONGESTION_CHOICES,
            "",
            diags,
        ),
        zero_rtt: raw.zero_rtt.unwrap_or(false),
        zero_rtt_window: duration_or(&raw.zero_rtt_window, DEFAULT_ZERO_RTT_WINDOW, diags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> (H3Settings, Vec<Diagnostic>) {
        let raw: H3File = toml::from_str(toml_text).expect("toml");
        let mut diags = Vec::new();
        (validate_h3(Some(&raw), &mut diags), diags)
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(validate_h3(None, &mut Vec::new()), H3Settings::default());
        let (s, d) = parse("alt_svc_max_age = \"1h\"\nmax_streams = 8\nretry_above = 0\n");
        assert!(d.is_empty());
        assert_eq!(s.alt_svc_max_age, Some(Duration::from_secs(3600)));
        assert_eq!(s.max_streams, 8);
        assert_eq!(s.retry_above, 0);
        assert_eq!(H3Settings::default().congestion, Congestion::Bbr);
        let (s, d) = parse("congestion = \"cubic\"\n");
        assert!(d.is_empty());
        assert_eq!(s.congestion, Congestion::Cubic);
        let (s, d) = parse("alt_svc_max_age = \"0s\"\n");
        assert!(d.is_empty());
        assert_eq!(s.alt_svc_max_age, None, "0s turns the advertisement off");
        assert!(
            !H3Settings::default().zero_rtt,
            "0-RTT is off unless asked for"
        );
        let (s, d) = parse("zero_rtt = true\nzero_rtt_window = \"10m\"\n");
        assert!(d.is_empty());
        assert!(s.zero_rtt);
        assert_eq!(s.zero_rtt_window, Duration::from_secs(600));
    }

    #[test]
    fn bad_values_are_errors() {
        let (_, d) = parse(
            "max_streams = 0\nretry_above = -1\nidle_timeout = \"soon\"\ncongestion = \"reno\"\nzero_rtt_window = \"0s\"\n",
        );
        assert_eq!(d.len(), 5, "{d:?}");
    }
}
