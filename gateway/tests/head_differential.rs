//! HTTP/1 differential parsing: the committed `http_head` fuzz corpus read by our strict head check
//! (`gateway::fuzz::http_head_framing`, the check the edge runs on every HTTP/1 head) and by Python's
//! h11, a parser written independently of ours and of httparse (which the fuzz target itself compares
//! with). Every head we accept, h11 must read as one complete request with the same framing — the
//! same Content-Length, chunked or not — and HTTP/1.1 with exactly one Host: where two parsers in a
//! chain disagree on framing, a request can be smuggled. Heads only h11 accepts are counted (we are
//! stricter by design) and printed.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The head as it travels: our check also takes a head without its final empty line (as the edge
/// gets it back from Pingora's parsed request), h11 reads the wire form.
fn on_the_wire(data: &[u8]) -> Vec<u8> {
    let mut wire = data.to_vec();
    if data.ends_with(b"\r\n") && !data.ends_with(b"\r\n\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

fn escaped(data: &[u8]) -> String {
    data.escape_ascii().to_string()
}

#[test]
fn the_head_corpus_reads_the_same_with_an_independent_parser() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_head");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("dir entry").path()).expect("corpus file"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 500, "{} inputs", inputs.len());
    let hex: Vec<String> = inputs
        .iter()
        .map(|d| on_the_wire(d).iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/h1/differential.py");
    let python = std::env::var("H1_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run h11 (H1_PYTHON with h11; scripts/test.sh installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(&hex).expect("json").as_bytes())
            .expect("write inputs");
    }
    let out = child.wait_with_output().expect("h11's output");
    let theirs: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("h11: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(theirs.len(), inputs.len());

    let (mut both, mut neither, mut only_h11) = (0, 0, Vec::new());
    let mut disagreements = Vec::new();
    for (data, h11) in inputs.iter().zip(&theirs) {
        let ours = gateway::fuzz::http_head_framing(data);
        let h11_ok = h11["ok"] == true;
        match ours {
            None if h11_ok => only_h11.push(escaped(data)),
            None => neither += 1,
            Some(_) if !h11_ok => disagreements.push(format!(
                "we accept, h11 refuses ({}): {}",
                h11["why"],
                escaped(data)
            )),
            Some((content_length, chunked)) => {
                both += 1;
                let cl: Vec<u64> = h11["content_length"]
                    .as_array()
                    .expect("content_length")
                    .iter()
                    .filter_map(|v| v.as_str()?.trim().parse().ok())
                    .collect();
                let framing_agrees = match content_length {
                    Some(n) => !cl.is_empty() && cl.iter().all(|v| *v == n),
                    None => cl.is_empty(),
                } && h11["chunked"] == chunked;
                let hosts = h11["host"].as_array().map_or(0, Vec::len);
                if !framing_agrees || (h11["version"] == "1.1" && hosts != 1) {
                    disagreements.push(format!(
                        "framing: ours {content_length:?} chunked={chunked}, h11 {h11}: {}",
                        escaped(data)
                    ));
                }
            }
        }
    }
    eprintln!(
        "{} heads: both accept {both}, both refuse {neither}, only h11 accepts {}",
        inputs.len(),
        only_h11.len()
    );
    for d in &only_h11 {
        eprintln!("  only h11: {d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(both > 0, "no head of the corpus is accepted by both");
}
