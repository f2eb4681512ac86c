//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/`) through the same targets the fuzzer runs
//! (`gateway::fuzz`), in a debug build (overflow checks on): every input once, in seconds.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.expect("dir entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
}

#[test]
fn config() {
    replay("config", gateway::fuzz::config);
}

#[test]
fn router() {
    replay("router", gateway::fuzz::router);
}

#[test]
fn http_head() {
    replay("http_head", gateway::fuzz::http_head);
}

#[test]
fn jwt() {
    replay("jwt", gateway::fuzz::jwt);
}

#[test]
fn api_key() {
    replay("api_key", gateway::fuzz::api_key);
}

#[test]
fn cors_origin() {
    replay("cors_origin", gateway::fuzz::cors_origin);
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol", gateway::fuzz::proxy_protocol);
}
