//! What each content coding and level costs the edge and saves the client on API responses: Pingora's
//! encoders (the ones the gateway runs), a response streamed through in 16 KiB chunks, CPU time per
//! response on this thread against the bytes sent. `gzip 1` is zlib's level 1, nginx's default
//! `gzip_comp_level`. `cargo bench -p gateway --bench compression` (figures in the README, "Compression").

use std::time::Duration;

use pingora::protocols::http::compression::Algorithm;

/// This thread's CPU time.
fn cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// A JSON list of about `n` bytes shaped like the API's answers (ids, names, sizes, dates).
fn document(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"files\":[");
    let mut i = 0u64;
    while s.len() < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":\"{:08x}-{:04x}-4000-8000-{:012x}\",\"name\":\"reports/2026/{:03}/invoice-{}.pdf\",\"size\":{},\"content_type\":\"application/pdf\",\"uploaded_at\":\"2026-11-{:02}T{:02}:{:02}:00Z\"}}",
            i.wrapping_mul(2_654_435_761) as u32,
            i % 65_536,
            i.wrapping_mul(40_503),
            i % 997,
            i,
            10_000 + i * 37 % 90_000,
            1 + i % 28,
            i % 24,
            i % 60
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn main() {
    let runs: &[(Algorithm, &[u32])] = &[
        (Algorithm::Gzip, &[1, 4, 6, 9]),
        (Algorithm::Brotli, &[1, 4, 6, 11]),
        (Algorithm::Zstd, &[1, 3, 6, 19]),
    ];
    println!("| response | coding | level | bytes sent | of original | CPU µs per response |");
    println!("|---|---|---|---|---|---|");
    for size in [2_000usize, 20_000, 200_000] {
        let doc = document(size);
        for (algorithm, levels) in runs {
            for &level in *levels {
                let repeat = (4_000_000 / doc.len()).clamp(20, 2_000);
                let mut out = 0usize;
                let start = cpu();
                for _ in 0..repeat {
                    let Some(mut enc) = algorithm.compressor(level) else {
                        return;
                    };
                    out = 0;
                    let chunks: Vec<&[u8]> = doc.chunks(16 * 1024).collect();
                    for (i, c) in chunks.iter().enumerate() {
                        out += enc.encode(c, i + 1 == chunks.len()).map_or(0, |b| b.len());
                    }
                }
                let per = (cpu() - start).as_secs_f64() * 1e6 / repeat as f64;
                println!(
                    "| {} KB | {} | {level} | {out} | {:.1} % | {per:.1} |",
                    doc.len() / 1000,
                    algorithm.as_str(),
                    100.0 * out as f64 / doc.len() as f64
                );
            }
        }
    }
}
