//! Replays the committed fuzz corpus of storage keys (`fuzz/corpus/storage_key/`) through the target the
//! fuzzer runs (`backend::fuzz::storage_key`), in a debug build.

#[test]
fn storage_key() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/storage_key");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.expect("dir entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| backend::fuzz::storage_key(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}
