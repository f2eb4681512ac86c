//! Fuzz targets of the backend (the cargo-fuzz binaries in `fuzz/` call these; `tests/fuzz_corpora.rs`
//! replays the committed corpus). A target panics when its property breaks.

use uuid::Uuid;

/// Storage keys: a path that passes the check becomes the key `{tenant}/{path}` exactly (nothing
/// normalised away, so no two paths share an object and none leaves its tenant's prefix).
pub fn storage_key(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let tenant = Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef);
    // Refused paths get 400 `invalid_path`; what passes must be exactly the tenant's key.
    if let Ok(k) = crate::storage::key(tenant, path) {
        assert_eq!(
            k.as_ref(),
            format!("{tenant}/{path}"),
            "{path:?} was normalised"
        );
        for seg in path.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{path:?}: segment {seg:?}"
            );
        }
        assert!(!path.contains('\\') && !path.chars().any(char::is_control));
        assert!(path.len() <= 1024);
    }
}
