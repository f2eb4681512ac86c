//! A comparison's report: `<scenario>.json` (every round), a Markdown table of medians, and an SVG chart
//! of throughput and p99 per target.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::cli::CompareArgs;
use crate::generator::Outcome;
use crate::scenario::Scenario;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The upstream without a proxy.
    Ceiling,
    /// Our gateway.
    Ours,
    /// Bare Pingora: the floor under the gateway.
    Floor,
    /// Another configuration of our gateway (`--variants`).
    Variant,
    Peer,
}

/// How a target's work compares with the gateway's in this scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Work {
    Same,
    /// The closest configuration its users would write (the note says what it leaves out).
    Closest,
    /// Not measured: it cannot do this work.
    Cannot,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub responses: u64,
    pub non_2xx: u64,
    pub failed: u64,
    /// The proxy's user + system CPU time over the responses (None for the ceiling).
    pub cpu_us_per_request: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

impl Sample {
    pub fn from_outcome(o: &Outcome, cpu_seconds: Option<f64>, rss_mib: Option<f64>) -> Sample {
        let s = o.stats.summary(o.elapsed.as_secs_f64());
        let n = s.responses.max(1) as f64;
        Sample {
            rps: s.rps,
            p50_ms: s.latency_ms.p50,
            p99_ms: s.latency_ms.p99,
            p999_ms: s.latency_ms.p999,
            max_ms: s.latency_ms.max,
            responses: s.responses,
            non_2xx: s.responses - s.status.s2xx,
            failed: s.failures.total(),
            cpu_us_per_request: cpu_seconds.map(|c| c * 1e6 / n),
            peak_rss_mib: rss_mib,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub kind: Kind,
    pub version: String,
    pub work: Work,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Medians over the rounds (None when not measured).
    pub median: Option<Sample>,
    pub rounds: Vec<Sample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_per_request: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_error: Option<String>,
    /// What one response weighs on the wire (the `compressed` scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseSize>,
}

/// One response's body as sent (after any content coding, without chunk framing).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResponseSize {
    pub bytes: u64,
    /// `Content-Encoding` (`identity` when none).
    pub encoding: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl TargetReport {
    pub fn new(
        name: String,
        kind: Kind,
        version: String,
        work: Work,
        note: Option<String>,
        rounds: Vec<Sample>,
        instructions: Option<Result<u64, String>>,
    ) -> TargetReport {
        let med = (!rounds.is_empty()).then(|| {
            let m = |f: fn(&Sample) -> f64| median(rounds.iter().map(f).collect());
            let opt = |f: fn(&Sample) -> Option<f64>| {
                let v: Vec<f64> = rounds.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| median(v))
            };
            Sample {
                rps: m(|s| s.rps),
                p50_ms: m(|s| s.p50_ms),
                p99_ms: m(|s| s.p99_ms),
                p999_ms: m(|s| s.p999_ms),
                max_ms: rounds.iter().map(|s| s.max_ms).fold(0.0, f64::max),
                responses: rounds.iter().map(|s| s.responses).sum(),
                non_2xx: rounds.iter().map(|s| s.non_2xx).sum(),
                failed: rounds.iter().map(|s| s.failed).sum(),
                cpu_us_per_request: opt(|s| s.cpu_us_per_request),
                peak_rss_mib: rounds
                    .iter()
                    .filter_map(|s| s.peak_rss_mib)
                    .reduce(f64::max),
            }
        });
        let (instructions_per_request, instructions_error) = match instructions {
            Some(Ok(n)) => (Some(n), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        TargetReport {
            name,
            kind,
            version,
            work,
            note,
            median: med,
            rounds,
            instructions_per_request,
            instructions_error,
            response: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    /// The command that made it.
    pub command: String,
    pub unix_time: u64,
    pub machine: Machine,
    pub method: Method,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Method {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rounds: usize,
    pub connections: usize,
    pub proxy_threads: usize,
    /// Each proxy on CPU 0, the generator and the upstream on CPU 1.
    pub pinned: bool,
    pub protocol: &'static str,
    pub body_bytes: usize,
}

impl Report {
    pub fn new(
        scenario: Scenario,
        command: String,
        args: &CompareArgs,
        connections: usize,
        pinned: bool,
        targets: Vec<TargetReport>,
    ) -> Report {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Report {
            scenario,
            command,
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                kernel,
            },
            method: Method {
                duration_s: args.duration.as_secs_f64(),
                warmup_s: args.warmup.as_secs_f64(),
                rounds: args.rounds,
                connections,
                proxy_threads: args.threads,
                pinned,
                protocol: match (scenario.h3(), scenario.tls(), scenario.keep_alive()) {
                    (true, _, true) => "HTTP/3 over kept-alive QUIC connections",
                    (true, _, false) => "HTTP/3, a new QUIC connection per request",
                    (false, true, true) => "HTTPS (HTTP/1.1) over kept-alive TLS connections",
                    (false, true, false) => "HTTPS, a new connection per request",
                    (false, false, _) => "HTTP/1.1 keep-alive",
                },
                body_bytes: crate::upstream::BODY_LEN,
            },
            targets,
        }
    }

    pub fn target(&self, name: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// The Markdown table of medians, with ratios to the gateway.
pub fn markdown(r: &Report) -> String {
    let gw = r.target("gateway").and_then(|t| t.median.as_ref());
    let gw_cpu = gw.and_then(|g| g.cpu_us_per_request);
    let gw_ir = r.target("gateway").and_then(|t| t.instructions_per_request);
    let mut out = format!(
        "`{}` — {} rounds of {} s, {} connections, {}, {} proxy thread(s){}; medians.\n\n",
        r.command,
        r.method.rounds,
        r.method.duration_s,
        r.method.connections,
        r.method.protocol,
        r.method.proxy_threads,
        if r.method.pinned {
            ", proxy on CPU 0, generator and upstream on CPU 1"
        } else {
            ""
        }
    );
    out.push_str("| target | work | req/s | p50 | p99 | p99.9 | CPU-µs / request | × gateway | instructions / request | × gateway | peak RSS | non-2xx / failed |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    for t in &r.targets {
        let work = match t.work {
            Work::Same => "same".to_string(),
            Work::Closest => {
                notes.push(format!(
                    "- **{}** (closest): {}",
                    t.name,
                    t.note.clone().unwrap_or_default()
                ));
                "closest¹".to_string()
            }
            Work::Cannot => {
                notes.push(format!(
                    "- **{}** (not measured): {}",
                    t.name,
                    t.note.clone().unwrap_or_default()
                ));
                "cannot¹".to_string()
            }
        };
        let name = format!(
            "{} ({})",
            t.name,
            t.version.chars().take(40).collect::<String>()
        );
        let Some(m) = &t.median else {
            out.push_str(&format!(
                "| {name} | {work} | – | – | – | – | – | – | – | – | – | – |\n"
            ));
            continue;
        };
        let cpu = m
            .cpu_us_per_request
            .map_or("–".into(), |c| format!("{c:.1}"));
        let cpu_x = match (m.cpu_us_per_request, gw_cpu) {
            (Some(c), Some(g)) if g > 0.0 => format!("{:.2}×", c / g),
            _ => "–".into(),
        };
        let ir = t.instructions_per_request.map_or_else(
            || {
                if t.instructions_error.is_some() {
                    "n/a²".to_string()
                } else {
                    "–".to_string()
                }
            },
            thousands,
        );
        if let Some(e) = &t.instructions_error {
            notes.push(format!("- **{}** instructions: {e}", t.name));
        }
        let ir_x = match (t.instructions_per_request, gw_ir) {
            (Some(i), Some(g)) if g > 0 => format!("{:.2}×", i as f64 / g as f64),
            _ => "–".into(),
        };
        let rss = m.peak_rss_mib.map_or("–".into(), |r| format!("{r:.1} MiB"));
        if m.non_2xx + m.failed > 0 {
            notes.push(format!(
                "- **{}** answered {} non-2xx and failed {} of {} requests: not the same work as a clean row",
                t.name,
                m.non_2xx,
                m.failed,
                m.responses + m.failed
            ));
        }
        out.push_str(&format!(
            "| {name} | {work} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {cpu} | {cpu_x} | {ir} | {ir_x} | {rss} | {} / {} |\n",
            thousands(m.rps.round() as u64),
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.non_2xx,
            m.failed
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    let sizes: Vec<String> = r
        .targets
        .iter()
        .filter_map(|t| {
            let s = t.response.as_ref()?;
            Some(format!(
                "{} {} ({})",
                t.name,
                thousands(s.bytes),
                s.encoding
            ))
        })
        .collect();
    if !sizes.is_empty() {
        out.push_str(&format!("\nBytes per response: {}.\n", sizes.join(", ")));
    }
    out
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `<out>/<scenario>.json`, `.md` and `.svg`; returns the paths written.
pub fn write(r: &Report, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out).map_err(|e| ReportError::Write(out.into(), e))?;
    let base = out.join(r.scenario.name());
    let mut written = Vec::new();
    let json = base.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(r)?)
        .map_err(|e| ReportError::Write(json.clone(), e))?;
    written.push(json);
    let md = base.with_extension("md");
    std::fs::write(&md, markdown(r)).map_err(|e| ReportError::Write(md.clone(), e))?;
    written.push(md);
    let svg = base.with_extension("svg");
    match chart(r, &svg) {
        Ok(()) => written.push(svg),
        Err(e) => eprintln!("no chart: {e}"),
    }
    Ok(written)
}

/// The fonts the chart's text is measured with (Debian `fonts-dejavu-core`); the SVG names the family.
const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = FONT_FILES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| format!("no font at {} (Debian fonts-dejavu-core)", FONT_FILES[0]))?;
        // The registry keeps the bytes for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    })
    .clone()
}

/// Two bar charts side by side: req/s and p99 per measured target.
pub fn chart(r: &Report, path: &Path) -> Result<(), String> {
    // A closest configuration's bar is marked with `*` (the table says what it leaves out).
    let rows: Vec<(String, &Sample)> = r
        .targets
        .iter()
        .filter_map(|t| {
            let name = if t.work == Work::Closest {
                format!("{} *", t.name)
            } else {
                t.name.clone()
            };
            t.median.as_ref().map(|m| (name, m))
        })
        .collect();
    if rows.is_empty() {
        return Err("nothing measured".into());
    }
    let closest = r
        .targets
        .iter()
        .any(|t| t.work == Work::Closest && t.median.is_some());
    let title = format!(
        "loadtest compare --scenario {}{}",
        r.scenario.name(),
        if closest {
            "   (* closest configuration, less work)"
        } else {
            ""
        }
    );
    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    bars(
        path,
        &title,
        &names,
        [
            (
                "requests / s (higher is better)",
                rows.iter().map(|(_, m)| m.rps).collect(),
                RGBColor(52, 101, 164),
            ),
            (
                "p99 latency, ms (lower is better)",
                rows.iter().map(|(_, m)| m.p99_ms).collect(),
                RGBColor(204, 0, 0),
            ),
        ],
    )
}

/// Two bar charts side by side under `title`: one bar per name in each, (caption, values, colour).
pub fn bars(
    path: &Path,
    title: &str,
    names: &[String],
    panels: [(&str, Vec<f64>, RGBColor); 2],
) -> Result<(), String> {
    register_font()?;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    let panel = |area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
                 caption: &str,
                 values: Vec<f64>,
                 color: RGBColor|
     -> Result<(), String> {
        let max = values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..max)
            .map_err(|e| e.to_string())?;
        let labels = names;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len())
            .y_label_formatter(&|y| {
                if max >= 100.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(values.iter().enumerate().map(|(i, v)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(|e| e.to_string())?;
        let label_style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        c.draw_series(values.iter().enumerate().map(|(i, v)| {
            Text::new(
                if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                },
                (SegmentValue::CenterOf(i), *v),
                label_style.clone(),
            )
        }))
        .map_err(|e| e.to_string())?;
        Ok(())
    };
    for (area, (caption, values, color)) in [left, right].iter().zip(panels) {
        panel(area, caption, values, color)?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
