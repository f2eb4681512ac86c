//! `loadtest page`: the time to load one page's resources over a new connection — the handshake, then
//! every resource requested at once on that one connection (HTTP/2 streams over TLS/TCP, or HTTP/3
//! streams over QUIC), until the last body byte. Repeated, with the median reported: what a browser on
//! a lossy mobile network waits for, which `h3_netem.sh` measures over `tc netem`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;

use crate::generator::Protocol;

#[derive(Debug, clap::Args)]
pub struct PageArgs {
    /// https://ADDRESS:PORT (connected to whatever the host; UDP for h3).
    pub url: String,
    /// The Host, `:authority` and TLS server name.
    #[arg(long)]
    pub host: String,
    /// The CA to trust (PEM).
    #[arg(long)]
    pub ca: String,
    /// h2 or h3.
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Resources of the page, all requested at once.
    #[arg(long, default_value_t = 20)]
    pub resources: usize,
    /// Page loads, each on a new connection.
    #[arg(long, default_value_t = 20)]
    pub loads: usize,
    /// The path of every resource.
    #[arg(long, default_value = "/json")]
    pub path: String,
    /// A load not finished after this many seconds fails the run.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

#[derive(Debug, Serialize)]
pub struct PageReport {
    pub protocol: &'static str,
    pub resources: usize,
    pub bytes_per_load: usize,
    /// Each load's time, in order.
    pub load_ms: Vec<f64>,
    pub median_ms: f64,
    pub p90_ms: f64,
}

pub fn main(args: PageArgs) -> anyhow::Result<()> {
    let url: http::Uri = args.url.parse().context("the URL")?;
    let authority = url.authority().context("the URL has no address")?;
    let port = authority.port_u16().unwrap_or(443);
    let addr: SocketAddr = format!("{}:{port}", authority.host())
        .parse()
        .context("the URL's address must be IP:port")?;
    let tls = crate::tls::trusting(&args.ca)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::with_capacity(args.loads);
    let mut bytes_per_load = 0;
    for _ in 0..args.loads {
        let start = Instant::now();
        let load = load(&args, addr, &tls);
        let bytes = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(args.timeout_s), load).await
            })
            .context("a page load timed out")??;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        bytes_per_load = bytes;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let report = PageReport {
        protocol: match args.protocol {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        },
        resources: args.resources,
        bytes_per_load,
        median_ms: at(0.5),
        p90_ms: at(0.9),
        load_ms: times,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One page load on a new connection; the body bytes received.
async fn load(
    args: &PageArgs,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<usize> {
    let uri: http::Uri = format!("https://{}{}", args.host, args.path).parse()?;
    match args.protocol {
        Protocol::H1 => bail!("page loads compare h2 and h3"),
        Protocol::H2 => {
            let mut config = (**tls).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(args.host.clone())?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut all = Vec::with_capacity(args.resources);
            for _ in 0..args.resources {
                let mut send = send.clone();
                let uri = uri.clone();
                all.push(tokio::spawn(async move {
                    send.ready().await?;
                    let req = http::Request::get(uri).body(Empty::<Bytes>::new())?;
                    let resp = send.send_request(req).await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    Ok::<usize, anyhow::Error>(resp.into_body().collect().await?.to_bytes().len())
                }));
            }
            let mut bytes = 0;
            for r in all {
                bytes += r.await??;
            }
            Ok(bytes)
        }
        Protocol::H3 => {
            let config = crate::generator::h3_client_config(tls).map_err(anyhow::Error::msg)?;
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let mut endpoint = quinn::Endpoint::client(local)?;
            endpoint.set_default_client_config(config);
            let quic = endpoint.connect(addr, &args.host)?.await?;
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic)).await?;
            let driver = tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            let mut all = Vec::with_capacity(args.resources);
            for _ in 0..args.resources {
                let mut send = send.clone();
                let uri = uri.clone();
                all.push(tokio::spawn(async move {
                    let mut stream = send.send_request(http::Request::get(uri).body(())?).await?;
                    stream.finish().await?;
                    let resp = stream.recv_response().await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    let mut n = 0;
                    while let Some(mut chunk) = stream.recv_data().await? {
                        n += chunk.remaining();
                        chunk.advance(chunk.remaining());
                    }
                    Ok::<usize, anyhow::Error>(n)
                }));
            }
            let mut bytes = 0;
            for r in all {
                bytes += r.await??;
            }
            drop(send);
            driver.abort();
            endpoint.close(0u32.into(), b"done");
            Ok(bytes)
        }
    }
}
